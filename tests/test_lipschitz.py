"""Spectral-norm layers and 1-Lipschitz activations (attnflow.nets.lipschitz_layers)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnflow.nets.lipschitz_layers import (
    CLipSwish,
    LipSwish,
    SpectralNormConv2d,
    SpectralNormLinear,
    _LipSwishWithSlope,
    conv2d,
    conv_transpose2d,
)
from attnflow.testing import empirical_lipschitz, exact_circulant_norm, exact_conv_norm

DT = torch.float64


def explicit_matrix(fn, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Matrix of the linear map ``fn`` on inputs of shape ``in_shape`` (no batch)."""
    d = torch.Size(in_shape).numel()
    basis = torch.eye(d, dtype=DT).reshape(d, *in_shape)
    return fn(basis).reshape(d, -1).T


def spectral_norm(m: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(m, ord=2).item()


def conv_layer(
    c_in: int, c_out: int, k: int, p: int, size: tuple[int, int], scale: float = 5.0, explicit_side: int = 0
) -> SpectralNormConv2d:
    """A float64 layer whose raw weight norm exceeds coeff, so the normalisation is active
    (divided by the circulant Gram bound unless ``explicit_side`` admits its explicit matrix)."""
    torch.manual_seed(0)
    layer = SpectralNormConv2d(c_in, c_out, k, p).double()
    layer.explicit_side = explicit_side
    with torch.no_grad():
        layer.weight.mul_(scale)
    layer(torch.zeros(1, c_in, *size, dtype=DT))  # records the input size
    return layer


PATHS = {"explicit": 256, "circulant": 0}  # explicit_side: Gram bound of the explicit matrix or of the circulant


def test_linear_sigma_and_normalised_norm() -> None:
    torch.manual_seed(0)
    layer = SpectralNormLinear(5, 7, coeff=0.9).double()
    with torch.no_grad():
        layer.weight.mul_(4.0)
    used = spectral_norm(layer.normalized_weight())  # normalised for the changed weight
    assert 0.9 * (1 - 1e-3) <= used <= 0.9  # a certified divisor within 0.1%: never above coeff
    bound = layer.lipschitz_bound()
    assert used <= bound <= used * (1 + 1e-3)
    layer.eval()
    assert bound >= empirical_lipschitz(layer, (5,), points=4, ascent_steps=30)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("k", "p", "size"),
                         [(3, 1, (4, 4)), (3, 1, (5, 3)), (3, 0, (5, 5)), (1, 0, (3, 3)), (5, 2, (4, 6))])
def test_conv_induced_norm_matches_explicit_matrix(k: int, p: int, size: tuple[int, int], path: str) -> None:
    layer = conv_layer(2, 3, k, p, size, explicit_side=PATHS[path])
    conv = lambda x, w=layer.weight: F.conv2d(x, w, padding=p)  # noqa: E731
    exact = spectral_norm(explicit_matrix(conv, (2, *size)))
    assert exact > 1.0  # the raw conv is not a contraction; the normalisation must act
    used = spectral_norm(explicit_matrix(lambda x: F.conv2d(x, layer.normalized_weight(), padding=p), (2, *size)))
    if path == "circulant" and k > 1:  # divided by the circulant bound: at most coeff, looser on tiny grids
        circulant = exact_circulant_norm(layer.weight, size, (p, p))
        assert used <= layer.coeff * (1 + 1e-12)
        assert used >= layer.coeff * exact / circulant * (1 - 1e-3)
    else:  # the explicit matrix (every 1x1 kernel): within the Gram bound's 0.1%
        assert layer.coeff * (1 - 1e-3) <= used <= layer.coeff * (1 + 1e-12)
    bound = layer.lipschitz_bound()
    assert bound >= used * (1 - 1e-12)


