"""The dataset every reader returns (in memory, or mapped from the cache of
:mod:`attnflow.data.cache`), and grey-level reduction (``n_bits``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ImageDataset", "reduce_bits", "concatenate", "rows_of", "first_images", "check_joinable"]


@dataclass
class ImageDataset:
    """Integer images with ``levels`` grey levels per channel, and optional class labels.

    ``images``: uint8 ``[N, C, H, W]`` with values in ``0 .. levels-1``;
    ``labels``: int64 ``[N]`` or ``None``; ``num_classes`` is inferred as ``labels.max() + 1``
    when a reader does not know it.
    ``conditions``: for conditional models (super-resolution, translation), uint8
    ``[N, C', H', W']`` condition images paired row by row with ``images`` (a low-resolution
    version, a label map), with ``condition_levels`` levels; see :mod:`attnflow.data.pairs`.
    ``values_checked``: the pixel and condition values were checked against the levels when the
    arrays were written (:mod:`attnflow.data.cache`), so they are not scanned again (a scan would
    read every page of a memory-mapped dataset). With 256 levels there is nothing to scan: every
    uint8 value is below 256.
    ``files``: for arrays mapped from the cache, ``{"images" | "conditions": (path, offset)}``, the
    ``.npy`` file and the byte offset of row 0, so that training batches read their rows with
    ``pread`` (:func:`attnflow.data.batches.gather`) instead of through the map, whose pages would
    count in the process's resident memory.
    """

    images: Tensor
    labels: Tensor | None
    levels: int
    name: str
    split: str
    num_classes: int | None = None
    conditions: Tensor | None = None
    condition_levels: int | None = None
    values_checked: bool = field(default=False, repr=False, compare=False)
    files: dict[str, tuple[Path, int]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r} split {self.split!r}"
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"{where}: images must be a uint8 tensor [N, C, H, W], "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if not 2 <= self.levels <= 256:
            raise ValueError(f"{where}: levels must be in 2..256 for uint8 storage, got {self.levels}")
        if self._scan(self.levels) and int(self.images.max()) >= self.levels:
            raise ValueError(
                f"{where}: pixel value {int(self.images.max())} is not below levels={self.levels}"
            )
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
                raise ValueError(
                    f"{where}: labels must be int64 of shape [{len(self.images)}], "
                    f"got {self.labels.dtype} of shape {tuple(self.labels.shape)}"
                )
            if self.labels.numel() and int(self.labels.min()) < 0:
                raise ValueError(f"{where}: labels must be >= 0, got {int(self.labels.min())}")
            if self.num_classes is None and self.labels.numel():
                self.num_classes = int(self.labels.max()) + 1
        elif self.num_classes is not None:
            raise ValueError(f"{where}: num_classes={self.num_classes} given without labels")
        if (self.conditions is None) != (self.condition_levels is None):
            raise ValueError(f"{where}: conditions and condition_levels go together; give both or neither")
        if self.conditions is not None and self.condition_levels is not None:  # both or neither (above)
            c = self.conditions
            if c.dtype != torch.uint8 or c.dim() != 4 or len(c) != len(self.images):
                raise ValueError(
                    f"{where}: conditions must be a uint8 tensor [{len(self.images)}, C, H, W] (one per image), "
                    f"got {c.dtype} of shape {tuple(c.shape)}"
                )
            if self._scan(self.condition_levels) and int(c.max()) >= self.condition_levels:
                raise ValueError(
                    f"{where}: condition value {int(c.max())} is not below condition_levels={self.condition_levels}"
                )

    def _scan(self, levels: int) -> bool:
        """Whether the values must be scanned for one at or above ``levels``."""
        return levels < 256 and not self.values_checked and self.images.numel() > 0

    @property
    def condition_shape(self) -> tuple[int, int, int] | None:
        """``(C', H', W')`` of one condition image, or ``None`` for an unconditional dataset."""
        if self.conditions is None:
            return None
        c, h, w = self.conditions.shape[1:]
        return (c, h, w)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)


