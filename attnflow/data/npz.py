"""Downsampled ImageNet ``.npz`` files (Chrabaszcz, Loshchilov & Hutter, 2017).

Each file holds ``data``: uint8 ``[N, 3*S*S]`` (red, green, blue planes, row-major) or
``[N, S, S, 3]``, and ``labels``: class indices 1..1000 (returned 0-based). Training data is split
over ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz``; the validation set is
``val_data.npz``. Loaded with ``allow_pickle=False``, so no code runs.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["imagenet_files", "npz_rows", "read_imagenet_npz", "IMAGENET_CLASSES"]

IMAGENET_CLASSES = 1000


def imagenet_files(root: Path, split: str) -> list[Path]:
    """The npz files of ``split`` under directory ``root``, or ``[root]`` when it is a file."""
    if root.is_file():
        return [root]
    if split == "train":
        def batch_number(p: Path) -> int:
            return int(re.search(r"(\d+)\.npz$", p.name).group(1))

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


def read_imagenet_npz(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One npz file: images uint8 ``[N, 3, size, size]``, labels int64 0-based ``[N]``."""
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"holds a single {type(npz).__name__}, not an npz archive")
        with npz:
            keys = sorted(npz.files)
            arrays = {key: npz[key] for key in ("data", "labels") if key in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz file without pickled objects ({err})") from err
    if len(arrays) != 2:
        raise ValueError(f"{path}: expected npz keys 'data' and 'labels', found {keys}")
    data, labels = arrays["data"], arrays["labels"]
    n = len(data)
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 'data', got {data.dtype}")
    if data.shape == (n, 3 * size * size):
        data = data.reshape(n, 3, size, size)
    elif data.shape == (n, size, size, 3):
        data = data.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"{path}: expected 'data' of shape [N, {3 * size * size}] or [N, {size}, {size}, 3], "
            f"got {tuple(data.shape)}"
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
    return data, labels.astype(np.int64) - 1


def npz_rows(path: Path, size: int) -> int:
    """The image count of one npz file from the header of its ``data`` array, without decoding the
    pixels (a file whose header cannot be read is decoded, which reports what is wrong with it)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive, archive.open("data.npy") as f:
            shape = readers[np.lib.format.read_magic(f)](f)[0]
        if len(shape) >= 1:
            return int(shape[0])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    return len(read_imagenet_npz(path, size)[0])
