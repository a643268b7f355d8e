"""Numerical checks for bijections and Lipschitz bounds.

Used by the test-suite and useful to anyone writing a new layer: a layer is correct when
:func:`check_bijection` passes on tiny float64 inputs and every ``lipschitz_bound()`` is at least
:func:`empirical_lipschitz`; :func:`exact_conv_norm` is the exact operator norm of a zero-padded
convolution, independent of the library's bounds, to check them against.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .core import Bijection

__all__ = [
    "brute_force_logdet",
    "check_bijection",
    "empirical_lipschitz",
    "exact_circulant_norm",
    "exact_conv_norm",
    "input_gram",
    "jacobian_spectral_norm",
]


def brute_force_logdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``log|det d fn(x_b) / d x_b|`` for each sample ``b`` by the full autograd Jacobian.

    ``fn`` maps a batch ``[B, ...]`` to a batch with the same number of elements per sample;
    samples are processed one at a time so ``fn`` may mix nothing across the batch.
    """
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), xb)
        jac = jac.reshape(jac.shape[0], -1)
        if jac.shape[0] != jac.shape[1]:
            raise ValueError(f"Jacobian is not square ({tuple(jac.shape)}): not a bijection")
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_bijection(
    layer: Bijection,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """Assert that ``layer`` inverts exactly and that its log-det equals the brute-force one.

    Call it with float64 ``x`` and a float64 layer (``layer.double()``) on tiny inputs.
    """
    z, logdet = layer(x, context)
    assert logdet.shape == (x.shape[0],), f"logdet must have shape [B], got {tuple(logdet.shape)}"
    x_rec = layer.inverse(z, context)
    torch.testing.assert_close(x_rec, x, atol=atol * 100, rtol=rtol * 100, msg="inverse(forward(x)) != x")
    def sample_map(b: int) -> Callable[[Tensor], Tensor]:  # the flow of sample b, with its own context
        return lambda v: layer(v, None if context is None else context[b : b + 1])[0]

    expected = torch.stack([brute_force_logdet(sample_map(b), x[b : b + 1])[0] for b in range(x.shape[0])])
    torch.testing.assert_close(logdet, expected, atol=atol * 1e3, rtol=rtol * 10, msg="log-det != brute force")


def jacobian_spectral_norm(g: Callable[[Tensor], Tensor], x: Tensor, iters: int = 50) -> float:
    """Largest singular value of ``d g / d x`` at the single point ``x`` (``[1, ...]``), by power
    iteration on ``J^T J`` with Jacobian-vector products."""
    v = torch.randn_like(x)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        _, jv = torch.autograd.functional.jvp(g, x, v)
        _, jtjv = torch.autograd.functional.vjp(g, x, jv)
        sigma = jv.norm().item()
        v = jtjv / (jtjv.norm() + 1e-30)
    return sigma


def empirical_lipschitz(
    g: Callable[[Tensor], Tensor],
    shape: tuple[int, ...],
    points: int = 8,
    ascent_steps: int = 100,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> float:
    """A lower bound of Lip(g) on ``R^shape`` (per-sample shape, no batch dimension).

    The maximum of (a) the Jacobian spectral norm at ``points`` random points and (b) the ratio
    ``|g(x) - g(y)| / |x - y|`` after ``ascent_steps`` of gradient ascent on it from random pairs.
    Any certified bound must be at least this number.
    """
    best = 0.0
    for _ in range(points):
        x = torch.randn((1, *shape), dtype=dtype, generator=generator)
        best = max(best, jacobian_spectral_norm(g, x))
    x = torch.randn((points, *shape), dtype=dtype, generator=generator).requires_grad_(True)
    y = (x.detach() + 0.1 * torch.randn(x.shape, dtype=dtype, generator=generator)).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05)
    for _ in range(ascent_steps):
        ratio = (g(x) - g(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1).clamp_min(1e-12)
        best = max(best, ratio.max().item())
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def input_gram(weight: Tensor, size: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """``A^T A`` of the zero-padded convolution ``A`` on ``C_in x H x W`` inputs, assembled from the
    kernel: ``(A x)_p = W [C_out, C_in k] @ patch_p(x)``, so ``A^T A = sum_p P_p^T (W^T W) P_p``
    with ``P_p`` the 0/1 selection of the patch at output position ``p`` (scatter-added)."""
    c_out, c_in, kh, kw = weight.shape
    d = c_in * size[0] * size[1]
    index = torch.arange(1, d + 1, dtype=torch.float64).reshape(1, c_in, *size)  # 0 marks the zero padding
    patches = F.unfold(index, (kh, kw), padding=padding)[0].long() - 1  # [C_in k, positions]
    m = weight.reshape(c_out, -1).T @ weight.reshape(c_out, -1)  # [C_in k, C_in k]
    rows, cols = patches[:, None, :].expand(-1, len(m), -1), patches[None, :, :].expand(len(m), -1, -1)
    valid = (rows >= 0) & (cols >= 0)
    values = m[:, :, None].expand_as(rows)
    gram = torch.zeros(d, d, dtype=torch.float64)
    gram.index_put_((rows[valid], cols[valid]), values[valid], accumulate=True)
    return gram


def exact_conv_norm(weight: Tensor, size: tuple[int, int], padding: tuple[int, int]) -> float:
    """The operator norm of the zero-padded convolution on ``size`` inputs: the square root of the
    largest eigenvalue of its Gram matrix on the smaller side (float64). The output side's Gram
    ``A A^T`` is the input Gram of the adjoint, the convolution with the flipped, transposed
    kernel and padding ``k - 1 - p`` on the output grid."""
    weight = weight.detach().double()
    c_out, c_in, kh, kw = weight.shape
    if (kh, kw) == (1, 1) and tuple(padding) == (0, 0):  # the same block at every position
        return float(torch.linalg.matrix_norm(weight.reshape(c_out, c_in), ord=2))
    if c_in <= c_out:
        gram = input_gram(weight, size, padding)
    else:
        out_size = (size[0] + 2 * padding[0] - kh + 1, size[1] + 2 * padding[1] - kw + 1)
        gram = input_gram(weight.transpose(0, 1).flip(2, 3), out_size, (kh - 1 - padding[0], kw - 1 - padding[1]))
    if len(gram) > 8192:
        raise ValueError(f"the smaller side has {len(gram)} dimensions: too large for an exact eigen-decomposition")
    return float(torch.linalg.eigvalsh(gram).max().clamp_min(0).sqrt())


def exact_circulant_norm(weight: Tensor, size: tuple[int, int], padding: tuple[int, int]) -> float:
    """The exact norm of the circulant embedding of a zero-padded convolution on ``size`` inputs
    (the grid of :func:`attnflow.nets.operator_norm.circulant_grid`): the largest per-frequency
    block norm, by SVD in float64 -- what :func:`~attnflow.nets.operator_norm.circulant_norm_bound`
    bounds with Gram iterations."""
    from .nets.operator_norm import circulant_grid, kernel_spectrum

    grid = circulant_grid(size, (weight.shape[-2], weight.shape[-1]), padding)
    return float(torch.linalg.matrix_norm(kernel_spectrum(weight.detach(), grid), ord=2).max())
