"""Operator-norm tools: certified Gram bounds and the idempotent power iteration."""
from __future__ import annotations

import pytest
import torch

from attnflow.nets.operator_norm import GRAM_ITERATIONS, gram_looseness, gram_spectral_norm, power_iteration

DT = torch.float64


@pytest.mark.parametrize("shape", [(3, 5), (16, 64), (64, 64), (4, 64, 16), (200, 30)])
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_gram_bound_is_above_the_exact_norm_and_within_its_looseness(shape: tuple[int, ...], scale: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=DT) * scale
    exact = torch.linalg.matrix_norm(w, ord=2)
    bound = gram_spectral_norm(w)
    assert torch.all(bound >= exact)
    assert torch.all(bound <= exact * gram_looseness(min(shape[-2:])) * (1 + 2e-6))


def test_gram_bound_reaches_its_worst_case_on_a_flat_spectrum() -> None:
    """All singular values equal: the bound exceeds the norm by exactly r^(1/2^(t+1))."""
    bound = gram_spectral_norm(torch.eye(64, dtype=DT)).item()
    assert bound == pytest.approx(gram_looseness(64, GRAM_ITERATIONS), rel=2e-6)
    assert bound <= 1.0011


def test_gram_bound_gradient_matches_the_norm_gradient() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 5, dtype=DT, requires_grad=True)
    (g_bound,) = torch.autograd.grad(gram_spectral_norm(w), w)
    (g_exact,) = torch.autograd.grad(torch.linalg.matrix_norm(w, ord=2), w)
    torch.testing.assert_close(g_bound, g_exact, rtol=1e-4, atol=1e-8)


def test_power_iteration_result_is_a_fixed_point() -> None:
    """Run again on its own result, the iteration returns it unchanged after one step."""
    torch.manual_seed(2)
    a = torch.randn(2, 30, 20, dtype=DT)  # a batch of two maps
    op = lambda v: (a @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    adjoint = lambda u: (a.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    u, v = torch.randn(2, 30, dtype=DT), torch.randn(2, 20, dtype=DT)
    first = power_iteration(op, adjoint, u, v, tol=1e-6, max_iter=10_000)
    assert first.converged and first.steps > 1
    again = power_iteration(op, adjoint, first.u, first.v, tol=1e-6, max_iter=10_000)
    assert again.converged and again.steps == 1
    assert torch.equal(again.u, first.u) and torch.equal(again.v, first.v)
    sigma = (first.u * op(first.v)).sum(-1)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(a, ord=2), rtol=1e-6, atol=0)
