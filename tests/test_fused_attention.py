"""Fused softmax attention (attnflow.nets.softmax_attention) in the coupling networks: the same
function, outputs and gradients, as the explicit softmax(Q K^T / sqrt(d)) V it replaces."""
from __future__ import annotations

import pytest
import torch

import attnflow.nets.softmax_attention as softmax_module
from attnflow.models import build
from attnflow.nets.lipschitz_attention import DotProductSelfAttention
from attnflow.nets.nystrom_attention import NystromAttention, iterative_pinv, segment_means_matrix
from attnflow.nets.softmax_attention import SelfAttention2d, softmax_attention

RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}  # atol: RTOL times the largest entry of the reference


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    rtol = RTOL[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.detach().abs().max()))


def _grads(module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    return list(torch.autograd.grad((out * weight).sum(), [x, *module.parameters()]))


def _assert_same(module_a, module_b, x) -> None:
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = module_a(xa), module_b(xb)
    _close(out_a, out_b)
    for ga, gb in zip(_grads(module_a, xa, out_a), _grads(module_b, xb, out_b)):
        _close(ga, gb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels,heads,size", [(8, 1, (5, 6)), (8, 3, (4, 4)), (16, 4, (7, 7)), (32, 1, (28, 28))])
@pytest.mark.parametrize("fused", [True, False])
def test_self_attention_equals_the_explicit_dot_product_attention(dtype, channels, heads, size, fused) -> None:
    """Same seed -> the same parameters as DotProductSelfAttention; same outputs and gradients."""
    torch.manual_seed(0)
    explicit = DotProductSelfAttention(channels, heads).to(dtype)
    torch.manual_seed(0)
    attention = SelfAttention2d(channels, heads, fused=fused).to(dtype)
    for name, value in explicit.state_dict().items():
        assert torch.equal(attention.state_dict()[name], value)
    batch = 2 if size[0] > 8 else 3
    x = torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2
    _assert_same(attention, explicit, x)


def test_softmax_attention_falls_back_to_explicit_when_the_kernel_raises(monkeypatch) -> None:
    q, k, v = (torch.randn(2, 3, 10, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))
    fused = softmax_attention(q, k, v, scale=0.3)

    def no_kernel(*args, **kwargs):
        raise RuntimeError("no kernel for this dtype")

    monkeypatch.setattr(softmax_module.F, "scaled_dot_product_attention", no_kernel)
    torch.testing.assert_close(softmax_attention(q, k, v, scale=0.3), fused)
    explicit = torch.softmax(0.3 * q @ k.transpose(-1, -2), -1) @ v
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)


def _nystrom_reference(attn: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    """The Nyströmformer formula with explicit N x m and m x N softmax matrices (module docstring)."""
    b, _, h, w = x.shape
    n, d = h * w, attn.head_dim
    q, k, v = attn.qkv(x).view(b, 3, attn.heads, d, n).transpose(-1, -2).unbind(1)
    q = q / d**0.5
    means = segment_means_matrix(n, attn.landmarks, q)
    q_land, k_land = means @ q, means @ k
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), -1)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), -1)
    kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2), -1)
    out = kernel_1 @ (attn._pinv(kernel_2) @ (kernel_3 @ v))
    return attn.out(out.transpose(-1, -2).reshape(b, attn.heads * d, h, w))


class _Reference(torch.nn.Module):
    def __init__(self, attn: NystromAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nystrom_reference(self.attn, x)


NYSTROM_CASES = [(8, 2, 4, (6, 6), "iterative"), (6, 4, 5, (5, 7), "iterative"), (32, 2, 8, (14, 14), "iterative")]


# the SVD pseudo-inverse in float32 amplifies rounding differences by its condition number: float64 only
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype,channels,heads,landmarks,size,pinv", [
    *[(dt, *case) for dt in (torch.float64, torch.float32) for case in NYSTROM_CASES],
    (torch.float64, 8, 1, 3, (4, 4), "exact")])
def test_nystrom_attention_equals_its_explicit_formula(dtype, fused, channels, heads, landmarks, size, pinv) -> None:
    torch.manual_seed(0)
    attn = NystromAttention(channels, heads, landmarks, pinv=pinv, fused=fused).to(dtype)
    x = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _assert_same(attn, _Reference(attn), x)


def test_iterative_pinv_keeps_any_batch_shape() -> None:
    a = torch.softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64) * 2, dim=-1)
    batched = iterative_pinv(a, 8)
    assert batched.shape == a.shape
    torch.testing.assert_close(iterative_pinv(a[1, 2], 8), batched[1, 2])


def test_coupling_networks_keep_their_parameter_names() -> None:
    """Checkpoints of Flow++ / mARFlow written with DotProductSelfAttention still load."""
    names = [n for n in build("flowpp-digits").state_dict() if n.endswith("_weight")]
    assert names and all(n.rsplit(".", 1)[-1] in ("query_weight", "key_weight", "value_weight", "out_weight")
                         for n in names)
    assert any(isinstance(m, SelfAttention2d) for m in build("marflow-digits").modules())
