"""The dataset cache (issue 22): a split is decoded once into .npy files that later loads map; a
changed source, an interrupted conversion and a corrupt cache are never trusted; errors are one
line. The batch stream reads a process's rows of the same numbers one process draws, and a training
process's memory does not grow with the dataset."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from attnflow.data import (
    BatchSampler,
    BatchStream,
    CacheError,
    ImageDataset,
    cache as cache_module,
    dequantize,
    load_configured,
    load_dataset,
    readers,
    to_float,
)
from attnflow.data.batches import gather
from attnflow.data.cache import CACHE_ENV, cache_directory
from attnflow.data.dataset import reduce_bits
from attnflow.data.pairs import lowres_images

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_imagenet(root: Path, sizes: tuple[int, ...] = (5, 7), n_val: int = 3, seed: int = 0,
                   hwc: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Downsampled-ImageNet npz files of ``sizes`` training images; the training images and
    0-based labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for i, n in enumerate(sizes, start=1):
        x, y = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(1, 1001, n)
        np.savez(root / f"train_data_batch_{i}.npz", data=x.transpose(0, 2, 3, 1) if hwc else x.reshape(n, -1),
                 labels=y)
        images.append(x)
        labels.append(y - 1)
    np.savez(root / "val_data.npz", data=rng.integers(0, 256, (n_val, 3072), dtype=np.uint8),
             labels=rng.integers(1, 1001, n_val))
    return np.concatenate(images), np.concatenate(labels)


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != ".lock")


def only_entry(cache: Path, suffix: str = ".json") -> Path:
    [path] = [p for p in cache.iterdir() if p.name.endswith(suffix)]
    return path


def stderr_lines(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("attnflow data:")]


# ---------------------------------------------------------------- conversion and reuse


def test_conversion_writes_npy_files_that_the_dataset_maps(tmp_path, capfd):
    images, labels = write_imagenet(tmp_path / "data", hwc=True)
    cache = tmp_path / "cache"
    ds = load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=cache)
    assert torch.equal(ds.images, torch.from_numpy(images)) and torch.equal(ds.labels, torch.from_numpy(labels))
    assert ds.levels == 256 and ds.num_classes == 1000 and ds.split == "train"
    [note] = stderr_lines(capfd)
    assert f"converting imagenet32 train (12 images) into {cache}" in note
    manifest = only_entry(cache)
    entry = manifest.name[: -len(".json")]
    assert cache_files(cache) == [f"{entry}.images.npy", f"{entry}.json", f"{entry}.labels.npy"]
    assert str(cache / f"{entry}.images.npy") in Path("/proc/self/maps").read_text()  # mapped, not read in
    assert np.array_equal(np.load(cache / f"{entry}.images.npy"), images)  # a plain .npy file
    record = json.loads(manifest.read_text())
    assert record["fields"]["images"] == {"shape": [12, 3, 32, 32], "dtype": "|u1",
                                          "bytes": (cache / f"{entry}.images.npy").stat().st_size}
    sources = [Path(p).name for p, _, _ in record["sources"]["files"]]
    assert sources == ["train_data_batch_1.npz", "train_data_batch_2.npz"]


def test_a_second_load_decodes_nothing(tmp_path, monkeypatch, capfd):
    images, _ = write_imagenet(tmp_path / "data")
    load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    capfd.readouterr()

    def no_decoding(*args):
        raise AssertionError("the source was decoded")

    monkeypatch.setattr(readers, "npz_layout", no_decoding)
    monkeypatch.setattr(readers, "npz_blocks", no_decoding)
    again = load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, torch.from_numpy(images))
    assert stderr_lines(capfd) == []


def test_the_cache_goes_beside_the_data_or_where_the_user_says(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "one.npz").write_bytes(b"")
    assert cache_directory(data) == data / ".attnflow-cache"
    assert cache_directory(data / "one.npz") == data / ".attnflow-cache"  # a file's directory
    assert cache_directory(Path("/usr/share")) == tmp_path / "xdg" / "attnflow"  # not into system data
    assert cache_directory(None) == tmp_path / "xdg" / "attnflow"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_directory(data) == tmp_path / "env"
    assert cache_directory(data, tmp_path / "given") == tmp_path / "given"


def test_settings_are_cached_separately_and_chunking_changes_no_value(tmp_path, monkeypatch):
    """n_bits and the low-resolution conditions are made chunk by chunk (here one image at a
    time) and equal the same operations on the whole split."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(tmp_path / "data" / "train" / f"{i}.png")
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 1)
    whole = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    cache = tmp_path / "cache"
    plain = load_dataset("folder", "train", root=tmp_path / "data", cache_dir=cache)
    sr = load_dataset("folder", "train", root=tmp_path / "data", cache_dir=cache, n_bits=5, condition="lowres",
                      scale=2)
    assert torch.equal(plain.images, whole) and plain.conditions is None
    reduced = reduce_bits(ImageDataset(whole, None, 256, "x", "train"), 5).images
    assert sr.levels == 32 and torch.equal(sr.images, reduced)
    assert torch.equal(sr.conditions, lowres_images(reduced, 32, 2)) and sr.condition_levels == 32
    assert len([p for p in cache.iterdir() if p.suffix == ".json"]) == 2


