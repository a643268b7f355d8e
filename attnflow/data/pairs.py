"""Paired data for the conditional flows: a condition image for every image of a dataset.

* ``lowres`` -- super-resolution (SRFlow): the low-resolution input is the high-resolution image
  downscaled by ``scale`` with an anti-aliased bicubic kernel (:func:`bicubic_downscale`, PIL's
  and close to MATLAB's ``imresize``, which SRFlow uses), made when the data is loaded and
  requantized to the image's levels, like an LR file a user would have.
* ``labelmap`` -- a label-to-image toy from local data: each image's coarse label map
  (:func:`coarse_label_map`: block averages quantised into background / faint / ink classes),
  to be translated back into the image.
* ``paired`` -- the dataset's own source images, from folders matched by file name
  (:func:`folder_pairs`: ``<split>/source/NAME.png`` with ``<split>/target/NAME.png``, e.g.
  Cityscapes label maps and photos).

:func:`pad_images` pads Fashion-MNIST's 28x28 to 32x32, so 4x gives 8x8 and 8x gives 4x4 inputs.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import ImageDataset
from .dequantize import to_float
from .folder import image_chunks, list_images

__all__ = [
    "CONDITIONS", "attach_condition", "bicubic_downscale", "bicubic_upscale", "coarse_label_map",
    "condition_batch", "folder_pairs", "lowres_images", "pad_images", "pair_chunks", "LABEL_CLASSES",
]

CONDITIONS = ("none", "lowres", "labelmap", "paired")
LABEL_CLASSES = 3  # background, faint, ink


def _check_scale(height: int, width: int, scale: int) -> None:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2 (2, 4 or 8), got {scale!r}")
    if height % scale or width % scale:
        raise ValueError(
            f"scale {scale} does not divide the image size {height}x{width}; "
            f"choose a scale that divides it or pad the images (data.pad)"
        )


def bicubic_downscale(x: Tensor, scale: int) -> Tensor:
    """``[B, C, H, W]`` images in [0, 1] downscaled by an integer ``scale`` with the
    anti-aliased bicubic kernel (``a = -0.5``, support widened by ``scale``), clipped to [0, 1]."""
    _check_scale(x.shape[-2], x.shape[-1], scale)
    size = (x.shape[-2] // scale, x.shape[-1] // scale)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def bicubic_upscale(x: Tensor, scale: int) -> Tensor:
    """Bicubic up-sampling by ``scale`` (the super-resolution baseline), clipped to [0, 1]."""
    size = (x.shape[-2] * scale, x.shape[-1] * scale)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def _levels_to_unit(images: Tensor, levels: int) -> Tensor:
    return images.double() / (levels - 1)


def _unit_to_levels(x: Tensor, levels: int) -> Tensor:
    return torch.round(x * (levels - 1)).clamp(0, levels - 1).to(torch.uint8)


def lowres_images(images: Tensor, levels: int, scale: int) -> Tensor:
    """uint8 low-resolution versions of uint8 ``images`` with ``levels`` levels."""
    return _unit_to_levels(bicubic_downscale(_levels_to_unit(images, levels), scale), levels)


def coarse_label_map(images: Tensor, levels: int, block: int = 2) -> Tensor:
    """uint8 ``[N, 1, H, W]`` label maps with classes 0 (background), 1 (faint), 2 (ink): the
    channel-mean intensity averaged over ``block x block`` blocks, cut at 1/4 and 1/2, repeated
    back to full size."""
    _check_scale(images.shape[-2], images.shape[-1], block)
    x = _levels_to_unit(images, levels).mean(1, keepdim=True)
    coarse = F.avg_pool2d(x, block)
    labels = (coarse > 0.25).to(torch.uint8) + (coarse > 0.5).to(torch.uint8)
    return labels.repeat_interleave(block, 2).repeat_interleave(block, 3)


def pad_images(images: Tensor, size: int) -> Tensor:
    """Zero-pad ``[N, C, H, W]`` images symmetrically to ``size x size`` (extra pixel at the
    bottom / right)."""
    h, w = images.shape[-2:]
    if size < h or size < w:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}; data.pad must be at least {max(h, w)}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def folder_pairs(directory: Path) -> tuple[list[Path], list[Path]]:
    """The files of ``directory/source/*`` and ``directory/target/*`` matched by file name without
    suffix, in name order; every name must appear on both sides."""
    src_dir, tgt_dir = directory / "source", directory / "target"
    for d in (src_dir, tgt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"expected {d} with images "
                                    f"(paired folders: {directory}/source and {directory}/target)")
    src = {p.stem: p for p in list_images(src_dir)}
    tgt = {p.stem: p for p in list_images(tgt_dir)}
    unmatched = sorted(set(src) ^ set(tgt))
    if unmatched:
        raise ValueError(
            f"{directory}: {len(unmatched)} file name(s) appear on one side only, e.g. {unmatched[:3]}; "
            "every source/NAME needs a target/NAME"
        )
    if not src:
        raise FileNotFoundError(f"no images in {src_dir} and {tgt_dir}")
    names = sorted(src)
    return [src[n] for n in names], [tgt[n] for n in names]


def pair_chunks(directory: Path, sources: list[Path], targets: list[Path]) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 ``(sources, targets)`` blocks of the paired files (:func:`folder_pairs`); the two
    images of a pair must have the same height and width."""
    for src, tgt in zip(image_chunks(sources), image_chunks(targets)):
        if src.shape[-2:] != tgt.shape[-2:]:
            raise ValueError(
                f"{directory}: source images are {src.shape[-1]}x{src.shape[-2]} but target images are "
                f"{tgt.shape[-1]}x{tgt.shape[-2]}; a pair must have the same size (resize one side)"
            )
        yield torch.from_numpy(src), torch.from_numpy(tgt)


def attach_condition(dataset: ImageDataset, condition: str, scale: int = 2) -> ImageDataset:
    """``dataset`` with the ``condition`` images of :data:`CONDITIONS` attached (``"none"``
    drops any); ``"paired"`` needs a dataset that brings its own sources (``folder-pairs``)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown data.condition {condition!r}; valid: {', '.join(CONDITIONS)}")
    if condition == "paired" and dataset.conditions is None:
        raise ValueError(
            f"data.condition='paired' needs a dataset with source images (data.name='folder-pairs'), "
            f"not {dataset.name!r}"
        )
    conditions, levels = dataset.conditions, dataset.condition_levels
    if condition == "none":
        conditions, levels = None, None
    elif condition == "lowres":
        conditions, levels = lowres_images(dataset.images, dataset.levels, scale), dataset.levels
    elif condition == "labelmap":
        conditions, levels = coarse_label_map(dataset.images, dataset.levels), LABEL_CLASSES
    return ImageDataset(
        dataset.images, dataset.labels, dataset.levels, dataset.name, dataset.split, dataset.num_classes,
        conditions, levels,
    )


def condition_batch(dataset: ImageDataset, index: Tensor | slice | None = None) -> Tensor | None:
    """The conditions of rows ``index`` (all rows when ``None``) as floats in [0, 1] (bin centres
    ``(k + 0.5) / levels``, as a user's condition image is read), or ``None`` for an
    unconditional dataset."""
    if dataset.conditions is None:
        return None
    rows = dataset.conditions if index is None else dataset.conditions[index]
    assert dataset.condition_levels is not None  # given with the conditions (ImageDataset checks)
    return to_float(rows, dataset.condition_levels)
