"""Image folders: ``root/<split>/<class>/*.png|jpg`` or, without classes, ``root/<split>/*.png``.

Classes are the sub-directory names in sorted order. Every image must share the size and mode
(``L`` for grey, ``RGB`` for colour) of the first one.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["image_folder_files", "image_chunks", "list_images", "IMAGE_SUFFIXES", "CHUNK_FILES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHUNK_FILES = 256  # image files decoded at a time
_MODES = {"L": 1, "RGB": 3}


def list_images(directory: Path) -> list[Path]:
    """The image files (by suffix) directly in ``directory``, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_chunks(paths: list[Path], chunk: int = CHUNK_FILES) -> Iterator[np.ndarray]:
    """uint8 ``[n, C, H, W]`` blocks of ``chunk`` image files, in order; every image must share the
    size and mode of the first one."""
    reference: tuple[str, tuple[int, int]] | None = None  # mode and size of the first image
    for start in range(0, len(paths), chunk):
        arrays = []
        for path in paths[start : start + chunk]:
            mode, size, array = _read_image(path)
            if mode not in _MODES:
                raise ValueError(f"{path}: image mode {mode!r} is not supported; convert it to L or RGB")
            if reference is None:
                reference = (mode, size)
            elif (mode, size) != reference:
                raise ValueError(
                    f"{path}: image is {mode} {size[0]}x{size[1]} but {paths[0]} is "
                    f"{reference[0]} {reference[1][0]}x{reference[1][1]}; all images must match"
                )
            arrays.append(array.reshape(size[1], size[0], -1))
        yield np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def _read_image(path: Path) -> tuple[str, tuple[int, int], np.ndarray]:
    """Mode, size and pixels of one image file; a corrupt or truncated file is a ``ValueError``
    naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.mode, img.size, np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, EOFError, zlib.error) as exc:  # PIL's errors for broken files
        raise ValueError(f"{path}: cannot read the image ({exc}); replace or remove the file") from None


def image_folder_files(directory: Path) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """The image files of ``directory`` (class by class), their labels int64 ``[N]`` (None without
    classes) and the class names."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"expected an image directory {directory} holding <class>/*.png|jpg or *.png|jpg"
        )
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    loose = list_images(directory)
    if classes and loose:
        raise ValueError(
            f"{directory}: holds both class sub-directories {classes} and loose images "
            f"(e.g. {loose[0].name}); use one layout"
        )
    files = [(path, label) for label, c in enumerate(classes) for path in list_images(directory / c)]
    if not classes:
        files = [(path, 0) for path in loose]
    if not files:
        raise FileNotFoundError(f"expected {'/'.join(IMAGE_SUFFIXES)} images in {directory}, found none")
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return [path for path, _ in files], labels, classes
