"""Image grids and plots written as PNG files (pillow for images, matplotlib for curves)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..rundir import read_metrics

__all__ = ["image_grid", "save_image_grid", "plot_metrics"]


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 1, scale: int = 1) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in [0, 1] (C = 1 or 3) into one uint8 array ``[h, w(, 3)]``.
    Values are clipped to [0, 1]; a NaN or infinite value is refused (it would show as a black
    pixel); ``scale`` enlarges each pixel (nearest neighbour)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got {list(images.shape)}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    bad = int((~torch.isfinite(images.detach().flatten(1)).all(1)).sum())
    if bad:
        raise ValueError(
            f"{bad} of {n} images hold NaN or infinite values; an image grid needs finite images: "
            "leave those out (attnflow.evaluate.finite_samples does for samples)"
        )
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    arr = images.detach().float().clamp(0, 1).cpu().numpy()
    grid = np.ones((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = arr[k]
    grid = (grid * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(images: Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int | None = None) -> None:
    """Write an image grid PNG; small images are enlarged so the grid is at least ~256 px wide."""
    from PIL import Image

    if scale is None:
        scale = max(1, 256 // (images.shape[-1] * (nrow or math.ceil(math.sqrt(images.shape[0])))))
    Image.fromarray(image_grid(images, nrow=nrow, scale=scale)).save(path)


def plot_metrics(metrics_path: str | os.PathLike, out_path: str | os.PathLike,
                 keys: Sequence[str] = ("bpd", "test_bpd")) -> None:
    """Plot the training curves of a run's metrics file (one line per key present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            steps, values = zip(*pts)
            label = {"bpd": "train bits/dim", "test_bpd": "test bits/dim"}.get(key, key)
            ax.plot(steps, values, label=label, marker="o" if len(pts) < 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
