"""What a reader returns: the files a dataset split is decoded from, and a way to decode it in chunks.

A :class:`Source` lists its files when it is made (so a missing file is reported at once, and the
cache of :mod:`attnflow.data.cache` is keyed to their sizes and modification times) but decodes
nothing until :attr:`Source.decode` is called: a run whose cache is valid reads no source image.
Decoding yields :class:`~attnflow.data.dataset.ImageDataset` chunks in row order (a CIFAR batch,
an npz file, a few hundred image files), so no reader needs the whole split in memory.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .dataset import ImageDataset, rows_of

__all__ = ["Source", "Decoded", "join", "bundled", "rechunk"]

#: The image count of a split and its chunks, in order.
Decoded = tuple[int, Iterator[ImageDataset]]


@dataclass(frozen=True)
class Source:
    """One split of a dataset, not yet decoded.

    ``root``: where the data lives (the default cache directory is beside it); ``files``: the files
    the split is decoded from, empty for data bundled with a package (kept in memory, not cached);
    ``decode()``: the image count and the chunks (called once per conversion)."""

    name: str
    split: str
    root: Path | None
    files: tuple[Path, ...]
    decode: Callable[[], Decoded]


def join(first: Source, second: Source) -> Source:
    """The rows of ``first`` followed by those of ``second`` (split ``"train+test"``)."""
    def decode() -> Decoded:
        (n1, chunks1), (n2, chunks2) = first.decode(), second.decode()
        return n1 + n2, itertools.chain(chunks1, chunks2)

    return Source(first.name, f"{first.split}+{second.split}", first.root, first.files + second.files, decode)


def bundled(dataset: ImageDataset) -> Source:
    """A split already in memory (scikit-learn's digits): no files, so never cached."""
    return Source(dataset.name, dataset.split, None, (), lambda: (len(dataset), iter([dataset])))


def rechunk(chunks: Iterator[ImageDataset], max_bytes: int) -> Iterator[ImageDataset]:
    """The same rows in chunks of at most ``max_bytes`` of images (at least one row each), as
    views of the decoded chunks."""
    for chunk in chunks:
        row_bytes = max(1, chunk.images[:1].numel())
        step = max(1, max_bytes // row_bytes)
        for start in range(0, len(chunk), step):
            yield rows_of(chunk, slice(start, start + step))
