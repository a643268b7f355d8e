"""The dataset cache: each split decoded once into raw arrays that every run and process memory-maps.

Layout: a cache directory holds, per dataset split and transformation (``n_bits``, ``pad``,
``condition``), ``ENTRY.images.npy`` (uint8 ``[N, C, H, W]``), ``ENTRY.labels.npy`` (int64 ``[N]``)
and ``ENTRY.conditions.npy`` where the split has them, and the manifest ``ENTRY.json``: the cache
version, the source files' sizes and modification times, each array's shape, dtype and byte size,
the levels and the class count. ``ENTRY`` is ``NAME-SPLIT-DIGEST``, the digest of the data's
path and the transformation.

Where (:func:`cache_directory`): ``cache_dir`` when given, else ``$ATTNFLOW_CACHE``, else
``.attnflow-cache`` beside the data when it exists there or that directory is writable and not
under ``/usr`` (read-only system data), else ``$XDG_CACHE_HOME/attnflow`` (``~/.cache/attnflow``).

Mapping: the arrays are opened with ``numpy.load(mmap_mode="c")``; nothing is read until a row is
used, a page lives once in the page cache however many processes map the file, and a write to an
array stays private to its process (copy-on-write) and never reaches the file.

Trust: an entry is used when its manifest exists, was written by this cache version, lists the
same source files with the same sizes and modification times (nanoseconds, as the file system
keeps them), and every array file has the size and header the manifest gives. Otherwise it is
converted again, with a one-line note saying why (the source changed, a file is corrupt or
truncated). Conversion is atomic: the old manifest and arrays are removed first, the new arrays are
written under temporary names, flushed and renamed, and the manifest comes last, so an interrupted
conversion leaves nothing a later run trusts (its temporaries are removed by the next conversion).
A lock on the cache directory (``flock``) lets one process of a ``torchrun`` convert while the
others wait, then map the same files. Disk space is checked before writing.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from .dataset import ImageDataset, check_joinable
from .source import Source, rechunk

__all__ = ["CACHE_ENV", "CACHE_VERSION", "CacheError", "cache_directory", "cached_dataset"]

CACHE_ENV = "ATTNFLOW_CACHE"
CACHE_VERSION = 1
CHUNK_BYTES = 16 * 2**20  # images converted at a time (the transformations work in float64)
_LISTED_FILES = 1000  # manifests list the source files up to this many (beyond, a digest alone)
_FIELDS = ("images", "labels", "conditions")


class CacheError(ValueError):
    """The dataset cache cannot be written (no room, no permission) or read (a file truncated
    under a running training); a ``ValueError`` so that the command line reports it on one line."""


def _note(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"attnflow data: {message}", file=sys.stderr)


def cache_directory(root: Path | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the cache of the data at ``root`` (see the module docstring)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if root is not None:
        data_dir = (root if root.is_dir() else root.parent).resolve()
        beside = data_dir / ".attnflow-cache"
        system = data_dir == Path("/usr") or Path("/usr") in data_dir.parents
        if beside.is_dir() or (os.access(data_dir, os.W_OK) and not system):
            return beside
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnflow"


def _signature(files: tuple[Path, ...]) -> dict[str, Any]:
    """Sizes and modification times of the source files, with their digest."""
    rows = []
    for path in files:
        stat = path.stat()
        rows.append([str(path), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    signature: dict[str, Any] = {"count": len(rows), "digest": digest}
    if len(rows) <= _LISTED_FILES:
        signature["files"] = rows
    return signature


def _what_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    if "files" in old and "files" in new:
        before = {path: (size, mtime) for path, size, mtime in old["files"]}
        for path, size, mtime in new["files"]:
            if path not in before:
                return f"{path} is new"
            if before[path][0] != size:
                return f"{path} changed (size {before[path][0]} -> {size} bytes)"
            if before[path][1] != mtime:
                return f"{path} changed (modified after the cache was made)"
        removed = sorted(set(before) - {path for path, _, _ in new["files"]})
        if removed:
            return f"{removed[0]} was removed"
    return f"its {new['count']} source files differ from the {old['count']} the cache was made from"


def _map(path: Path, spec: dict[str, Any]) -> tuple[np.memmap | None, str | None]:
    """The array at ``path`` mapped copy-on-write, or why it does not match its manifest ``spec``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, f"{path} is missing"
    if size != spec["bytes"]:
        return None, f"{path} is truncated or corrupt ({size} bytes, its manifest says {spec['bytes']})"
    try:
        array = cast(np.memmap, np.load(path, mmap_mode="c", allow_pickle=False))  # mmap_mode: a memmap
    except (OSError, ValueError) as exc:
        return None, f"{path} is corrupt ({exc})"
    if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
        return None, (f"{path} is corrupt (it holds {array.dtype.str} {list(array.shape)}, its manifest says "
                      f"{spec['dtype']} {spec['shape']})")
    return array, None