def reduce_bits(dataset: ImageDataset, n_bits: int) -> ImageDataset:
    """Requantize to ``2**n_bits`` levels: ``k' = floor(k * 2**n_bits / levels)``.

    For 256-level data this is exactly the ``k >> (8 - n_bits)`` of Glow's 5-bit CelebA and
    ImageNet experiments (Kingma & Dhariwal, 2018); the same formula maps other level counts
    (e.g. the 17 levels of the sklearn digits) onto equal-width bins.
    """
    new_levels = 2**n_bits if isinstance(n_bits, int) and n_bits >= 1 else 0
    if not 2 <= new_levels <= dataset.levels:
        raise ValueError(
            f"n_bits={n_bits!r} is invalid for dataset {dataset.name!r} with {dataset.levels} levels: "
            f"need an integer n_bits >= 1 with 2**n_bits <= {dataset.levels}"
        )
    k = dataset.images.to(torch.int64)
    images = torch.div(k * new_levels, dataset.levels, rounding_mode="floor").to(torch.uint8)
    return ImageDataset(
        images, dataset.labels, new_levels, dataset.name, dataset.split, dataset.num_classes,
        dataset.conditions, dataset.condition_levels,
    )


def rows_of(dataset: ImageDataset, index: slice) -> ImageDataset:
    """The rows ``index`` of ``dataset`` (with their labels and conditions) as views: nothing is
    copied, and rows of a memory-mapped dataset are not read."""
    def part(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[index]

    rows = range(len(dataset))[index]
    files = None
    if dataset.files is not None and rows.step == 1:
        tensors = {"images": dataset.images, "conditions": dataset.conditions}
        files = {}
        for k, (path, offset) in dataset.files.items():
            tensor = tensors[k]
            assert tensor is not None  # a file backs a tensor the dataset has
            files[k] = (path, offset + rows.start * tensor[:1].numel() * tensor.element_size())
    return ImageDataset(dataset.images[index], part(dataset.labels), dataset.levels, dataset.name, dataset.split,
                        dataset.num_classes, part(dataset.conditions), dataset.condition_levels,
                        dataset.values_checked, files)


def first_images(dataset: ImageDataset, n: int) -> ImageDataset:
    """The first ``n`` images of ``dataset`` (with their labels and conditions); ``n`` larger than
    the dataset is an error that names its size."""
    if not 1 <= n <= len(dataset):
        raise ValueError(f"asked for the first {n} images of {dataset.name!r} split {dataset.split!r}, which has "
                         f"{len(dataset)}; use a number from 1 to {len(dataset)}")
    return rows_of(dataset, slice(0, n))


def check_joinable(first: ImageDataset, second: ImageDataset) -> None:
    """A one-line ``ValueError`` unless the rows of ``second`` can follow those of ``first`` in one
    dataset: the same image shape, levels, and kinds of labels and conditions."""
    def _same(what: str, a: object, b: object) -> None:
        if a != b:
            raise ValueError(f"cannot join {first.split!r} and {second.split!r} of {first.name!r}: {what} {a} vs {b}")

    _same("image shape", first.shape, second.shape)
    _same("levels", first.levels, second.levels)
    _same("labels", first.labels is None, second.labels is None)
    _same("conditions", first.condition_shape, second.condition_shape)


def concatenate(first: ImageDataset, second: ImageDataset) -> ImageDataset:
    """The images (labels, conditions) of ``first`` followed by those of ``second``, e.g. the
    train and test splits AttnFlow trains its Tables 2 and 3 models on (:func:`check_joinable`)."""
    check_joinable(first, second)

    def join(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        return None if a is None or b is None else torch.cat([a, b])  # both or neither (check_joinable)

    classes = None if first.labels is None else max(first.num_classes or 0, second.num_classes or 0)
    return ImageDataset(
        torch.cat([first.images, second.images]), join(first.labels, second.labels), first.levels, first.name,
        f"{first.split}+{second.split}", classes, join(first.conditions, second.conditions), first.condition_levels,
    )
