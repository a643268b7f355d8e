"""MNIST-format IDX files (LeCun et al.), gzipped or raw, parsed and validated with numpy.

Layout: two zero bytes, a dtype code (only ``0x08`` = unsigned byte is accepted), the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes, then ``prod(sizes)`` bytes of data.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "find_idx_file"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08


def find_idx_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``; FileNotFoundError naming both when neither exists."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"expected the IDX file {root / stem}[.gz] (gzipped or raw), found neither")


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip stream ({err})") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != _UBYTE or raw[3] != ndim:
        raise ValueError(
            f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}, expected "
            f"0000{_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimension(s))"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header, expected {header} bytes, file has {len(raw)}")
    sizes = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(sizes, dtype=np.int64))
    if len(raw) - header != expected:
        kind = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {kind}: header says sizes {sizes} = {expected} data bytes, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(sizes).copy()