class _ArrayWriter:
    """One ``.npy`` file of ``rows`` rows, written block by block under a temporary name."""

    def __init__(self, path: Path, rows: int, block: np.ndarray) -> None:
        self.path, self.tmp = path, path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.shape, self.dtype, self.rows = (rows, *block.shape[1:]), block.dtype, 0
        self.file = open(self.tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, block: np.ndarray) -> None:
        if self.rows + len(block) > self.shape[0]:
            raise CacheError(f"{self.path}: the source gave more than the {self.shape[0]} rows it counted")
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += len(block)

    def close(self) -> dict[str, Any]:
        """Flush to disk; the manifest's description of the file."""
        if self.rows != self.shape[0]:
            raise CacheError(f"{self.path}: the source gave {self.rows} rows but counted {self.shape[0]}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"shape": list(self.shape), "dtype": self.dtype.str, "bytes": self.tmp.stat().st_size}

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _arrays(dataset: ImageDataset) -> dict[str, np.ndarray]:
    tensors = {"images": dataset.images, "labels": dataset.labels, "conditions": dataset.conditions}
    return {k: t.numpy() for k, t in tensors.items() if t is not None}


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 1e9:.2f} GB)"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Entry:
    """The cache files of one dataset split and transformation."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        self.manifest = directory / f"{name}.json"

    def path(self, field: str) -> Path:
        return self.directory / f"{self.name}.{field}.npy"

    def open(self, signature: dict[str, Any]) -> tuple[ImageDataset | None, str | None]:
        """The mapped dataset, or ``None`` and why the entry is not trusted (``None`` when there is
        no entry)."""
        try:
            manifest = json.loads(self.manifest.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"{self.manifest} is unreadable ({exc})"
        try:
            if manifest["version"] != CACHE_VERSION:
                return None, (f"{self.manifest} was written by cache version {manifest['version']}, "
                              f"not {CACHE_VERSION}")
            if manifest["sources"]["digest"] != signature["digest"]:
                return None, f"the source changed: {_what_changed(manifest['sources'], signature)}"
            tensors, files = {}, {}
            for field, spec in manifest["fields"].items():
                array, problem = _map(self.path(field), spec)
                if array is None:
                    return None, problem
                tensors[field] = torch.from_numpy(array)
                if field != "labels":
                    files[field] = (self.path(field), array.offset)
            return ImageDataset(
                tensors["images"], tensors.get("labels"), manifest["levels"], manifest["name"],
                manifest["split"], manifest["num_classes"], tensors.get("conditions"),
                manifest["condition_levels"], values_checked=True, files=files,
            ), None
        except (KeyError, TypeError, ValueError) as exc:
            return None, f"{self.manifest} is corrupt ({type(exc).__name__}: {exc})"

    def convert(self, source: Source, transform: Callable[[ImageDataset], ImageDataset],
                signature: dict[str, Any]) -> None:
        """Decode ``source``, transform it chunk by chunk and write the entry (module docstring)."""
        for path in [self.manifest, *map(self.path, _FIELDS), *self.directory.glob(f"{self.name}.*.tmp-*")]:
            path.unlink(missing_ok=True)
        count, chunks = source.decode()
        where = f"the cache of {source.name} {source.split} in {self.directory}"
        fix = f"free space there or set {CACHE_ENV}=<a directory with room>"
        writers: dict[str, _ArrayWriter] = {}
        try:
            first, classes = self._write(source, count, chunks, transform, writers, where, fix)
            specs = {field: writer.close() for field, writer in writers.items()}
            for writer in writers.values():
                os.replace(writer.tmp, writer.path)
            manifest = {
                "version": CACHE_VERSION, "name": first.name, "split": source.split, "levels": first.levels,
                "num_classes": classes, "condition_levels": first.condition_levels, "fields": specs,
                "sources": signature,
            }
            tmp = self.manifest.with_name(f"{self.manifest.name}.tmp-{os.getpid()}")
            with open(tmp, "w") as f:
                json.dump(manifest, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest)
            _fsync_directory(self.directory)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(f"the disk filled up while writing {where}: {fix}") from None
            raise
        finally:
            for writer in writers.values():
                writer.discard()
            self.manifest.with_name(f"{self.manifest.name}.tmp-{os.getpid()}").unlink(missing_ok=True)

    def _write(self, source: Source, count: int, chunks: Iterator[ImageDataset],
               transform: Callable[[ImageDataset], ImageDataset], writers: dict[str, _ArrayWriter], where: str,
               fix: str) -> tuple[ImageDataset, int | None]:
        """Write the transformed chunks into ``writers`` (opened at the first chunk, once the disk
        space is checked); the first transformed chunk and the class count."""
        from tqdm import tqdm

        first, classes = None, None
        with tqdm(total=count, unit="img", unit_scale=True, desc=f"caching {source.name} {source.split}",
                  leave=False, file=sys.stderr, disable=None) as bar:
            for chunk in rechunk(chunks, CHUNK_BYTES):
                out = transform(chunk)
                arrays = _arrays(out)
                if first is None:
                    first = out
                    need = sum(count * a[:1].nbytes + 128 for a in arrays.values())  # 128: the .npy header
                    free = shutil.disk_usage(self.directory).free
                    if need > free:
                        raise CacheError(f"not enough disk space for {where}: it needs {_size(need)}, "
                                         f"{_size(free)} are free; {fix}")
                    _note(f"converting {source.name} {source.split} ({count} images) into {self.directory} "
                          f"(once; later runs map it)")
                    writers.update({k: _ArrayWriter(self.path(k), count, a) for k, a in arrays.items()})
                else:
                    check_joinable(first, out)
                for field, array in arrays.items():
                    writers[field].write(array)
                if out.num_classes is not None:
                    classes = max(classes or 0, out.num_classes)
                bar.update(len(out))
        if first is None:
            raise CacheError(f"{where}: the source has no images")
        return first, classes


@contextmanager
def _locked(lock: IO[str], directory: Path) -> Iterator[None]:
    """Hold the cache directory's lock (waiting, with a note, while another process converts)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _note(f"waiting for another process writing the cache in {directory}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _entry_name(source: Source, variant: dict[str, Any]) -> str:
    key = {"name": source.name, "split": source.split, "variant": variant,
           "root": None if source.root is None else str(source.root.resolve())}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{source.name}-{source.split}-{digest}"


