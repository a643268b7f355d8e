"""CIFAR-10 python batches, unpickled with a restricted unpickler.

The batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) are pickled dicts with
``b"data"``: uint8 ``[N, 3072]`` (red, green, blue planes of 32x32, row-major) and ``b"labels"``.
Unpickling can run arbitrary code, so :class:`SafeUnpickler` resolves only the globals numpy needs
to rebuild an array and refuses every other one.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray, numeric as _numeric  # type: ignore[no-redef]

__all__ = ["SafeUnpickler", "safe_unpickle", "cifar_files", "read_cifar_batch", "CIFAR_FILES"]

CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

# The only globals a pickled array needs. The original (Python 2) CIFAR files name
# numpy.core.multiarray, which numpy 2 moved to numpy._core; ``_codecs.encode`` turns text back
# into bytes in protocol-2 pickles written by Python 3; ``_frombuffer`` rebuilds arrays in protocol 5.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer  # type: ignore[attr-defined]  # private


class SafeUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` allows only numpy's array-reconstruction globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (Python 2 strings decoded as bytes)."""
    with open(path, "rb") as f:
        try:
            return SafeUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from err


def _field(batch: Any, key: str, path: Path) -> Any:
    if isinstance(batch, dict):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
    found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{path}: expected a CIFAR batch dict with key b{key!r}, found {found}")


def cifar_files(directory: Path, split: str) -> tuple[Path, ...]:
    """The batch files of ``split`` in ``directory``; a missing one is a ``FileNotFoundError``."""
    paths = tuple(directory / name for name in CIFAR_FILES[split])
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"expected the CIFAR-10 python batch {path} (from cifar-10-python.tar.gz, "
                f"files {', '.join(CIFAR_FILES['train'] + CIFAR_FILES['test'])})"
            )
    return paths


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch: images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``."""
    batch = safe_unpickle(path)
    data = np.asarray(_field(batch, "data", path))
    target = np.asarray(_field(batch, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected data uint8 [N, 3072], got {data.dtype} {tuple(data.shape)}")
    if target.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {tuple(target.shape)}")
    return data.reshape(-1, 3, 32, 32), target
