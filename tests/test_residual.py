"""ResidualBlock and the contractive branches (attnflow.nn.residual, attnflow.nn.branches)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnflow.nn.attention import L2MultiheadSelfAttention, LipNormSelfAttention
from attnflow.nn.branches import AttentionMix, build_branch
from attnflow.nn.lipschitz import SpectralNormConv2d
from attnflow.nn.logdet import LogDetConfig
from attnflow.nn.residual import InverseDidNotConverge, ResidualBlock
from attnflow.testing import brute_force_logdet, check_bijection, empirical_lipschitz

DT = torch.float64
SHAPE = (2, 4, 4)
EXACT = LogDetConfig("exact")
KINDS = {
    "iresnet": {"hidden": 6},
    "residual_flow": {"hidden": 6},
    "idensenet": {"growth": 4, "depth": 2},
}


class ToyAttention(nn.Module):
    """Stand-in global attention ``F(X) = W2 tanh(W1 (X + mean_HW X))`` (1x1 channel maps).

    ``X -> X + mean_HW X`` is ``I + P`` with ``P`` an orthogonal projection (norm 2), so
    ``Lip(F) <= 2 ||W1|| ||W2||``."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.w1 = nn.Parameter(scale * torch.randn(channels, channels) / channels**0.5)
        self.w2 = nn.Parameter(scale * torch.randn(channels, channels) / channels**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.einsum("oc,bchw->bohw", self.w1, x + x.mean((2, 3), keepdim=True)))
        return torch.einsum("oc,bchw->bohw", self.w2, h)

    def lipschitz_bound(self) -> float:
        norms = [torch.linalg.matrix_norm(w.detach(), ord=2).item() for w in (self.w1, self.w2)]
        return 2 * norms[0] * norms[1]


def make_branch(kind: str, attention_scale: float | None = None, seed: int = 0, **overrides) -> nn.Module:
    """A float64 branch on SHAPE whose convolutions are all actively normalised (raw norm >> coeff)."""
    torch.manual_seed(seed)
    if attention_scale is not None:
        overrides.setdefault("attention", lambda c: ToyAttention(c, attention_scale))
    g = build_branch(kind, SHAPE[0], input_size=SHAPE[1:], **{**KINDS[kind], **overrides})
    g = g.double()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, SpectralNormConv2d):
                m.weight.mul_(10.0)
    return g


def block(g: nn.Module, **kwargs) -> ResidualBlock:
    return ResidualBlock(g, train_logdet=EXACT, eval_logdet=EXACT, **kwargs).double().eval()


@pytest.mark.parametrize("attention_scale", [None, 3.0])
@pytest.mark.parametrize("kind", list(KINDS))
def test_branch_bound_is_certified_and_contractive(kind: str, attention_scale: float | None) -> None:
    g = make_branch(kind, attention_scale)
    bound = g.lipschitz_bound()
    g.eval()
    gen = torch.Generator().manual_seed(0)
    assert empirical_lipschitz(g, SHAPE, points=3, ascent_steps=40, generator=gen) <= bound < 1.0
    assert block(g).lipschitz_bound() == pytest.approx(bound)


@pytest.mark.parametrize(
    ("kind", "attention"),
    [("residual_flow", L2MultiheadSelfAttention), ("idensenet", LipNormSelfAttention)],
)
def test_branch_with_acf_attention(kind: str, attention: type[nn.Module]) -> None:
    g = make_branch(kind, attention=lambda c: attention(c, heads=2))
    bound = g.lipschitz_bound()
    g.eval()
    gen = torch.Generator().manual_seed(0)
    assert empirical_lipschitz(g, SHAPE, points=3, ascent_steps=40, generator=gen) <= bound < 1.0
    check_bijection(block(g, atol=1e-12, rtol=0.0), torch.randn(2, *SHAPE, dtype=DT))


@pytest.mark.parametrize("scale", [0.3, 4.0])
def test_attention_mix_bound(scale: float) -> None:
    torch.manual_seed(0)
    attention = ToyAttention(3, scale).double()
    mix = AttentionMix(attention, mix_init=0.7).double()
    bound = mix.lipschitz_bound()
    a = torch.sigmoid(mix.gamma).item()
    b = attention.lipschitz_bound()
    assert bound == pytest.approx(1 - a + a * b / max(1.0, b))
    assert bound <= 1.0
    gen = torch.Generator().manual_seed(0)
    assert empirical_lipschitz(mix, (3, 2, 2), points=3, ascent_steps=40, generator=gen) <= bound


