"""Downsampled ImageNet ``.npz`` files (Chrabaszcz, Loshchilov & Hutter, 2017).

Each file holds ``data``: uint8 ``[N, 3*S*S]`` (red, green, blue planes, row-major) or
``[N, S, S, 3]``, and ``labels``: class indices 1..1000 (returned 0-based). Training data is split
over ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz``; the validation set is
``val_data.npz``. Loaded with ``allow_pickle=False``, so no code runs. The labels and the
header of ``data`` are read and checked first (:func:`npz_layout`), then the pixels stream in
blocks of rows (:func:`npz_blocks`), so a 1.2 GB ImageNet64 file is never in memory whole.
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np

__all__ = ["imagenet_files", "npz_layout", "npz_blocks", "IMAGENET_CLASSES"]

IMAGENET_CLASSES = 1000


def imagenet_files(root: Path, split: str) -> list[Path]:
    """The npz files of ``split`` under directory ``root``, or ``[root]`` when it is a file."""
    if root.is_file():
        return [root]
    if split == "train":
        def batch_number(p: Path) -> int:
            match = re.search(r"(\d+)\.npz$", p.name)
            assert match is not None  # the glob below ends in a digit and .npz
            return int(match.group(1))

        files = sorted(root.glob("train_data_batch_*[0-9].npz"), key=batch_number)
        expected = "train_data_batch_1.npz .. train_data_batch_10.npz"
    else:
        files = [root / "val_data.npz"] if (root / "val_data.npz").is_file() else []
        expected = "val_data.npz"
    if not files:
        raise FileNotFoundError(
            f"expected downsampled-ImageNet file(s) {expected} in {root} "
            f"(or pass the path of a single .npz file as root)"
        )
    return files


BLOCK_BYTES = 16 * 2**20  # pixels read at a time
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                   (3, 0): np.lib.format.read_array_header_2_0}  # 3.0: 2.0 with a UTF-8 header


def _member(archive: zipfile.ZipFile, key: str) -> tuple[zipfile.ZipExtFile, tuple[int, ...], bool, np.dtype]:
    """The open ``key.npy`` member of an npz archive, past its header, with its shape, Fortran
    order and dtype."""
    f = cast(zipfile.ZipExtFile, archive.open(f"{key}.npy"))  # what ZipFile.open returns for reading
    shape, fortran, dtype = _HEADER_READERS[np.lib.format.read_magic(f)](f)
    return f, shape, fortran, dtype


def npz_layout(path: Path, size: int) -> tuple[int, np.ndarray]:
    """The image count of one npz file and its labels (int64, 0-based), after checking the file's
    keys, the dtype and shape of ``data`` and the labels; its pixels are not read."""
    try:
        with zipfile.ZipFile(path) as archive:
            keys = sorted(name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy"))
            if "data" not in keys or "labels" not in keys:
                raise KeyError(keys)
            with archive.open("labels.npy") as f:
                labels = np.lib.format.read_array(f, allow_pickle=False)
            data, shape, fortran, dtype = _member(archive, "data")
            data.close()
    except KeyError:
        raise ValueError(f"{path}: expected npz keys 'data' and 'labels', found {keys}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz file without pickled objects ({err})") from err
    n = shape[0] if shape else 0
    if dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 'data', got {dtype}")
    if shape not in ((n, 3 * size * size), (n, size, size, 3)) or fortran:
        raise ValueError(
            f"{path}: expected 'data' of shape [N, {3 * size * size}] or [N, {size}, {size}, 3] in C order, "
            f"got {tuple(shape)}{' in Fortran order' if fortran else ''}"
        )
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: expected integer 'labels' of shape [{n}], got {labels.dtype} {tuple(labels.shape)}"
        )
    if n and (labels.min() < 1 or labels.max() > IMAGENET_CLASSES):
        raise ValueError(
            f"{path}: expected 1-based labels in 1..{IMAGENET_CLASSES}, "
            f"got range {labels.min()}..{labels.max()}"
        )
    return n, labels.astype(np.int64) - 1


def npz_blocks(path: Path, size: int, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """The images of one npz file (checked by :func:`npz_layout`), uint8 ``[n, 3, size, size]``
    blocks of rows in order."""
    row = 3 * size * size
    with zipfile.ZipFile(path) as archive:
        f, shape, _, _ = _member(archive, "data")
        with f:
            for start in range(0, shape[0], max(1, block_bytes // row)):
                rows = min(max(1, block_bytes // row), shape[0] - start)
                data = np.empty(rows * row, dtype=np.uint8)
                got = f.readinto(data.data)
                if got != data.size:
                    raise ValueError(f"{path}: 'data' ends after {start * row + got} of {shape[0] * row} bytes")
                if len(shape) == 2:
                    yield data.reshape(rows, 3, size, size)
                else:
                    yield np.ascontiguousarray(data.reshape(rows, size, size, 3).transpose(0, 3, 1, 2))