def cached_dataset(source: Source, transform: Callable[[ImageDataset], ImageDataset], variant: dict[str, Any],
                   cache_dir: str | os.PathLike | None = None) -> ImageDataset:
    """``source`` transformed chunk by chunk with ``transform`` (whose parameters ``variant``
    names), mapped from its cache entry, which is written first when missing or not trusted."""
    directory = cache_directory(source.root, cache_dir)
    entry = _Entry(directory, _entry_name(source, variant))
    signature = _signature(source.files)
    dataset, problem = entry.open(signature)
    if dataset is not None:
        return dataset
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / ".lock", "a")
    except OSError as exc:
        why = f"{problem}, and it" if problem else "it"
        raise CacheError(f"{source.name} {source.split} needs converting but {why} cannot be written in "
                         f"{directory} ({exc.strerror}); set {CACHE_ENV} to a writable directory") from None
    with lock, _locked(lock, directory):
        dataset, problem = entry.open(signature)  # another process may have converted it meanwhile
        if dataset is not None:
            return dataset
        if problem:
            _note(f"{problem}; converting {source.name} {source.split} again")
        entry.convert(source, transform, signature)
    dataset, problem = entry.open(signature)
    if dataset is None:
        raise CacheError(f"the cache of {source.name} {source.split} just written is not usable: {problem}")
    return dataset
