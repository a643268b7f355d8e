"""Log-det estimators of residual blocks (attnflow.flows.residual_logdet)."""
from __future__ import annotations

import math

import pytest
import torch

from attnflow.flows.residual_logdet import (
    LogDetConfig,
    estimate_logdet,
    exact_logdet,
    hutchinson_vectors,
    power_series_coefficients,
    series_logdet,
)
from attnflow.nets.linearization import Linearization, autograd_linearization
from attnflow.nets.lipschitz_layers import SpectralNormConv2d
from attnflow.nets.residual_branches import build_branch, linearize
from attnflow.testing import brute_force_logdet

DT = torch.float64
SHAPE = (2, 2, 2)  # C, H, W: D = 8


def branch(seed: int = 0) -> torch.nn.Module:
    """A tiny Residual Flow branch whose convolutions are all normalised to coeff (active)."""
    torch.manual_seed(seed)
    g = build_branch("residual_flow", SHAPE[0], hidden=6, input_size=SHAPE[1:], coeff=0.95).double()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, SpectralNormConv2d):
                m.weight.mul_(10.0)
    g.lipschitz_bound()  # converge the power iterations
    return g.eval()


def linearized(g: torch.nn.Module, x: torch.Tensor, explicit: bool = True) -> tuple[Linearization, torch.Tensor]:
    """``g`` linearized at a fresh leaf ``x``: explicit per-layer products, or autograd's (reference)."""
    x = x.detach().requires_grad_(True)
    return (linearize(g, x) if explicit else autograd_linearization(g, x)), x


def basis_vectors(x: torch.Tensor) -> list[torch.Tensor]:
    """``sqrt(D) e_i``: the Hutchinson average over them is the exact trace."""
    d = x[0].numel()
    eye = torch.eye(d, dtype=x.dtype) * math.sqrt(d)
    return [eye[i].expand(x.shape[0], d).reshape(x.shape) for i in range(d)]


@pytest.mark.parametrize("explicit", [True, False])
def test_exact_matches_brute_force(explicit: bool) -> None:
    g = branch()
    x = torch.randn(3, *SHAPE, dtype=DT)
    lin, _ = linearized(g, x, explicit)
    torch.testing.assert_close(exact_logdet(lin), brute_force_logdet(lambda v: v + g(v), x))


def test_power_series_converges_within_the_truncation_bound() -> None:
    g = branch()
    lip = g.lipschitz_bound()
    x = 2 * torch.randn(2, *SHAPE, dtype=DT)
    lin, xg = linearized(g, x)
    exact = exact_logdet(lin)
    d = x[0].numel()
    errors = []
    for n in range(1, 16):
        approx = series_logdet(lin, power_series_coefficients(n), basis_vectors(xg))
        err = (approx - exact).abs().max().item()
        # |tr(J^k)| <= D Lip^k: the tail after n terms is at most D sum_{k>n} Lip^k / k.
        tail = d * sum(lip**k / k for k in range(n + 1, 2000))
        assert err <= tail
        errors.append(err)
    assert errors[-1] < 1e-3 * errors[0]
    assert errors[-1] < 1e-8


def test_russian_roulette_is_unbiased() -> None:
    # A linear branch (J = the normalised convolution): slowly decaying terms, so the reweighting of
    # the random tail carries much of the value.
    torch.manual_seed(1)
    g = SpectralNormConv2d(SHAPE[0], SHAPE[0], 3, 1, coeff=0.6).double()
    with torch.no_grad():
        g.weight.mul_(10.0)
    g(torch.zeros(1, *SHAPE, dtype=DT))
    g.eval()
    x = torch.randn(1, *SHAPE, dtype=DT)
    exact = exact_logdet(linearized(g, x)[0]).item()
    lin, xg = linearized(g, x.expand(64, *SHAPE))
    cfg = LogDetConfig("russian_roulette", n_exact=1, geom_p=0.5, n_samples=1)
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([estimate_logdet(lin, cfg).mean() for _ in range(1000)])
    mean, se = draws.mean().item(), draws.std().item() / math.sqrt(len(draws))
    assert abs(mean - exact) < 3 * se
    # Power check: the same random number of terms without the 1 / P(N >= k) weights is biased.
    unweighted = []
    for _ in range(1000):
        n = 1 + int(torch.distributions.Geometric(probs=torch.tensor(0.5)).sample())
        v = hutchinson_vectors(xg, 1)
        with torch.no_grad():
            unweighted.append(series_logdet(lin, power_series_coefficients(n), v).mean())
    assert abs(torch.stack(unweighted).mean().item() - exact) > 6 * se


@pytest.mark.parametrize("coefficients", [power_series_coefficients(6), [1.0, -1.5, 2.0, -3.0, 1.25]])
@pytest.mark.parametrize("explicit_full", [True, False])
def test_neumann_gradient_equals_series_gradient_with_exact_traces(
    coefficients: list[float], explicit_full: bool
) -> None:
    """Neumann surrogate with explicit products vs. the gradient through every term of the series
    (explicit differentiable products, or autograd's double backward as an independent reference)."""
    g = branch()
    x = torch.randn(2, *SHAPE, dtype=DT)
    params = [p for name, p in g.named_parameters() if not name.endswith("bias")]  # biases: no effect on J
    grads = []
    for explicit, neumann in ((explicit_full, False), (True, True)):
        lin, xg = linearized(g, x, explicit)
        value = series_logdet(lin, coefficients, basis_vectors(xg), neumann_grad=neumann)
        grads.append((value.detach(), torch.autograd.grad(value.sum(), [xg, *params])))
    (v_full, g_full), (v_neu, g_neu) = grads
    torch.testing.assert_close(v_neu, v_full)
    for a, b in zip(g_full, g_neu):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)


def test_neumann_gradient_with_long_series_matches_exact_logdet_gradient() -> None:
    g = branch()
    x = torch.randn(2, *SHAPE, dtype=DT)
    params = [p for name, p in g.named_parameters() if not name.endswith("bias")]  # biases: no effect on J
    lin, xg = linearized(g, x, explicit=False)
    target = torch.autograd.grad(exact_logdet(lin).sum(), [xg, *params])
    lin, xg = linearized(g, x)
    value = series_logdet(lin, power_series_coefficients(60), basis_vectors(xg), neumann_grad=True)
    for a, b in zip(target, torch.autograd.grad(value.sum(), [xg, *params])):
        torch.testing.assert_close(b, a, atol=1e-8, rtol=1e-6)


def test_neumann_gradient_is_unbiased_with_random_vectors() -> None:
    g = branch()
    x = torch.randn(1, *SHAPE, dtype=DT)
    w = g[1].weight  # first convolution
    target = torch.autograd.grad(exact_logdet(linearized(g, x, explicit=False)[0]).sum(), w)[0]
    cfg = LogDetConfig("russian_roulette", n_exact=2, geom_p=0.5, neumann_grad=True)
    torch.manual_seed(0)
    draws = []
    for _ in range(400):
        lin, _ = linearized(g, x)
        draws.append(torch.autograd.grad(estimate_logdet(lin, cfg).sum(), w)[0].flatten())
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - target.flatten()).abs() <= 4 * se + 1e-12).float().mean() >= 0.98


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "taylor"}, "estimator"),
        ({"geom_p": 1.0}, "geom_p"),
        ({"geom_p": 0.0}, "geom_p"),
        ({"n_terms": 0}, "n_terms"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_exact": -1}, "n_exact"),
        ({"noise": "uniform"}, "noise"),
        ({"estimator": "exact", "neumann_grad": True}, "neumann_grad"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LogDetConfig(**kwargs)
