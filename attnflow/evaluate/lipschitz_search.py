"""Empirical lower estimates of a residual branch's Lipschitz constant, to measure how tight its
certificate is.

``Lip(g) = sup_x ||J_g(x)||_2``, so the spectral norm of the Jacobian at any point is a lower
bound. :func:`search_jacobian_norm` looks for large ones, in float64, with the branch's explicit
Jacobian products (:func:`attnflow.nets.residual_branches.linearize`):

1. at the block's real inputs (the activations that reach it from test images), and at as many
   random points with the same per-channel mean and spread;
2. ``ascent_steps`` of normalised gradient ascent on ``||J(x) v||`` (``v`` the current top right
   singular vector, refreshed by a few power steps) from every point.

Every reported value is ``||J(x) v||`` for a unit ``v``, itself at most ``||J(x)||``: the result
never exceeds the true Lipschitz constant, so ``certificate / estimate >= 1`` measures the
certificate's looseness from above.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..nets.residual_branches import linearize

__all__ = ["search_jacobian_norm"]


def _unit(v: Tensor) -> Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *([1] * (v.dim() - 1)))


def _power(branch: nn.Module, x: Tensor, v: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` power steps on ``J^T J`` at each point: the unit ``v`` and ``||J v||`` per point."""
    with torch.no_grad():
        lin = linearize(branch, x)
        for _ in range(steps):
            v = _unit(lin.vjp(lin.jvp(v)))
        return v, lin.jvp(v).flatten(1).norm(dim=1)


def search_jacobian_norm(
    branch: nn.Module,
    inputs: Tensor,
    power_steps: int = 30,
    ascent_steps: int = 20,
    step_size: float = 0.05,
    seed: int = 0,
) -> float:
    """The largest ``||J_g(x) v||`` found (module docstring) from the branch's real ``inputs``
    ``[N, C, H, W]`` and ``N`` random points like them."""
    branch = copy.deepcopy(branch).double().eval()
    gen = torch.Generator().manual_seed(seed)
    real = inputs.detach().double()
    mean = real.mean(dim=(0, 2, 3), keepdim=True)
    spread = real.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    noise = torch.randn(real.shape, generator=gen, dtype=torch.float64)
    x = torch.cat([real, mean + spread * noise])
    v = _unit(torch.randn(x.shape, generator=gen, dtype=torch.float64))
    v, sigma = _power(branch, x, v, power_steps)
    best = float(sigma.max())
    scale = x.flatten(1).norm(dim=1).view(-1, 1, 1, 1) / x[0].numel() ** 0.5  # per-point RMS size
    for _ in range(ascent_steps):
        x = x.detach().requires_grad_(True)
        gain = linearize(branch, x).jvp(v).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(gain.sum(), x)
        x = x.detach() + step_size * scale * _unit(grad) * x[0].numel() ** 0.5
        v, sigma = _power(branch, x, v, 5)
        best = max(best, float(sigma.max()))
    return best
