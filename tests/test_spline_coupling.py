"""The rational-quadratic spline and its coupling (Neural Spline Flows): inverse, log-det against
autograd and the brute-force Jacobian in float64, monotonicity, identity tails."""
from __future__ import annotations

import pytest
import torch

from attnflow.flows.spline_coupling import SplineCoupling, rational_quadratic_spline
from attnflow.testing import check_bijection

D = torch.float64
BOUND = 2.5


def _params(shape, bins, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(*shape, n, generator=g, dtype=D) for n in (bins, bins, bins - 1)]


@pytest.mark.parametrize("bins", [1, 2, 5, 12])
def test_spline_inverts_and_its_log_derivative_is_the_derivative(bins):
    x = torch.linspace(-1.5 * BOUND, 1.5 * BOUND, 301, dtype=D).requires_grad_(True)
    params = _params(x.shape, bins)
    y, log_derivative = rational_quadratic_spline(x, *params, BOUND)
    (derivative,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the Jacobian is diagonal
    torch.testing.assert_close(log_derivative, derivative.log(), atol=1e-10, rtol=1e-9)
    x_back, inverse_log_derivative = rational_quadratic_spline(y.detach(), *params, BOUND, inverse=True)
    torch.testing.assert_close(x_back, x.detach(), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(inverse_log_derivative, -log_derivative.detach(), atol=1e-9, rtol=1e-9)


def test_spline_is_monotone_and_maps_the_interval_onto_itself():
    x = torch.linspace(-BOUND, BOUND, 2001, dtype=D)
    for seed in range(5):
        params = [p.expand(len(x), -1) for p in _params((1,), 8, scale=4.0, seed=seed)]  # one sharp spline
        y, log_derivative = rational_quadratic_spline(x, *params, BOUND)
        assert (y.diff() > 0).all(), seed
        assert torch.isfinite(log_derivative).all()
        torch.testing.assert_close(y[[0, -1]], torch.tensor([-BOUND, BOUND], dtype=D), atol=1e-12, rtol=0)


def test_tails_are_the_identity_with_a_continuous_derivative():
    x = torch.tensor([-100.0, -BOUND - 1e-3, BOUND + 1e-3, 7.0], dtype=D)
    y, log_derivative = rational_quadratic_spline(x, *_params(x.shape, 6), BOUND)
    assert torch.equal(y, x) and torch.equal(log_derivative, torch.zeros_like(x))
    edges = torch.tensor([-BOUND, BOUND], dtype=D)  # d_0 = d_K = 1: the derivative is 1 at the boundary
    _, at_edges = rational_quadratic_spline(edges, *_params(edges.shape, 6), BOUND)
    torch.testing.assert_close(at_edges, torch.zeros_like(edges), atol=1e-12, rtol=0)


def test_zero_parameters_are_the_identity():
    x = torch.linspace(-BOUND, BOUND, 50, dtype=D)
    zeros = [torch.zeros(50, n, dtype=D) for n in (4, 4, 3)]
    y, log_derivative = rational_quadratic_spline(x, *zeros, BOUND)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_derivative, torch.zeros_like(x), atol=1e-12, rtol=0)


def _perturbed(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return layer.double()


@pytest.mark.parametrize("mask", SplineCoupling.MASKS)
def test_coupling_inverse_and_logdet_match_brute_force(mask):
    torch.manual_seed(0)
    layer = _perturbed(SplineCoupling(4, hidden=6, mask=mask, bins=5, bound=BOUND))
    x = 1.5 * torch.randn(2, 4, 2, 2, dtype=D)  # partly in the tails
    check_bijection(layer, x)
    (x_kept, x_moved), (z_kept, z_moved) = layer.mask.split(x), layer.mask.split(layer(x)[0])
    assert torch.equal(z_kept, x_kept) and not torch.allclose(z_moved, x_moved)


def test_conditional_coupling_and_a_new_coupling_is_the_identity():
    torch.manual_seed(1)
    layer = SplineCoupling(3, hidden=5, mask="checkerboard", bins=4, context_channels=2).double()
    x, context = torch.randn(2, 3, 4, 4, dtype=D), torch.randn(2, 2, 4, 4, dtype=D)
    z, logdet = layer(x, context)  # zero-initialised network: uniform bins, unit derivatives
    torch.testing.assert_close(z, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(2, dtype=D), atol=1e-12, rtol=0)
    check_bijection(_perturbed(layer), x, context=context)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown coupling mask 'diagonal'"):
        SplineCoupling(4, mask="diagonal")
    with pytest.raises(ValueError, match="a channel mask needs at least 2 channels"):
        SplineCoupling(1)
    with pytest.raises(ValueError, match="bins >= 1 and bound > 0"):
        SplineCoupling(4, bins=0)
    with pytest.raises(ValueError, match="K widths, K heights and K - 1 derivatives"):
        rational_quadratic_spline(torch.zeros(3), *(torch.zeros(3, 4) for _ in range(3)), 1.0)
    with pytest.raises(ValueError, match="coupling expects 4 channels, got 3"):
        SplineCoupling(4)(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="this coupling is conditional"):
        SplineCoupling(4, context_channels=1)(torch.zeros(1, 4, 2, 2))