@pytest.mark.parametrize(("k", "p", "size"), [(3, 1, (4, 4)), (3, 0, (5, 5)), (5, 2, (4, 6)), (3, 2, (3, 3))])
def test_circulant_bound_is_exact_circular_norm_and_upper_bounds_zero_padding(
    k: int, p: int, size: tuple[int, int]
) -> None:
    torch.manual_seed(1)
    w = torch.randn(3, 2, k, k, dtype=DT)
    zero = spectral_norm(explicit_matrix(lambda x: F.conv2d(x, w, padding=p), (2, *size)))
    bound = exact_circulant_norm(w, size, (p, p))
    assert bound >= zero * (1 - 1e-12)
    # The bound is the exact norm of the circular convolution on the enlarged grid.
    m = (size[0] + max(k - 1, 2 * p), size[1] + max(k - 1, 2 * p))
    circular = lambda x: F.conv2d(F.pad(x, (k // 2,) * 4, mode="circular"), w)  # noqa: E731
    assert bound == pytest.approx(spectral_norm(explicit_matrix(circular, (2, *m))), rel=1e-10)
    # The exact helper is the zero-padded norm.
    assert exact_conv_norm(w, size, (p, p)) == pytest.approx(zero, rel=1e-10)


def _used_norm(layer: SpectralNormConv2d) -> float:
    """Exact norm of the layer's convolution with the weight of its next forward pass."""
    w = layer.normalized_weight().detach()
    return spectral_norm(explicit_matrix(lambda x: F.conv2d(x, w, padding=layer.padding),
                                         (layer.in_channels, *layer.input_size)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_weight_changes_renormalise_in_both_modes(mode: str, path: str) -> None:
    """Any change of the weight (here large ones, 20 draws) is normalised again before the next
    use, in training and in evaluation mode, never above coeff; gradients flow through the
    normalisation."""
    worst = 0.0
    for seed in range(20):
        layer = conv_layer(2, 2, 3, 1, (4, 4), explicit_side=PATHS[path]).train(mode == "train")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            layer.weight.add_(torch.randn(layer.weight.shape, generator=gen, dtype=DT))
        x = torch.randn(2, 2, 4, 4, dtype=DT, requires_grad=True)
        y = layer(x)
        worst = max(worst, _used_norm(layer) / layer.coeff)
    assert worst <= 1 + 1e-12
    y.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_edits_through_data_are_normalised_too() -> None:
    """The divisor is recomputed at every forward pass with autograd, so an edit the version
    counter does not see (``weight.data``) is normalised at the next training step."""
    layer = conv_layer(2, 2, 3, 1, (4, 4))
    layer.weight.data.mul_(3.0)
    layer(torch.zeros(1, 2, 4, 4, dtype=DT))
    assert _used_norm(layer) <= layer.coeff * (1 + 1e-12)


def test_lipschitz_bound_is_pure_and_certifies_the_next_forward() -> None:
    layer = conv_layer(2, 3, 3, 1, (4, 4), explicit_side=256)
    with torch.no_grad():
        layer.weight.mul_(1.7)  # stale: the next forward will renormalise
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    bound = layer.lipschitz_bound()
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())
    assert _used_norm(layer) <= bound <= _used_norm(layer) * (1 + 1e-3)


def test_legacy_power_iteration_vectors_load_and_give_the_input_size() -> None:
    """A state dict written before the divisors were certified carries ``u`` and ``v``."""
    layer = conv_layer(2, 3, 3, 1, (4, 5)).eval()
    legacy = {**layer.state_dict(), "u": torch.randn(1, 3, 4, 5, dtype=DT), "v": torch.randn(1, 2, 4, 5, dtype=DT)}
    fresh = SpectralNormConv2d(2, 3, 3, 1).double().eval()
    fresh.explicit_side = layer.explicit_side
    fresh.load_state_dict(legacy)
    assert fresh.input_size == (4, 5)
    x = torch.randn(2, 2, 4, 5, dtype=DT)
    torch.testing.assert_close(fresh(x), layer(x))


def test_conv_state_dict_roundtrip() -> None:
    """The state is the weight and bias alone: a loaded layer computes the same function (the
    input size comes from ``input_size`` or the first input)."""
    layer = conv_layer(2, 3, 3, 1, (4, 4)).eval()
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    fresh = SpectralNormConv2d(2, 3, 3, 1).double().eval()
    fresh.explicit_side = layer.explicit_side
    fresh.load_state_dict(layer.state_dict())
    assert set(layer.state_dict()) == {"weight", "bias"}
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    assert fresh.input_size == (4, 4)


def test_conv_rejects_other_input_size() -> None:
    layer = conv_layer(2, 3, 3, 1, (4, 4))
    with pytest.raises(ValueError, match="spatial size"):
        layer(torch.zeros(1, 2, 5, 5, dtype=DT))


# (C_in, C_out, kernel, padding): 1x1, few input channels (unfold), few output channels (fold),
# neither (F.conv2d), non-square kernels and paddings up to k - 1
CONV_SHAPES = [(3, 5, (1, 1), (0, 0)), (6, 2, (1, 1), (0, 0)), (1, 12, (3, 3), (1, 1)), (2, 30, (3, 5), (2, 0)),
               (12, 1, (3, 3), (1, 1)), (30, 2, (5, 3), (4, 2)), (4, 5, (3, 3), (1, 1))]


@pytest.mark.parametrize(("c_in", "c_out", "k", "p"), CONV_SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_matches_torch_forward_transpose_and_gradients(
    c_in: int, c_out: int, k: tuple[int, int], p: tuple[int, int], bias: bool
) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, c_in, 6, 5, dtype=DT, requires_grad=True)
    w = torch.randn(c_out, c_in, *k, dtype=DT, requires_grad=True)
    b = torch.randn(c_out, dtype=DT, requires_grad=True) if bias else None
    out, ref = conv2d(x, w, b, p), F.conv2d(x, w, b, padding=p)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    inputs = [x, w] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r)
    torch.testing.assert_close(conv_transpose2d(g, w, p), F.conv_transpose2d(g, w, padding=p))


def test_conv_rejects_padding_beyond_the_kernel() -> None:
    with pytest.raises(ValueError, match="padding"):
        SpectralNormConv2d(2, 2, 3, 3)


@pytest.mark.parametrize("beta_init", [0.3, 2.0])
def test_lipswish_value_and_slope(beta_init: float) -> None:
    """The fused value and slope equal the forward and its autograd derivative, and their
    hand-written backward (in x and beta) passes gradcheck."""
    act = LipSwish(beta_init).double()
    x = (3 * torch.randn(2, 3, 4, 4, dtype=DT)).requires_grad_(True)
    y, slope = act.value_and_slope(x)
    torch.testing.assert_close(y, act(x))
    torch.testing.assert_close(slope, torch.autograd.grad(act(x).sum(), x)[0])
    beta = torch.nn.functional.softplus(act.b).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(_LipSwishWithSlope.apply, (x, beta))


def test_conv_bound_needs_input_size() -> None:
    with pytest.raises(RuntimeError, match="input size"):
        SpectralNormConv2d(2, 3, 3, 1).lipschitz_bound()


@pytest.mark.parametrize("coeff", [1.0, 1.5, 0.0, -0.5])
def test_bad_coeff(coeff: float) -> None:
    with pytest.raises(ValueError, match="coeff"):
        SpectralNormLinear(3, 3, coeff=coeff)
    with pytest.raises(ValueError, match="coeff"):
        SpectralNormConv2d(3, 3, 3, 1, coeff=coeff)


def test_bad_beta() -> None:
    with pytest.raises(ValueError, match="beta_init"):
        LipSwish(0.0)


def _swish_slope(t: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(t)
    return s + t * s * (1 - s)


def test_clipswish_divisor_matches_derivation() -> None:
    t = torch.linspace(-20, 20, 400_001, dtype=DT)
    peak = (_swish_slope(t).square() + _swish_slope(-t).square()).sqrt().max().item() / 1.1
    assert 1.0035 < peak <= 1.004


@pytest.mark.parametrize("beta_init", [0.1, 1.0, 5.0])
def test_clipswish_jacobian_norm_is_at_most_one_and_tight(beta_init: float) -> None:
    act = CLipSwish(beta_init).double()
    x = torch.linspace(-30, 30, 60_001, dtype=DT).reshape(-1, 1).requires_grad_(True)
    y = act(x)  # [n, 2]: per element, the Jacobian is the column (dy0/dx, dy1/dx)
    d0 = torch.autograd.grad(y[:, 0].sum(), x, retain_graph=True)[0]
    d1 = torch.autograd.grad(y[:, 1].sum(), x)[0]
    norm = (d0.square() + d1.square()).sqrt().max().item()
    assert 0.999 < norm <= 1.0


@pytest.mark.parametrize("cls", [LipSwish, CLipSwish])
def test_activations_empirical_lipschitz_at_most_one(cls: type[LipSwish]) -> None:
    act = cls(1.5).double()
    gen = torch.Generator().manual_seed(0)
    assert empirical_lipschitz(act, (2, 3, 3), points=4, ascent_steps=50, generator=gen) <= act.lipschitz_bound()


def test_lipswish_slope_peak_below_divisor() -> None:
    act = LipSwish(0.7).double()
    x = torch.linspace(-30, 30, 60_001, dtype=DT).requires_grad_(True)
    slope = torch.autograd.grad(act(x).sum(), x)[0].max().item()
    assert 0.9998 < slope <= 1.0