def test_train_plus_test_is_one_cached_split(tmp_path):
    images, labels = write_imagenet(tmp_path / "data", n_val=4)
    data = {"name": "imagenet32", "root": str(tmp_path / "data"), "n_bits": 0, "train_on": "train+test"}
    train = load_configured(data, "train")
    test = load_configured(data, "test")
    assert train.split == "train+test" and len(train) == 16
    assert torch.equal(train.images, torch.cat([torch.from_numpy(images), test.images]))
    assert torch.equal(train.labels[:12], torch.from_numpy(labels))


# ---------------------------------------------------------------- nothing untrustworthy is used


def _touch_later(path: Path) -> None:
    """Move the modification time on by a second (a rewrite within the file system's timestamp
    granularity would otherwise keep it)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_changed_source_is_converted_again(tmp_path, capfd):
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_imagenet(root)
    load_dataset("imagenet32", "train", root=root, cache_dir=cache)
    capfd.readouterr()
    images, labels = write_imagenet(root, seed=1)  # same sizes, new pixels
    _touch_later(root / "train_data_batch_2.npz")
    changed = load_dataset("imagenet32", "train", root=root, cache_dir=cache)
    assert torch.equal(changed.images[5:], torch.from_numpy(images[5:]))
    assert f"the source changed: {root / 'train_data_batch_1.npz'} changed" in stderr_lines(capfd)[0]

    np.savez(root / "train_data_batch_3.npz", data=np.zeros((2, 3072), np.uint8), labels=np.ones(2, np.int64))
    assert len(load_dataset("imagenet32", "train", root=root, cache_dir=cache)) == 14
    assert f"{root / 'train_data_batch_3.npz'} is new" in stderr_lines(capfd)[0]
    (root / "train_data_batch_3.npz").unlink()
    assert len(load_dataset("imagenet32", "train", root=root, cache_dir=cache)) == 12
    assert f"{root / 'train_data_batch_3.npz'} was removed" in stderr_lines(capfd)[0]
    assert len([p for p in cache.iterdir() if p.suffix == ".json"]) == 1  # one entry, rewritten


KILLED_CONVERSION = """
import os, signal, sys
from attnflow.data import load_dataset, readers
real = readers.npz_blocks
def dies_at_the_second_file(path, size):
    if path.name == "train_data_batch_2.npz":
        os.kill(os.getpid(), signal.SIGKILL)  # a crash, a power cut: no clean-up runs
    yield from real(path, size)
