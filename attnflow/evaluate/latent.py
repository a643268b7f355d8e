"""Latent-space experiments: interpolation between images."""
from __future__ import annotations

import torch
from torch import Tensor

from ..core import Flow

__all__ = ["interpolate"]


@torch.no_grad()
def interpolate(flow: Flow, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
    """Decode ``z(t) = (1 - t) z_a + t z_b`` for ``t`` in ``steps`` even points of [0, 1], with
    ``z = flow.encode(x)``; returns ``[B, steps, C, H, W]`` (row ``b`` goes from ``x_a[b]`` to
    ``x_b[b]``)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the two end points), got {steps}")
    if x_a.shape != x_b.shape:
        raise ValueError(f"the two image batches differ in shape: {list(x_a.shape)} vs {list(x_b.shape)}")
    z_a, z_b = flow.encode(x_a), flow.encode(x_b)
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device).view(1, steps, 1)
    z = (1 - t) * z_a[:, None] + t * z_b[:, None]
    x = flow.decode(z.reshape(-1, z.shape[-1]))
    return x.reshape(x_a.shape[0], steps, *x_a.shape[1:])