@pytest.mark.parametrize("attention_scale", [None, 3.0])
@pytest.mark.parametrize("kind", list(KINDS))
def test_block_inverts_and_exact_logdet_matches_brute_force(kind: str, attention_scale: float | None) -> None:
    g = make_branch(kind, attention_scale)
    g.lipschitz_bound()
    torch.manual_seed(1)
    check_bijection(block(g, atol=1e-12, rtol=0.0), torch.randn(2, *SHAPE, dtype=DT))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inverse_error_below_1e5_at_coeff_097(dtype: torch.dtype) -> None:
    g = make_branch("residual_flow", coeff=0.97)
    g.lipschitz_bound()
    blk = ResidualBlock(g).to(dtype).eval()  # default tolerances
    torch.manual_seed(2)
    x = 2 * torch.randn(4, *SHAPE, dtype=dtype)
    y, _ = blk(x)
    assert (blk.inverse(y) - x).abs().max().item() < 1e-5


def test_inverse_in_training_mode_inverts_the_last_forward() -> None:
    g = make_branch("iresnet")
    blk = ResidualBlock(g, train_logdet=LogDetConfig("power_series", n_terms=2)).double().train()
    x = torch.randn(2, *SHAPE, dtype=DT)
    y, _ = blk(x)  # updates the power-iteration buffers once
    buffers = [b.clone() for b in g.buffers()]
    torch.testing.assert_close(blk.inverse(y), x, atol=1e-5, rtol=0.0)
    assert all(torch.equal(a, b) for a, b in zip(buffers, g.buffers()))
    assert g.training


def test_train_and_eval_use_their_own_estimator() -> None:
    g = make_branch("residual_flow")
    g.lipschitz_bound()
    blk = ResidualBlock(g, train_logdet=EXACT, eval_logdet=LogDetConfig("power_series", n_terms=1)).double()
    x = torch.randn(2, *SHAPE, dtype=DT)
    blk.train()
    blk.branch.eval()  # the block is in training mode; the spectral norms stay fixed
    expected = brute_force_logdet(lambda v: v + g(v), x)
    torch.testing.assert_close(blk(x)[1], expected)
    blk.eval()
    assert not torch.allclose(blk(x)[1], expected, atol=1e-3)


def test_no_grad_forward_and_training_gradients() -> None:
    g = make_branch("idensenet", attention_scale=2.0)
    g.lipschitz_bound()
    blk = block(g)
    x = torch.randn(2, *SHAPE, dtype=DT)
    y, logdet = blk(x)
    with torch.no_grad():
        y0, logdet0 = blk(x)
    assert not y0.requires_grad and not logdet0.requires_grad
    torch.testing.assert_close(logdet0, logdet.detach())
    torch.testing.assert_close(y0, y.detach())
    train_blk = ResidualBlock(g).double().train()  # Russian roulette with the Neumann gradient
    torch.manual_seed(3)
    y, logdet = train_blk(x)
    assert torch.isfinite(logdet).all()
    (y.square().sum() - logdet.sum()).backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert g[0].k.grad.abs().sum() > 0  # dense concatenation weights are trained
    assert g[1].gamma.grad.abs().item() > 0  # attention mix weight is trained


class Expanding(nn.Module):
    """``g(x) = -1.5 x``: not a contraction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -1.5 * x

    def lipschitz_bound(self) -> float:
        return 1.5


def test_inverse_reports_non_convergence_with_the_residual() -> None:
    y = torch.randn(2, *SHAPE, dtype=DT)
    with pytest.raises(InverseDidNotConverge, match="residual"):
        block(Expanding()).inverse(y)
    g = make_branch("residual_flow")
    g.lipschitz_bound()
    with pytest.raises(RuntimeError, match=r"residual max\|x \+ g\(x\) - y\| = \d"):
        block(g, max_iter=2, atol=1e-12, rtol=0.0).inverse(y)


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="lipschitz_bound"):
        ResidualBlock(nn.Identity())
    with pytest.raises(ValueError, match="max_iter"):
        ResidualBlock(Expanding(), max_iter=0)
    with pytest.raises(ValueError, match="kind"):
        build_branch("glow", 2, hidden=4)
    with pytest.raises(ValueError, match="kernel_sizes"):
        build_branch("iresnet", 2, hidden=4, kernel_sizes=(3, 2))
    with pytest.raises(ValueError, match="activation"):
        build_branch("residual_flow", 2, hidden=4, activation="tanh")
    with pytest.raises(ValueError, match="growth"):
        build_branch("idensenet", 2, growth=3)
    with pytest.raises(ValueError, match="coeff"):
        build_branch("residual_flow", 2, hidden=4, coeff=1.0)
    with pytest.raises(ValueError, match="mix_init"):
        AttentionMix(ToyAttention(2, 1.0), mix_init=0.0)
