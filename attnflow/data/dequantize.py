"""From integer pixels to continuous values in [0, 1).

Uniform dequantization (Theis, van den Oord & Bethge, 2016; used by Glow, Residual Flows, ...):
``x = (k + u) / L`` with ``u ~ U[0, 1)`` for ``L`` levels, so that a density ``p`` on [0, 1)^D gives
the discrete bound ``log P(k) >= E_u[log p(x)] - D log L`` behind the bits/dim figure.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dequantize", "to_float"]


def _check(images: Tensor, levels: int) -> Tensor:
    if images.dtype.is_floating_point or images.dtype.is_complex or images.dtype == torch.bool:
        raise ValueError(f"images must hold integer levels (e.g. uint8), got dtype {images.dtype}")
    if images.numel() and (int(images.min()) < 0 or int(images.max()) >= levels):
        raise ValueError(
            f"image values {int(images.min())}..{int(images.max())} are outside 0..{levels - 1} "
            f"for levels={levels}; pass the dataset's levels"
        )
    return images


def dequantize(
    images: Tensor,
    levels: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    noise: Tensor | None = None,
) -> Tensor:
    """``x = (k + u) / levels``, ``u ~ U[0, 1)`` i.i.d. per pixel, in ``[0, 1)``.

    ``noise`` gives ``u`` (of the images' shape and ``dtype``) instead of drawing it from
    ``generator``: a process of data-parallel training draws the noise of the whole global batch,
    as one process would, and dequantizes only its rows. In floating point
    ``(levels - 1 + u) / levels`` can round up to exactly 1 when ``u`` is within half an ulp of 1;
    such values are clamped to the largest representable number below 1.
    """
    k = _check(images, levels).to(dtype)
    if noise is None:
        u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
    elif noise.shape != k.shape or noise.dtype != dtype:
        raise ValueError(f"noise must be {dtype} of the images' shape {tuple(k.shape)}, "
                         f"got {noise.dtype} {tuple(noise.shape)}")
    else:
        u = noise
    below_one = 1.0 - torch.finfo(dtype).eps / 2
    return ((k + u) / levels).clamp_(max=below_one)


def to_float(images: Tensor, levels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bin centres ``(k + 0.5) / levels``: the deterministic counterpart of :func:`dequantize`."""
    return (_check(images, levels).to(dtype) + 0.5) / levels
