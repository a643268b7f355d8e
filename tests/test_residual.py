"""ResidualBlock and the contractive branches (attnflow.flows.residual_block, attnflow.nets.residual_branches)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnflow.flows.residual_block import InverseDidNotConverge, ResidualBlock, full_float32
from attnflow.flows.residual_logdet import LogDetConfig
from attnflow.nets.linearization import Linearization, autograd_linearization
from attnflow.nets.lipschitz_attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from attnflow.nets.lipschitz_layers import CLipSwish, LipSwish, SpectralNormConv2d, SpectralNormLinear
from attnflow.nets.residual_branches import AttentionMix, DenseLayer, build_branch, linearize
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


def test_float32_inverse_of_large_values_stops_at_round_off() -> None:
    """An atol below float32 resolution must not turn a converging inverse into an error."""
    g = make_branch("residual_flow").float()
    g.lipschitz_bound()
    blk = ResidualBlock(g, train_logdet=EXACT, eval_logdet=EXACT, atol=1e-7, rtol=0.0, max_iter=300).eval()
    x = 30 * torch.randn(64, *SHAPE)
    with torch.no_grad():
        y = blk(x)[0]
        x_rec = blk.inverse(y)
    assert float(((x_rec - x).abs() / x.abs().clamp_min(1)).max()) < 1e-5
    assert blk.last_iterations < blk.max_iter


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


def _scaled(module: nn.Module, factor: float = 3.0) -> nn.Module:
    """``module`` in float64 and evaluation mode with its weights scaled (normalisations active)."""
    module = module.double().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                p.mul_(factor)
    return module


def _conv(c_in: int, c_out: int, k: int, p: int) -> nn.Module:
    return _scaled(SpectralNormConv2d(c_in, c_out, k, p, input_size=(3, 3)))


def _attention(cls: type[nn.Module], **kwargs) -> nn.Module:
    return _scaled(cls(4, heads=2, **kwargs), 2.0)


# name -> (module factory, input shape); every layer kind a branch can hold, in float64
LAYERS = {
    "conv_dense_path": (lambda: _conv(2, 3, 3, 1), (2, 2, 3, 3)),
    "conv_unfold_path": (lambda: _conv(1, 12, 3, 1), (2, 1, 3, 3)),
    "conv_fold_path": (lambda: _conv(12, 1, 3, 1), (2, 12, 3, 3)),
    "conv_unpadded": (lambda: _conv(2, 20, 3, 0), (2, 2, 3, 3)),
    "conv_1x1": (lambda: _conv(3, 4, 1, 0), (2, 3, 3, 3)),
    "linear": (lambda: _scaled(SpectralNormLinear(3, 4)), (2, 3)),
    "lipswish": (lambda: LipSwish(0.8).double(), (2, 3, 2, 2)),
    "clipswish": (lambda: CLipSwish(1.3).double(), (2, 3, 2, 2)),
    "elu": (lambda: nn.ELU(0.7), (2, 3, 2, 2)),
    "relu": (lambda: nn.ReLU(), (2, 3, 2, 2)),
    "dense_clipswish": (lambda: _scaled(DenseLayer(2, 4, input_size=(3, 3))), (2, 2, 3, 3)),
    "dense_lipswish": (lambda: _scaled(DenseLayer(2, 4, "lipswish", input_size=(3, 3))), (2, 2, 3, 3)),
    "l2": (lambda: _attention(L2MultiheadSelfAttention), (2, 4, 2, 3)),
    "l2_raw": (lambda: _attention(L2MultiheadSelfAttention, normalize=False), (2, 4, 2, 3)),
    "lipnorm": (lambda: _attention(LipNormSelfAttention), (2, 4, 2, 3)),
    "dot": (lambda: _attention(DotProductSelfAttention), (2, 4, 2, 3)),
    "mix_l2": (lambda: AttentionMix(_attention(L2MultiheadSelfAttention), 0.6).double(), (2, 4, 2, 3)),
    "mix_toy_autograd": (lambda: AttentionMix(ToyAttention(4, 2.0), 0.6).double(), (2, 4, 2, 3)),
    **{
        f"{kind}_{name}": (lambda kind=kind, att=att: make_branch(kind, attention=att).eval(), (2, *SHAPE))
        for kind in KINDS
        for name, att in {
            "plain": None,
            "toy": lambda c: ToyAttention(c, 2.0),
            "l2": lambda c: L2MultiheadSelfAttention(c, heads=2),
            "lipnorm": lambda c: LipNormSelfAttention(c, heads=2),
        }.items()
    },
}


def _jacobians_from_products(lin: Linearization, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Jacobian ``[out, in]`` (whole batch) column by column from ``jvp`` and row by row from ``vjp``."""
    with torch.no_grad():
        by_jvp = torch.stack([lin.jvp(e.view_as(x)).reshape(-1) for e in torch.eye(x.numel(), dtype=x.dtype)], 1)
        rows = torch.eye(lin.output.numel(), dtype=x.dtype)
        by_vjp = torch.stack([lin.vjp(e.view_as(lin.output)).reshape(-1) for e in rows])
    return by_jvp, by_vjp


