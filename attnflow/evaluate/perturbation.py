"""Noise-perturbation analysis (ACF, Sec. 5): how a flow scores and reconstructs test images
perturbed by additive white Gaussian noise.

For each noise standard deviation ``noise_std`` (ACF's own sigma is the variance, see
:mod:`attnflow.experiments.perturbation`): ``x_noisy = clip(x + noise_std * eps, 0, 1)``,
``eps ~ N(0, I)``; report the bits/dim of ``x_noisy`` under the model, and the reconstruction
``decode(encode(x_noisy))`` with its largest error against ``x_noisy``. A model that is not
invertible (ACF's plain dot-product attention) shows it here, in two ways reported apart: its
fixed-point inverse does not converge
(``inverse: "did not converge"``), or it converges to another preimage, so that images come back
off by more than ``tolerance`` (``inverse: "inverse wrong"``, ``wrong_images`` counts them); its
bits/dim can behave erratically too.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import Flow
from .likelihood import bits_per_dim
from .reconstruction import DEFAULT_TOLERANCE, reconstruct

__all__ = ["noise_perturbation"]


@torch.no_grad()
def noise_perturbation(
    flow: Flow,
    x: Tensor,
    levels: int,
    noise_stds: Sequence[float],
    generator: torch.Generator | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[list[dict[str, Any]], Tensor]:
    """Returns one row per noise standard deviation of ``noise_stds`` (``noise_std``,
    ``bpd``, ``bpd_stderr``, ``max_reconstruction_error``, ``inverse`` in {"ok", "inverse wrong",
    "did not converge"}, ``inverse_converged``, ``wrong_images``) and the images
    ``[len(noise_stds), 2, B, C, H, W]`` (perturbed inputs and their reconstructions; a
    reconstruction that failed to converge is shown as zeros)."""
    if any(s < 0 for s in noise_stds):
        raise ValueError(f"noise standard deviations must be >= 0, got {list(noise_stds)}")
    rows, images = [], []
    draw_device = generator.device if generator is not None else x.device
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=draw_device).to(x.device)
    for noise_std in noise_stds:
        x_noisy = (x + noise_std * eps).clamp(0, 1)
        bpd = bits_per_dim(flow, x_noisy, levels)
        rec = reconstruct(flow, x_noisy)
        rows.append({
            "noise_std": float(noise_std),
            "bpd": float(bpd.mean()),
            "bpd_stderr": float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else 0.0,
            "max_reconstruction_error": float(rec.errors.max()),
            "inverse": rec.status(tolerance),
            "inverse_converged": rec.converged,
            "wrong_images": len(rec.wrong(tolerance)),
        })
        images.append(torch.stack([x_noisy, rec.images.clamp(0, 1)]))
    return rows, torch.stack(images)