readers.npz_blocks = dies_at_the_second_file
load_dataset("imagenet32", "train", root=sys.argv[1], cache_dir=sys.argv[2])
"""


def test_a_killed_conversion_is_never_trusted(tmp_path, capfd):
    images, _ = write_imagenet(tmp_path / "data")
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", KILLED_CONVERSION, str(tmp_path / "data"), str(cache)],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = cache_files(cache)
    assert left and all(".tmp-" in name for name in left)  # half-written arrays, no manifest
    ds = load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=cache)
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert not any(".tmp-" in name for name in cache_files(cache))  # the leftovers are removed


def test_an_error_during_conversion_leaves_nothing(tmp_path, monkeypatch):
    write_imagenet(tmp_path / "data")
    real = readers.npz_blocks

    def interrupted(path, size):
        if path.name == "train_data_batch_2.npz":
            raise KeyboardInterrupt
        yield from real(path, size)

    monkeypatch.setattr(readers, "npz_blocks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize("damage", ["truncate", "header", "manifest", "missing"])
def test_a_corrupt_cache_is_converted_again(tmp_path, capfd, damage):
    images, _ = write_imagenet(tmp_path / "data")
    cache = tmp_path / "cache"
    load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=cache)
    capfd.readouterr()
    array, manifest = only_entry(cache, ".images.npy"), only_entry(cache)
    if damage == "truncate":
        array.write_bytes(array.read_bytes()[:-100])
        expected = f"{array} is truncated or corrupt ({array.stat().st_size} bytes, its manifest says"
    elif damage == "header":
        array.write_bytes(b"garbage!" + array.read_bytes()[8:])
        expected = f"{array} is corrupt"
    elif damage == "manifest":
        manifest.write_text(manifest.read_text()[:40])
        expected = f"{manifest} is unreadable"
    else:
        array.unlink()
        expected = f"{array} is missing"
    ds = load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=cache)
    assert torch.equal(ds.images, torch.from_numpy(images))
    [note] = stderr_lines(capfd)[:1]
    assert expected in note and "converting imagenet32 train again" in note


# ---------------------------------------------------------------- one-line errors


def test_a_cache_that_cannot_be_written_is_a_one_line_error(tmp_path):
    write_imagenet(tmp_path / "data")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CacheError, match=rf"imagenet32 train needs converting but it cannot be written in "
                                         rf"{tmp_path / 'file' / 'cache'} \(.*\); set {CACHE_ENV} to a writable "
                                         rf"directory") as err:
        load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=tmp_path / "file" / "cache")
    assert "\n" not in str(err.value)


def test_a_disk_too_small_is_a_one_line_error(tmp_path, monkeypatch):
    write_imagenet(tmp_path / "data")
    cache = tmp_path / "cache"
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(CacheError, match=rf"not enough disk space for the cache of imagenet32 train in {cache}: "
                                         rf"it needs 37,\d+ bytes \(0.00 GB\), 1,000 bytes .* are free; free space "
                                         rf"there or set {CACHE_ENV}=<a directory with room>") as err:
        load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=cache)
    assert "\n" not in str(err.value) and cache_files(cache) == []


def test_a_disk_that_fills_up_while_writing_is_a_one_line_error(tmp_path, monkeypatch):
    write_imagenet(tmp_path / "data")
    cache = tmp_path / "cache"

    def full(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module._ArrayWriter, "write", full)
    with pytest.raises(CacheError, match=rf"the disk filled up while writing the cache of imagenet32 train in "
                                         rf"{cache}: free space there or set {CACHE_ENV}="):
        load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=cache)
    assert cache_files(cache) == []  # no temporary left behind


def test_processes_started_together_convert_once(tmp_path):
    """Two processes loading the same split at once (as under torchrun): one converts, the other
    waits for it and maps the result."""
    images, _ = write_imagenet(tmp_path / "data", sizes=(300, 300))
    script = ("import sys, torch; from attnflow.data import load_dataset; "
              "d = load_dataset('imagenet32', 'train', root=sys.argv[1], cache_dir=sys.argv[2]); "
              "print(int(d.images.sum()))")
    cmd = [sys.executable, "-c", script, str(tmp_path / "data"), str(tmp_path / "cache")]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    assert [int(out) for out, _ in outputs] == [int(images.astype(np.int64).sum())] * 2
    assert sum("converting imagenet32 train" in err for _, err in outputs) == 1


# ---------------------------------------------------------------- the batch stream


def _dataset(n: int = 40) -> ImageDataset:
    images = torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageDataset(images, None, 256, "x", "train")


@pytest.mark.parametrize("prefetch", [True, False])
def test_each_process_gets_its_rows_of_the_global_batch_and_its_noise(prefetch):
    """The reference is the trainer's former formula: one process dequantizes the global batch."""
    data = _dataset()
    sampler, gen = BatchSampler(40, 8, seed=3), torch.Generator().manual_seed(5)
    streams = [BatchStream(data, BatchSampler(40, 8, seed=3), torch.Generator().manual_seed(5),
                           slice(4 * r, 4 * r + 4), prefetch=prefetch) for r in range(2)]
    for _ in range(12):  # spans epochs (5 batches each)
        idx = next(sampler)
        x = dequantize(data.images[idx], 256, generator=gen)
        for r, stream in enumerate(streams):
            batch = next(stream)
            assert torch.equal(batch.index, idx[4 * r : 4 * r + 4]) and batch.context is None
            assert torch.equal(batch.x, x[4 * r : 4 * r + 4])
            assert stream.sampler.state_dict() == sampler.state_dict()  # the record of what was consumed
            assert torch.equal(stream.generator.get_state(), gen.get_state())
    for stream in streams:
        stream.close()