@pytest.mark.parametrize("name", list(LAYERS))
def test_explicit_products_equal_the_autograd_jacobian(name: str) -> None:
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = factory()
    x = 2 * torch.randn(*shape, dtype=DT)
    lin = linearize(layer, x)
    torch.testing.assert_close(lin.output, layer(x))
    jacobian = torch.autograd.functional.jacobian(layer, x).reshape(lin.output.numel(), x.numel())
    by_jvp, by_vjp = _jacobians_from_products(lin, x)
    torch.testing.assert_close(by_jvp, jacobian)
    torch.testing.assert_close(by_vjp, jacobian)


@pytest.mark.parametrize("name", list(LAYERS))
def test_explicit_products_differentiate_like_autograd(name: str) -> None:
    """Gradients of ``<w, J v>`` and ``<w^T J, v>`` in the input and the parameters (the Neumann
    surrogate and the full-series gradient) equal those through autograd's double backward."""
    factory, shape = LAYERS[name]
    torch.manual_seed(1)
    layer = factory()
    x = 2 * torch.randn(*shape, dtype=DT)
    params = list(layer.parameters())
    out_shape = layer(x).shape
    w, v = torch.randn(out_shape, dtype=DT), torch.randn(shape, dtype=DT)
    for product in (lambda lin: (w * lin.jvp(v)).sum(), lambda lin: (lin.vjp(w) * v).sum()):
        grads = []
        for make in (linearize, autograd_linearization):
            xg = x.clone().requires_grad_(True)
            value = product(make(layer, xg))
            inputs = [xg, *params]
            if value.requires_grad:  # not for ReLU: a piecewise-constant Jacobian
                grads.append(torch.autograd.grad(value, inputs, allow_unused=True, materialize_grads=True))
            else:
                grads.append([torch.zeros_like(t) for t in inputs])
        for explicit, reference in zip(*grads):
            torch.testing.assert_close(explicit, reference)


def test_no_grad_linearization_records_nothing_for_explicit_layers() -> None:
    g = make_branch("residual_flow").eval()
    with torch.no_grad():
        lin = linearize(g, torch.randn(2, *SHAPE, dtype=DT))
        products = (lin.output, lin.vjp(torch.randn(2, *SHAPE, dtype=DT)), lin.jvp(torch.randn(2, *SHAPE, dtype=DT)))
    assert not any(t.requires_grad for t in products)


def test_inverse_reports_its_iterations() -> None:
    g = make_branch("residual_flow")
    g.lipschitz_bound()
    blk = block(g, atol=1e-10, rtol=0.0)
    y, _ = blk(torch.randn(2, *SHAPE, dtype=DT))
    blk.inverse(y)
    few = blk.last_iterations
    blk.atol = 1e-4
    blk.inverse(y)
    assert 1 <= blk.last_iterations < few < blk.max_iter


class _FlagRecorder(nn.Module):
    """``g(x) = x / 2`` that records the TF32 flags it runs under (and can be told to fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        if self.fail:
            raise ValueError("branch failed")
        return x / 2

    def lipschitz_bound(self) -> float:
        return 0.5


@pytest.fixture
def tf32_on():
    """Both TF32 flags on for the test (as a CUDA user may set them), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_branch_runs_without_tf32_and_flags_are_restored(tf32_on) -> None:
    branch = _FlagRecorder()
    block = ResidualBlock(branch, eval_logdet=LogDetConfig("exact"))
    block.eval()
    x = torch.randn(2, 3)
    y, _ = block(x)
    torch.testing.assert_close(block.inverse(y), x)
    assert branch.seen and all(flags == (False, False) for flags in branch.seen)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    branch.fail = True
    with pytest.raises(ValueError, match="branch failed"):
        block.inverse(y)
    with pytest.raises(ValueError, match="branch failed"):
        block(x)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)


def test_full_float32_restores_mixed_settings() -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, True
        with full_float32():
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_residual_preset_inverts_on_cuda_under_default_tf32() -> None:
    """Issue 9: under TF32 the fixed-point inverse raised a spurious InverseDidNotConverge."""
    from attnflow.models import build

    torch.manual_seed(0)
    flow = build("resflow-digits").to("cuda").eval()
    x = torch.rand(4, *flow.shape, device="cuda")
    torch.testing.assert_close(flow.decode(flow.encode(x)), x, atol=1e-4, rtol=1e-4)
