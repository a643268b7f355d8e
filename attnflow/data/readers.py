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
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch

from attnflow.data.cifar import CIFAR_FILES, read_cifar_batches
from attnflow.data.dataset import ImageDataset, concatenate, first_images, reduce_bits
from attnflow.data.folder import read_image_folder
from attnflow.data.idx import find_idx_file, read_idx
from attnflow.data.npz import IMAGENET_CLASSES, imagenet_files, read_imagenet_npz
from attnflow.data.pairs import attach_condition, pad_images, read_folder_pairs

__all__ = ["load_dataset", "load_configured", "dataset_names", "FASHION_MNIST_ROOT", "DIGITS_TRAIN_SIZE"]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TRAIN_SIZE = 1437  # of 1797: an 80/20 split
_DIGITS_SEED = 0
_TRAIN_TEST = ("train", "test")


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"dataset {name!r} has splits {list(valid)}, got split={split!r}")


def _existing_root(name: str, root: Path | None, default: Path | None, expected: str) -> Path:
    if root is None and default is None:
        raise ValueError(f"dataset {name!r} has no default location: pass root=<{expected}>")
    root = default if root is None else root
    if not root.exists():
        hint = (
            "; `apt-get install dataset-fashion-mnist` provides it"
            if name == "fashion-mnist"
            else ""
        )
        raise FileNotFoundError(f"dataset {name!r}: {root} does not exist, expected {expected}{hint}")
    return root


def _digits(name: str, split: str, root: Path | None) -> ImageDataset:
    from sklearn.datasets import load_digits

    _check_split(name, split, _TRAIN_TEST)
    if root is not None:
        raise ValueError("dataset 'digits' is bundled with scikit-learn: pass root=None")
    bunch = load_digits()
    order = np.random.default_rng(_DIGITS_SEED).permutation(len(bunch.images))
    keep = order[:DIGITS_TRAIN_SIZE] if split == "train" else order[DIGITS_TRAIN_SIZE:]
    images = torch.from_numpy(bunch.images[keep].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[keep].astype(np.int64))
    return ImageDataset(images, labels, 17, name, split, 10)


def _idx(name: str, split: str, root: Path | None, default: Path | None) -> ImageDataset:
    _check_split(name, split, _TRAIN_TEST)
    prefix = "train" if split == "train" else "t10k"
    expected = f"a directory with {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"
    root = _existing_root(name, root, default, expected)
    image_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    label_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels; "
            f"expected the same count"
        )
    return ImageDataset(
        torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), 256,
        name, split, 10,
    )


def _cifar10(name: str, split: str, root: Path | None) -> ImageDataset:
    _check_split(name, split, _TRAIN_TEST)
    root = _existing_root(name, root, None, "the cifar-10-batches-py directory")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    images, labels = read_cifar_batches(root, CIFAR_FILES[split])
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), 256, name, split, 10)


def _imagenet(name: str, split: str, root: Path | None, size: int) -> ImageDataset:
    _check_split(name, split, (*_TRAIN_TEST, "val"))
    root = _existing_root(
        name, root, None, "a directory with train_data_batch_*.npz and val_data.npz, or one .npz file"
    )
    images, labels = read_imagenet_npz(imagenet_files(root, split), size)
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(labels), 256, name, split, IMAGENET_CLASSES
    )


def _folder(name: str, split: str, root: Path | None) -> ImageDataset:
    root = _existing_root(name, root, None, "a directory with <split>/<class>/*.png|jpg")
    images, labels, classes = read_image_folder(root / split)
    num_classes = len(classes) if labels is not None else None
    return ImageDataset(
        torch.from_numpy(images), None if labels is None else torch.from_numpy(labels), 256,
        name, split, num_classes,
    )


def _folder_pairs(name: str, split: str, root: Path | None) -> ImageDataset:
    root = _existing_root(name, root, None, "a directory with <split>/source/*.png and <split>/target/*.png")
    sources, targets = read_folder_pairs(root / split)
    return ImageDataset(targets, None, 256, name, split, conditions=sources, condition_levels=256)


_READERS: dict[str, Callable[[str, str, Path | None], ImageDataset]] = {
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


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    n_bits: int | None = None,
    condition: str = "none",
    scale: int = 2,
    pad: int = 0,
) -> ImageDataset:
    """Load a dataset from local files (see the module table); ``n_bits`` requantizes to
    ``2**n_bits`` levels with :func:`attnflow.data.dataset.reduce_bits`; ``pad`` zero-pads the
    images to ``pad x pad``; ``condition`` attaches condition images
    (:func:`attnflow.data.pairs.attach_condition`, ``scale`` for ``"lowres"``)."""
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_READERS)}")
    dataset = _READERS[name](name, split, None if root is None else Path(root))
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


def load_configured(data: Mapping, split: str) -> ImageDataset:
    """The ``split`` of the dataset a resolved ``[data]`` section describes (its ``name``,
    ``root``, ``n_bits`` and, for conditional models, ``condition``, ``scale`` and ``pad``).
    With ``train_on = "train+test"`` the ``train`` split is the training images followed by the
    test images (AttnFlow's protocol for its Tables 2 and 3; the test split is unchanged, so its
    bits/dim are then on images seen in training). ``test_images = N`` keeps at most the first ``N``
    images of the test split (every evaluation of a run then uses those: a cheaper, noisier figure
    whose standard error and image count the results give)."""
    def load(part: str) -> ImageDataset:
        return load_dataset(
            data["name"], part, root=data["root"] or None, n_bits=data["n_bits"] or None,
            condition=data.get("condition", "none"), scale=data.get("scale", 2), pad=data.get("pad", 0),
        )

    if split == "train" and data.get("train_on", "train") == "train+test":
        return concatenate(load("train"), load("test"))
    if split == "test" and data.get("test_images", 0):
        test = load("test")
        return first_images(test, min(data["test_images"], len(test)))
    return load(split)
