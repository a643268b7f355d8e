"""Operator-norm tools: certified Gram bounds of matrices and of convolutions."""
from __future__ import annotations

import pytest
import torch

from attnflow.nets.operator_norm import (
    GRAM_ITERATIONS,
    circulant_grid,
    circulant_norm_bound,
    gram_looseness,
    gram_spectral_norm,
    kernel_spectrum,
)
from attnflow.testing import exact_circulant_norm

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


def explicit_conv_norm(weight: torch.Tensor, size: tuple[int, int], padding: int) -> float:
    """The exact operator norm of the zero-padded convolution, by SVD of its explicit matrix."""
    c_in = weight.shape[1]
    d_in = c_in * size[0] * size[1]
    basis = torch.eye(d_in, dtype=DT).reshape(d_in, c_in, *size)
    matrix = torch.nn.functional.conv2d(basis, weight.double(), padding=padding).reshape(d_in, -1)
    return torch.linalg.matrix_norm(matrix, ord=2).item()


@pytest.mark.parametrize("c_out,c_in,k,size",
                         [(6, 1, 3, (7, 7)), (5, 4, 3, (6, 9)), (3, 3, 5, (8, 8)), (4, 2, 1, (5, 5))])
def test_circulant_bound_is_above_the_zero_padded_norm(c_out: int, c_in: int, k: int, size: tuple[int, int]) -> None:
    torch.manual_seed(4)
    for trial in range(3):
        weight = torch.randn(c_out, c_in, k, k, dtype=DT) * 10.0**trial
        exact = explicit_conv_norm(weight, size, k // 2)
        circulant = exact_circulant_norm(weight, size, (k // 2, k // 2))
        bound = circulant_norm_bound(weight, size, (k // 2, k // 2)).item()
        assert exact <= circulant * (1 + 1e-12)
        assert circulant <= bound <= circulant * gram_looseness(2 * min(c_in, c_out)) * (1 + 2e-6)


def test_circulant_bound_on_its_own_grid_is_the_circular_norm() -> None:
    """On the grid M the circulant embedding is the circular convolution itself: the per-frequency
    norms are its exact norm (checked against the explicit circular-convolution matrix)."""
    torch.manual_seed(5)
    weight = torch.randn(3, 2, 3, 3, dtype=DT)
    grid = circulant_grid((6, 6), (3, 3), (1, 1))
    d_in = 2 * grid[0] * grid[1]
    basis = torch.eye(d_in, dtype=DT).reshape(d_in, 2, *grid)
    circular = torch.nn.functional.conv2d(torch.nn.functional.pad(basis, (1, 1, 1, 1), mode="circular"), weight)
    exact = torch.linalg.matrix_norm(circular.reshape(d_in, -1), ord=2)
    spectrum = torch.linalg.matrix_norm(kernel_spectrum(weight, grid), ord=2).max()
    torch.testing.assert_close(spectrum, exact, rtol=1e-10, atol=0)


def test_circulant_bound_gradient_matches_the_norm_gradient() -> None:
    torch.manual_seed(6)
    weight = torch.randn(8, 2, 3, 3, dtype=DT, requires_grad=True)
    (g_bound,) = torch.autograd.grad(circulant_norm_bound(weight, (12, 12), (1, 1)), weight)
    grid = circulant_grid((12, 12), (3, 3), (1, 1))
    exact = torch.linalg.matrix_norm(kernel_spectrum(weight, grid), ord=2).max()
    (g_exact,) = torch.autograd.grad(exact, weight)
    torch.testing.assert_close(g_bound, g_exact, rtol=1e-3, atol=1e-6)


def test_dft_tables_built_under_inference_mode_serve_later_training() -> None:
    """The cached DFT tables outlive an ``inference_mode`` evaluation that built them."""
    from attnflow.nets.lipschitz_layers import SpectralNormConv2d
    from attnflow.nets.operator_norm import _dft_tables

    _dft_tables.cache_clear()
    layer = SpectralNormConv2d(4, 4, 3, 1, input_size=(12, 12))
    with torch.inference_mode():
        layer(torch.randn(1, 4, 12, 12))
    other = SpectralNormConv2d(4, 4, 3, 1, input_size=(12, 12))
    other(torch.randn(1, 4, 12, 12)).sum().backward()
    assert other.weight.grad is not None
