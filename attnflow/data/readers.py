"""``load_dataset``: one entry point over the local readers; nothing is downloaded.

=================  ==========================================================  ==================
name               root                                                        splits
=================  ==========================================================  ==================
``digits``         none: scikit-learn's bundled 8x8 digits, 17 grey levels       train/test (80/20)
``mnist``          directory with ``train-images-idx3-ubyte[.gz]`` etc.          train/test
``fashion-mnist``  same layout; default ``/usr/share/datasets/fashion-mnist``    train/test
``cifar10``        ``cifar-10-batches-py`` (or its parent)                       train/test
``imagenet32/64``  directory with ``train_data_batch_*.npz``, ``val_data.npz``;   train/test (= val)
                   or one ``.npz`` file
``folder``         directory with ``<split>/<class>/*.png|jpg``                  any sub-directory
``folder-pairs``   directory with ``<split>/source/*`` and ``<split>/target/*``   any sub-directory
                   (matched by file name; the sources are the conditions)
=================  ==========================================================  ==================

Conditional models get a condition image per image (:mod:`attnflow.data.pairs`): ``condition``
``"lowres"`` (bicubic downscaling by ``scale``), ``"labelmap"`` or ``"paired"``; ``pad`` first
zero-pads the images to a square size (Fashion-MNIST 28 -> 32).

Every reader but ``digits`` goes through the cache of :mod:`attnflow.data.cache`: the split is
decoded (and requantized, padded, given its conditions) once, and every later run and every process
of a ``torchrun`` memory-maps the same arrays. The digits (1797 8x8 images, 115 kB, inside
scikit-learn's package rather than a user's directory) stay in memory: decoding them takes
milliseconds and mapping would gain nothing.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from functools import partial, reduce
from pathlib import Path

import numpy as np
import torch

from attnflow.data.cache import cached_dataset
from attnflow.data.cifar import cifar_files, read_cifar_batch
from attnflow.data.dataset import ImageDataset, concatenate, first_images, reduce_bits
from attnflow.data.folder import image_chunks, image_folder_files
from attnflow.data.idx import find_idx_file, read_idx
from attnflow.data.npz import IMAGENET_CLASSES, imagenet_files, npz_blocks, npz_layout
from attnflow.data.pairs import attach_condition, folder_pairs, pad_images, pair_chunks
from attnflow.data.source import Decoded, Source, bundled, join

__all__ = ["load_dataset", "load_configured", "dataset_names", "FASHION_MNIST_ROOT", "DIGITS_TRAIN_SIZE"]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TRAIN_SIZE = 1437  # of 1797: an 80/20 split
_DIGITS_SEED = 0
_TRAIN_TEST = ("train", "test")


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"dataset {name!r} has splits {list(valid)}, got split={split!r}")


def _existing_root(name: str, root: Path | None, default: Path | None, expected: str) -> Path:
    root = default if root is None else root
    if root is None:
        raise ValueError(f"dataset {name!r} has no default location: pass root=<{expected}>")
    if not root.exists():
        hint = (
            "; `apt-get install dataset-fashion-mnist` provides it"
            if name == "fashion-mnist"
            else ""
        )
        raise FileNotFoundError(f"dataset {name!r}: {root} does not exist, expected {expected}{hint}")
    return root


def _digits(name: str, split: str, root: Path | None) -> Source:
    from sklearn.datasets import load_digits

    _check_split(name, split, _TRAIN_TEST)
    if root is not None:
        raise ValueError("dataset 'digits' is bundled with scikit-learn: pass root=None")
    bunch = load_digits()
    order = np.random.default_rng(_DIGITS_SEED).permutation(len(bunch.images))
    keep = order[:DIGITS_TRAIN_SIZE] if split == "train" else order[DIGITS_TRAIN_SIZE:]
    images = torch.from_numpy(bunch.images[keep].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[keep].astype(np.int64))
    return bundled(ImageDataset(images, labels, 17, name, split, 10))


def _idx(name: str, split: str, root: Path | None, default: Path | None) -> Source:
    _check_split(name, split, _TRAIN_TEST)
    prefix = "train" if split == "train" else "t10k"
    expected = f"a directory with {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"
    root = _existing_root(name, root, default, expected)
    image_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    label_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")

    def decode() -> Decoded:
        images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
        if len(images) != len(labels):
            raise ValueError(
                f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels; "
                f"expected the same count"
            )
        dataset = ImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                               256, name, split, 10)
        return len(dataset), iter([dataset])

    return Source(name, split, root, (image_path, label_path), decode)


def _cifar10(name: str, split: str, root: Path | None) -> Source:
    _check_split(name, split, _TRAIN_TEST)
    root = _existing_root(name, root, None, "the cifar-10-batches-py directory")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    files = cifar_files(root, split)

    def decode() -> Decoded:  # the batches are pickles: counting them means reading them
        batches = [read_cifar_batch(path) for path in files]
        chunks = [ImageDataset(torch.from_numpy(x), torch.from_numpy(y), 256, name, split, 10)
                  for x, y in batches]
        return sum(map(len, chunks)), iter(chunks)

    return Source(name, split, root, files, decode)


def _imagenet(name: str, split: str, root: Path | None, size: int) -> Source:
    _check_split(name, split, (*_TRAIN_TEST, "val"))
    root = _existing_root(
        name, root, None, "a directory with train_data_batch_*.npz and val_data.npz, or one .npz file"
    )
    files = tuple(imagenet_files(root, split))

    def decode() -> Decoded:
        layouts = [npz_layout(path, size) for path in files]  # every file checked before any is converted

        def chunks() -> Iterator[ImageDataset]:
            for path, (_, labels) in zip(files, layouts):
                start = 0
                for images in npz_blocks(path, size):
                    rows = torch.from_numpy(labels[start : start + len(images)])
                    start += len(images)
                    yield ImageDataset(torch.from_numpy(images), rows, 256, name, split, IMAGENET_CLASSES)

        return sum(n for n, _ in layouts), chunks()

    return Source(name, split, root, files, decode)


def _folder(name: str, split: str, root: Path | None) -> Source:
    root = _existing_root(name, root, None, "a directory with <split>/<class>/*.png|jpg")
    files, labels, classes = image_folder_files(root / split)

    def chunks() -> Iterator[ImageDataset]:
        start = 0
        for images in image_chunks(files):
            rows = None if labels is None else torch.from_numpy(labels[start : start + len(images)])
            start += len(images)
            yield ImageDataset(torch.from_numpy(images), rows, 256, name, split,
                               len(classes) if classes else None)

    return Source(name, split, root, tuple(files), lambda: (len(files), chunks()))


def _folder_pairs(name: str, split: str, root: Path | None) -> Source:
    root = _existing_root(name, root, None, "a directory with <split>/source/*.png and <split>/target/*.png")
    sources, targets = folder_pairs(root / split)

    def decode() -> Decoded:
        return len(targets), (ImageDataset(tgt, None, 256, name, split, conditions=src, condition_levels=256)
                              for src, tgt in pair_chunks(root / split, sources, targets))

    return Source(name, split, root, (*sources, *targets), decode)


_READERS: dict[str, Callable[[str, str, Path | None], Source]] = {
    "digits": _digits,
    "mnist": partial(_idx, default=None),
    "fashion-mnist": partial(_idx, default=FASHION_MNIST_ROOT),
    "cifar10": _cifar10,
    "imagenet32": partial(_imagenet, size=32),
    "imagenet64": partial(_imagenet, size=64),
    "folder": _folder,
    "folder-pairs": _folder_pairs,
}


def dataset_names() -> tuple[str, ...]:
    """The names :func:`load_dataset` accepts."""
    return tuple(_READERS)


def _source(name: str, split: str, root: str | os.PathLike | None) -> Source:
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_READERS)}")
    return _READERS[name](name, split, None if root is None else Path(root))


def _transform(dataset: ImageDataset, n_bits: int | None, pad: int, condition: str, scale: int) -> ImageDataset:
    """Requantization, padding and condition images, row by row (so chunk by chunk)."""
    if n_bits is not None:
        dataset = reduce_bits(dataset, n_bits)
    if pad:
        if dataset.conditions is not None:
            raise ValueError("data.pad applies to unpaired images; pad both sides of folder-pairs beforehand")
        dataset = ImageDataset(
            pad_images(dataset.images, pad), dataset.labels, dataset.levels, dataset.name, dataset.split,
            dataset.num_classes,
        )
    return attach_condition(dataset, condition, scale)


def _load(source: Source, n_bits: int | None, condition: str, scale: int, pad: int,
          cache_dir: str | os.PathLike | None = None) -> ImageDataset:
    transform = partial(_transform, n_bits=n_bits, pad=pad, condition=condition, scale=scale)
    if source.files:
        variant = {"n_bits": n_bits, "pad": pad, "condition": condition,
                   "scale": scale if condition == "lowres" else None}
        return cached_dataset(source, transform, variant, cache_dir)
    return reduce(concatenate, map(transform, source.decode()[1]))  # bundled data, in memory


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    n_bits: int | None = None,
    condition: str = "none",
    scale: int = 2,
    pad: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """Load a dataset from local files (see the module table); ``n_bits`` requantizes to
    ``2**n_bits`` levels with :func:`attnflow.data.dataset.reduce_bits`; ``pad`` zero-pads the
    images to ``pad x pad``; ``condition`` attaches condition images
    (:func:`attnflow.data.pairs.attach_condition`, ``scale`` for ``"lowres"``). ``cache_dir``
    overrides where the cache lives (:func:`attnflow.data.cache.cache_directory`)."""
    return _load(_source(name, split, root), n_bits, condition, scale, pad, cache_dir)


def load_configured(data: Mapping, split: str) -> ImageDataset:
    """The ``split`` of the dataset a resolved ``[data]`` section describes (its ``name``,
    ``root``, ``n_bits`` and, for conditional models, ``condition``, ``scale`` and ``pad``).
    With ``train_on = "train+test"`` the ``train`` split is the training images followed by the
    test images (AttnFlow's protocol for its Tables 2 and 3; the test split is unchanged, so its
    bits/dim are then on images seen in training), cached as one split. ``test_images = N`` keeps
    at most the first ``N`` images of the test split (every evaluation of a run then uses those: a
    cheaper, noisier figure whose standard error and image count the results give)."""
    name, root = data["name"], os.path.expandvars(os.path.expanduser(data["root"])) or None  # ~ and $VARS
    if split == "train" and data.get("train_on", "train") == "train+test":
        source = join(_source(name, "train", root), _source(name, "test", root))
    else:
        source = _source(name, split, root)
    dataset = _load(source, data["n_bits"] or None, data.get("condition", "none"), data.get("scale", 2),
                    data.get("pad", 0))
    if split == "test" and data.get("test_images", 0):
        return first_images(dataset, min(data["test_images"], len(dataset)))
    return dataset
