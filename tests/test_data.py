"""Tests of attnflow.data: readers on tiny fixture files in the real formats, levels, dequantization
and the resumable sampler."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnflow.data import (
    BatchSampler,
    ImageDataset,
    dataset_names,
    dequantize,
    load_dataset,
    reduce_bits,
    to_float,
)
from attnflow.data.readers import FASHION_MNIST_ROOT

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- fixture writers (real formats)


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    return header + np.array(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()


def write_idx(root: Path, stem: str, array: np.ndarray, gz: bool, **kw) -> Path:
    data = idx_bytes(array, **kw)
    path = root / (stem + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(root: Path, n_train: int = 7, n_test: int = 3, gz: bool = True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n, dtype=np.uint8)
        write_idx(root, f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root, f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar(root: Path, protocol: int = 2, sizes=(2, 3, 1, 2, 4), n_test: int = 3) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, (*sizes, n_test)):
        batch = {
            b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in RNG.integers(0, 10, n)],
            b"batch_label": b"fixture",
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = batch
    return batches


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------- registry and dataset


def test_dataset_names_and_unknown_name():
    names = dataset_names()
    assert set(names) == {"digits", "mnist", "fashion-mnist", "cifar10", "imagenet32", "imagenet64", "folder",
                          "folder-pairs"}
    with pytest.raises(ValueError, match="valid names: .*cifar10"):
        load_dataset("svhn")


def test_image_dataset_validates():
    images = torch.full((2, 1, 3, 3), 17, dtype=torch.uint8)
    with pytest.raises(ValueError, match="not below levels=17"):
        ImageDataset(images, None, 17, "x", "train")
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), None, 256, "x", "train")
    with pytest.raises(ValueError, match="int64 of shape \\[2\\]"):
        ImageDataset(images, torch.zeros(3, dtype=torch.int64), 256, "x", "train")
    ds = ImageDataset(images, torch.tensor([0, 4]), 256, "x", "train")
    assert ds.num_classes == 5 and ds.shape == (1, 3, 3) and len(ds) == 2


# ---------------------------------------------------------------- digits


def test_digits_split_levels_and_determinism():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.levels == 17 and train.shape == (1, 8, 8) and train.num_classes == 10
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert int(train.images.max()) == 16 and int(train.images.min()) == 0
    # The two splits partition the 1797 images: every sklearn image appears exactly once.
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().images.astype(np.uint8)).flatten(1)
    both = torch.cat([train.images, test.images]).flatten(1)
    assert torch.equal(torch.sort(both.sum(1)).values, torch.sort(ref.sum(1)).values)
    assert torch.equal(torch.bincount(torch.cat([train.labels, test.labels])),
                       torch.bincount(torch.from_numpy(load_digits().target)))
    assert torch.equal(load_dataset("digits", "train").images, train.images)
    with pytest.raises(ValueError, match="splits"):
        load_dataset("digits", "val")


# ---------------------------------------------------------------- IDX (MNIST format)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gz_and_raw(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", split, root=tmp_path)
        images, labels = arrays[prefix]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
        assert ds.levels == 256 and ds.num_classes == 10 and ds.split == split


def test_idx_bad_magic(tmp_path):
    write_mnist(tmp_path)
    bad = write_idx(tmp_path, "train-images-idx3-ubyte", np.zeros((2, 28, 28)), gz=True,
                    magic=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(ValueError, match=rf"{bad}.*bad IDX magic.*00000803"):
        load_dataset("mnist", root=tmp_path)


def test_idx_truncated(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=rf"{path}: IDX file truncated.*\(7, 28, 28\) = 5488.*5483"):
        load_dataset("mnist", root=tmp_path)


def test_idx_corrupt_gzip(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"{path}: corrupt gzip"):
        load_dataset("mnist", root=tmp_path)


def test_idx_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path, "train-labels-idx1-ubyte", np.zeros(6), gz=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz holds 7 images but .*train-labels"
                                         r"-idx1-ubyte.gz holds 6 labels"):
        load_dataset("mnist", root=tmp_path)


def test_idx_missing_files(tmp_path):
    with pytest.raises(ValueError, match="no default location"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope'} does not exist.*train-images-idx3"):
        load_dataset("mnist", root=tmp_path / "nope")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 't10k-labels-idx1-ubyte'}\[\.gz\]"):
        load_dataset("mnist", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope'} does not exist.*apt-get install "
                                                 r"dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path / "nope")


@pytest.mark.skipif(not FASHION_MNIST_ROOT.exists(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files():
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.shape == (1, 28, 28) and train.levels == 256 and train.num_classes == 10
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches(tmp_path, protocol):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_dataset("cifar10", "train", root=tmp_path)  # parent of cifar-10-batches-py
    test = load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")
    assert train.images.shape == (12, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    first = batches["data_batch_1"]
    # Row layout: 1024 red, then green, then blue values of a row-major 32x32 image.
    assert torch.equal(train.images[0, 1].flatten(), torch.from_numpy(first[b"data"][0, 1024:2048]))
    expected = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert train.labels.tolist() == expected and train.labels.dtype == torch.int64
    assert train.levels == 256 and train.num_classes == 10


def test_cifar_legacy_numpy_core_name(tmp_path):
    """The original Python-2 files reference numpy.core.multiarray._reconstruct."""
    write_cifar(tmp_path, protocol=2)
    path = tmp_path / "test_batch"
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert load_dataset("cifar10", "test", root=tmp_path).images.shape == (3, 3, 32, 32)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))
    # Sanity: the plain unpickler would run the payload.
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match=rf"{path}: refusing to load global (posix|nt)\.system"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_cifar_missing_and_malformed(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'data_batch_4'}"):
        load_dataset("cifar10", root=tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=rf"{path}: expected data uint8 \[N, 3072\]"):
        load_dataset("cifar10", "test", root=tmp_path)
    path.write_bytes(pickle.dumps({b"images": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(ValueError, match=rf"{path}: expected a CIFAR batch dict with key b'data'"):
        load_dataset("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------- downsampled ImageNet npz


def imagenet_arrays(n: int, size: int, hwc: bool = False):
    images = RNG.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    data = images.transpose(0, 2, 3, 1) if hwc else images.reshape(n, -1)
    return images, data, RNG.integers(1, 1001, n)


@pytest.mark.parametrize("name,size", [("imagenet32", 32), ("imagenet64", 64)])
def test_imagenet_npz_directory(tmp_path, name, size):
    parts = []
    for i in (1, 2, 10):  # numeric, not lexicographic, order: 1, 2, 10
        images, data, labels = imagenet_arrays(i, size, hwc=(i == 2))
        np.savez(tmp_path / f"train_data_batch_{i}.npz", data=data, labels=labels, mean=np.zeros(3))
        parts.append((images, labels))
    val_images, val_data, val_labels = imagenet_arrays(4, size)
    np.savez(tmp_path / "val_data.npz", data=val_data, labels=val_labels)

    train = load_dataset(name, "train", root=tmp_path)
    assert train.images.shape == (13, 3, size, size) and train.num_classes == 1000
    assert torch.equal(train.images, torch.from_numpy(np.concatenate([p[0] for p in parts])))
    assert torch.equal(train.labels, torch.from_numpy(np.concatenate([p[1] for p in parts]) - 1))
    for split in ("test", "val"):
        val = load_dataset(name, split, root=tmp_path)
        assert torch.equal(val.images, torch.from_numpy(val_images))
    single = load_dataset(name, "train", root=tmp_path / "val_data.npz")
    assert torch.equal(single.labels, torch.from_numpy(val_labels - 1))


def test_imagenet_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"val_data.npz in {tmp_path}"):
        load_dataset("imagenet32", "test", root=tmp_path)
    path = tmp_path / "val_data.npz"
    _, data, labels = imagenet_arrays(2, 32)
    np.savez(path, x=data, y=labels)
    with pytest.raises(ValueError, match=rf"{path}: expected npz keys 'data' and 'labels', found \['x', 'y'\]"):
        load_dataset("imagenet32", "test", root=tmp_path)
    np.savez(path, data=data, labels=labels)
    with pytest.raises(ValueError, match=rf"{path}: expected 'data' of shape \[N, 12288\]"):
        load_dataset("imagenet64", "test", root=tmp_path)
    np.savez(path, data=data, labels=labels - 1 - labels.min())  # 0-based
    with pytest.raises(ValueError, match=rf"{path}: expected 1-based labels"):
        load_dataset("imagenet32", "test", root=tmp_path)
    np.savez(path, data=data, labels=labels[:1])
    with pytest.raises(ValueError, match=rf"{path}: expected integer 'labels' of shape \[2\]"):
        load_dataset("imagenet32", "test", root=tmp_path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=rf"{path}"):
        load_dataset("imagenet32", "test", root=tmp_path)


# ---------------------------------------------------------------- image folder


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_folder_with_classes(tmp_path, mode, channels):
    shape = (5, 6) if mode == "L" else (5, 6, 3)
    written = {}
    for cls in ("cat", "ant"):
        for i in range(2):
            array = RNG.integers(0, 256, shape, dtype=np.uint8)
            write_png(tmp_path / "train" / cls / f"{i}.png", array)
            written[(cls, i)] = array
    ds = load_dataset("folder", "train", root=tmp_path)
    assert ds.images.shape == (4, channels, 5, 6) and ds.levels == 256
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.num_classes == 2  # ant=0, cat=1 (sorted)
    expected = written[("cat", 1)].reshape(5, 6, channels).transpose(2, 0, 1)
    assert torch.equal(ds.images[3], torch.from_numpy(np.ascontiguousarray(expected)))


def test_folder_without_classes_and_errors(tmp_path):
    for i in range(3):
        write_png(tmp_path / "test" / f"{i}.png", RNG.integers(0, 256, (4, 4), dtype=np.uint8))
    ds = load_dataset("folder", "test", root=tmp_path)
    assert ds.images.shape == (3, 1, 4, 4) and ds.labels is None and ds.num_classes is None

    odd = tmp_path / "test" / "3.png"
    write_png(odd, RNG.integers(0, 256, (4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{odd}: image is L 5x4 but .*0.png is L 4x4"):
        load_dataset("folder", "test", root=tmp_path)
    write_png(odd, RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{odd}: image is RGB 4x4"):
        load_dataset("folder", "test", root=tmp_path)
    write_png(odd, RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{odd}: image mode 'RGBA' is not supported"):
        load_dataset("folder", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'train'}"):
        load_dataset("folder", "train", root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"images in {tmp_path / 'empty'}, found none"):
        load_dataset("folder", "empty", root=tmp_path)


# ---------------------------------------------------------------- n_bits


def test_n_bits_256_levels_is_right_shift(tmp_path):
    write_mnist(tmp_path)
    full = load_dataset("mnist", root=tmp_path)
    all_values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    for n_bits in range(1, 9):
        reduced = load_dataset("mnist", root=tmp_path, n_bits=n_bits)
        assert reduced.levels == 2**n_bits
        assert torch.equal(reduced.images, full.images >> (8 - n_bits))
        grid = reduce_bits(ImageDataset(all_values, None, 256, "g", "train"), n_bits).images
        assert torch.equal(grid, all_values >> (8 - n_bits))
        assert torch.equal(torch.bincount(grid.flatten().long()), torch.full((2**n_bits,), 2 ** (8 - n_bits)))
    with pytest.raises(ValueError, match="n_bits=9 .*2\\*\\*n_bits <= 256"):
        load_dataset("mnist", root=tmp_path, n_bits=9)
    with pytest.raises(ValueError, match="n_bits=0"):
        load_dataset("mnist", root=tmp_path, n_bits=0)


def test_n_bits_digits_17_levels():
    full = load_dataset("digits")
    reduced = load_dataset("digits", n_bits=4)
    assert reduced.levels == 16
    assert torch.equal(reduced.images.long(), (full.images.long() * 16) // 17)
    assert int(reduced.images.max()) == 15
    assert load_dataset("digits", n_bits=2).images.unique().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="n_bits=5 .*17 levels"):
        load_dataset("digits", n_bits=5)


# ---------------------------------------------------------------- dequantization


def test_dequantize_range_mean_and_bins():
    levels = 17
    k = torch.randint(0, levels, (200, 500), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    x = dequantize(k, levels, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.min() >= 0 and x.max() < 1
    assert torch.equal(torch.floor(x * levels).to(torch.uint8), k)  # each value stays in its bin
    u = x * levels - k
    # u ~ U[0,1): mean 1/2, standard error sqrt(1/12/N) ~ 0.0009; 5 sigma.
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12 / u.numel()) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 0.005
    same = dequantize(k, levels, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(x, same)
    assert torch.allclose(to_float(k, levels, torch.float64), (k.double() + 0.5) / levels)


def test_dequantize_top_level_never_reaches_one():
    # float32 (255 + u) rounds to 256 for u within 2**-17 of 1; 10**6 draws hit that ~7 times.
    k = torch.full((10**6,), 255, dtype=torch.uint8)
    x = dequantize(k, 256, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and float(x.max()) < 1.0


def test_dequantize_rejects_bad_input():
    with pytest.raises(ValueError, match="values 0..16 are outside 0..15 for levels=16"):
        dequantize(torch.tensor([0, 16], dtype=torch.uint8), 16)
    with pytest.raises(ValueError, match="integer levels"):
        to_float(torch.tensor([0.5]), 256)


# ---------------------------------------------------------------- sampler


def test_sampler_epochs_are_seeded_permutations():
    sampler = BatchSampler(n=10, batch_size=3, seed=7)
    assert sampler.batches_per_epoch == 3
    for epoch in range(3):
        batches = [next(sampler) for _ in range(3)]
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch))
        assert torch.equal(torch.cat(batches), perm[:9])  # last incomplete batch dropped
        assert all(b.shape == (3,) for b in batches)
    assert sampler.state_dict()["epoch"] == 3
    with pytest.raises(ValueError, match="batch_size <= n"):
        BatchSampler(n=2, batch_size=3)


def test_sampler_resume_mid_epoch():
    reference = BatchSampler(n=23, batch_size=4, seed=3)
    expected = [next(reference) for _ in range(17)]  # spans epochs 0..3 (5 batches each)
    for cut in (2, 5, 8, 13):
        first = BatchSampler(n=23, batch_size=4, seed=3)
        for _ in range(cut):
            next(first)
        state = first.state_dict()
        resumed = BatchSampler(n=23, batch_size=4, seed=3)
        resumed.load_state_dict(state)
        rest = [next(resumed) for _ in range(17 - cut)]
        assert all(torch.equal(a, b) for a, b in zip(rest, expected[cut:]))
    other = BatchSampler(n=23, batch_size=5, seed=3)
    with pytest.raises(ValueError, match="batch_size=4 .*batch_size=5"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        resumed.load_state_dict({**state, "position": 5})


def test_train_on_train_plus_test_joins_the_splits():
    from attnflow.config import resolve_config
    from attnflow.data import load_configured

    data = resolve_config("glow-digits", ["data.train_on=train+test"])["data"]
    train, test = load_configured(data, "train"), load_configured(data, "test")
    plain = load_configured({**data, "train_on": "train"}, "train")
    assert len(train) == len(plain) + len(test) and train.split == "train+test"
    assert torch.equal(train.images, torch.cat([plain.images, test.images]))
    assert torch.equal(train.labels, torch.cat([plain.labels, test.labels]))
    assert torch.equal(load_configured(data, "test").images, test.images)  # the test split is unchanged


def test_test_images_keeps_the_first_test_images_only():
    from attnflow.config import resolve_config
    from attnflow.data import load_configured

    data = resolve_config("glow-digits", ["data.test_images=50"])["data"]
    whole = load_configured({**data, "test_images": 0}, "test")
    test = load_configured(data, "test")
    assert len(test) == 50 and len(whole) == 360
    assert torch.equal(test.images, whole.images[:50]) and torch.equal(test.labels, whole.labels[:50])
    assert torch.equal(load_configured(data, "train").images,
                       load_configured({**data, "test_images": 0}, "train").images)
    assert torch.equal(load_configured({**data, "test_images": 361}, "test").images, whole.images)  # at most N


def test_trained_run_evaluates_the_first_test_images(tmp_path):
    from attnflow.config import resolve_config
    from attnflow.train import Trainer

    cfg = resolve_config("glow-digits", ["train.steps=2", "data.test_images=40", "train.threads=1"])
    results = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert results["test"]["n"] == 40


def test_concatenate_refuses_different_kinds():
    from attnflow.data.dataset import ImageDataset, concatenate

    a = ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None, 17, "x", "train")
    b = ImageDataset(torch.zeros(2, 1, 5, 5, dtype=torch.uint8), None, 17, "x", "test")
    with pytest.raises(ValueError, match="image shape"):
        concatenate(a, b)