def test_a_restored_state_discards_the_prefetched_batch():
    data = _dataset()
    stream = BatchStream(data, BatchSampler(40, 8, seed=3), torch.Generator().manual_seed(5), slice(0, 8))
    batches = [next(stream) for _ in range(2)]
    saved = (stream.sampler.state_dict(), stream.generator.get_state())  # a checkpoint after 2 steps
    later = [next(stream) for _ in range(3)]
    stream.sampler.load_state_dict(saved[0])  # a rollback to it
    stream.generator.set_state(saved[1])
    again = [next(stream) for _ in range(3)]
    assert all(torch.equal(a.x, b.x) and torch.equal(a.index, b.index) for a, b in zip(later, again))
    assert not torch.equal(batches[0].x, later[0].x)
    stream.close()


def test_rows_are_read_from_the_cache_file(tmp_path):
    images, _ = write_imagenet(tmp_path / "data")
    ds = load_dataset("imagenet32", "train", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert ds.files is not None and set(ds.files) == {"images"}
    index = torch.tensor([11, 0, 7, 7, 3])
    fds: dict = {}
    assert torch.equal(gather(ds, "images", index, fds), torch.from_numpy(images[index.numpy()]))
    array = only_entry(tmp_path / "cache", ".images.npy")
    with open(array, "r+b") as f:
        f.truncate(array.stat().st_size - 10)
    with pytest.raises(CacheError, match=rf"{array} is truncated: row 11 lies past its end; delete the file"):
        gather(ds, "images", index, fds)
    for fd in fds.values():
        os.close(fd)


def test_condition_images_come_with_their_rows(tmp_path):
    """A conditional dataset from the cache: the stream reads each row's low-resolution condition
    from the conditions file, as floats at bin centres."""
    rng = np.random.default_rng(4)
    for i in range(10):
        (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / "train" / f"{i}.png")
    ds = load_dataset("folder", "train", root=tmp_path / "data", cache_dir=tmp_path / "cache", condition="lowres")
    assert set(ds.files) == {"images", "conditions"}
    sampler, gen = BatchSampler(10, 4, seed=1), torch.Generator().manual_seed(2)
    stream = BatchStream(ds, sampler, gen, slice(2, 4))
    for _ in range(4):
        batch = next(stream)
        assert torch.equal(batch.context, to_float(ds.conditions[batch.index], 256))
        assert batch.context.shape == (2, 1, 4, 4)
    stream.close()


# ---------------------------------------------------------------- memory of a training process


PEAK_RSS = textwrap.dedent("""
    import atexit, os, resource, sys
    atexit.register(lambda: print("peak_rss_kib", os.environ.get("RANK", "0"),
                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
    from attnflow.cli import main
    main(sys.argv[1:])
""")


def _train_peak_rss(root: Path, out: Path, processes: int) -> list[int]:
    """The peak resident memory of each process of a training on ``root``, rank by rank."""
    script = out.parent / "peak_rss.py"
    script.write_text(PEAK_RSS)
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = [*launcher, str(script), "train", "--preset", "glow-digits", "--out", str(out), "--quiet",
           *[a for s in ("data.name=imagenet32", f"data.root={root}", "model.shape=[3,32,32]", "model.steps=1",
                         "model.hidden=8", "train.steps=3", "train.batch_size=16", "train.log_every=1",
                         "train.threads=1", "train.device=cpu") for a in ("--set", s)]]
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env[CACHE_ENV] = str(out.parent / "cache")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = sorted(line.split()[1:] for line in done.stderr.splitlines() if line.startswith("peak_rss_kib"))
    assert len(reports) == processes
    return [int(kib) * 1024 for _, kib in reports]


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_training_memory_does_not_grow_with_the_dataset(tmp_path, processes):
    """60,000 images (184 MB of pixels) against 2,000, the same test split: each training process
    (converting, then training 3 steps; with 2 processes under torchrun) peaks within 100 MB of
    the small one. Before the cache, when every reader loaded its split into memory, one process's
    peak grew by 201 MB (421 -> 622 MB)."""
    small, large = tmp_path / "small", tmp_path / "large"
    write_imagenet(small, sizes=(1000, 1000), n_val=64)
    write_imagenet(large, sizes=(30000, 30000), n_val=64)
    try:
        peaks = [_train_peak_rss(root, tmp_path / f"run-{root.name}", processes) for root in (small, large)]
        metrics = (tmp_path / "run-large" / "metrics.jsonl").read_text()
        rows = [json.loads(line) for line in metrics.splitlines()]
        waits = [r["data_wait_s"] for r in rows if "bpd" in r]
        assert len(waits) == 3 and all(0 <= w < 5 for w in waits)
    finally:  # 0.4 GB of files
        for path in [*small.glob("*.npz"), *large.glob("*.npz"), *(tmp_path / "cache").glob("*")]:
            path.unlink()
    for before, after in zip(*peaks):
        assert after - before < 100e6, f"peak memory {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB"
