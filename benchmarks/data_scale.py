"""Memory, start-up time and data wait of training on a large dataset (issue 22).

    python benchmarks/data_scale.py [--sizes 10000,500000] [--processes 1,2] [--items memory,wait]
                                    [--tmp /tmp] [--code DIR] [--device cpu] [--wait-batch 4]

``memory``: for each size a synthetic downsampled-ImageNet directory (``train_data_batch_1..5.npz``,
uint8 ``data [N, 3072]`` and 1-based ``labels``, as :mod:`attnflow.data.npz` reads them, plus a
``val_data.npz`` of ``--val`` images, the same for every size) is written under ``--tmp`` and
deleted afterwards. On it runs

    attnflow train --preset glow-digits --set data.name=imagenet32 --set data.root=DIR
                   --set 'model.shape=[3,32,32]' --set train.steps=3 --set train.batch_size=16

three times: one process (the first run, which converts the dataset into the cache), one process
again (a second run on the converted dataset), and ``torchrun --standalone --nproc_per_node 2``.
Each run is one JSON line: the peak resident memory of every training process (``ru_maxrss`` at
its exit: GNU ``time``'s "maximum resident set size"), and for one process the seconds from launch
to the end of the first step (the first line of ``metrics.jsonl``), of which ``imports_s`` are
spent importing Python, torch (with ``torch._dynamo``, which every torch optimizer imports) and
attnflow before any data is read; ``data_load_s`` is the time a process takes to load the train and
test splits, measured apart. Then a line per process count
compares the sizes: ``peak_rss_growth_mb``, the largest growth of a process's peak from the
smallest to the largest size (target: at most 200 MB), and a line gives the second run's time to
the first step at the largest size (target: under 2 s).

``wait``: ``glow-cifar10`` (the paper size: 3 levels x 32 steps, 512 channels) trains
``--wait-steps`` steps of ``--wait-batch`` images on ``--device`` from a synthetic directory of the
smallest size, with the data cached, and the line gives the mean seconds per step spent waiting
for a batch (``data_wait_s`` of ``metrics.jsonl``), the mean step time and their ratio (target:
under 5%); the first step, before anything could be drawn ahead, is left out.

``--code DIR`` runs the trainings with another checkout's attnflow (e.g. the main branch, for a
before/after comparison). On a shared machine the times are noisy; the memory is not.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MEMORY_SETTINGS = ["data.name=imagenet32", "model.shape=[3,32,32]", "train.steps=3", "train.batch_size=16",
                   "train.log_every=1"]


def write_synthetic_imagenet(root: Path, n: int, val: int, files: int = 5, seed: int = 0) -> None:
    """``files`` training npz files holding ``n`` random 32x32 images, and ``val`` validation images."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    per_file = -(-n // files)
    for i in range(files):
        m = max(0, min(per_file, n - i * per_file))
        np.savez(root / f"train_data_batch_{i + 1}.npz", data=rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, m))
    np.savez(root / "val_data.npz", data=rng.integers(0, 256, (val, 3072), dtype=np.uint8),
             labels=rng.integers(1, 1001, val))


def worker(argv: list[str]) -> None:
    """A training process: ``attnflow`` with the CLI's arguments, reporting on stderr when its
    imports are done and its peak resident memory at exit."""
    def report() -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rank = int(os.environ.get("RANK", 0))
        print(json.dumps({"rank": rank, "peak_rss_kib": peak}), file=sys.stderr, flush=True)

    atexit.register(report)
    import torch._dynamo  # noqa: F401  (imported by every torch optimizer's constructor: 1.5-2 s here)

    import attnflow.cli
    import attnflow.train  # noqa: F401  (the trainer's imports count as imports)

    print(json.dumps({"imported_at": time.time()}), file=sys.stderr, flush=True)
    attnflow.cli.main(argv)


def _train(code: Path, out: Path, preset: str, settings: list[str], processes: int) -> dict:
    """Run a training; its processes' peak memory and, in one process, the time to the first step."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(PYTHONPATH=str(code), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    args = ["train", "--preset", preset, "--out", str(out), "--quiet",
            *[a for s in settings for a in ("--set", s)]]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    start = time.time()
    proc = subprocess.Popen([*launcher, str(Path(__file__).resolve()), "--worker", *args], cwd=code, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, first_step = out / "metrics.jsonl", None
    while proc.poll() is None:
        if first_step is None and metrics.exists() and '"bpd"' in metrics.read_text():
            first_step = time.time() - start
        time.sleep(0.01)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}): {stderr[-3000:]}")
    reports = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    peaks = sorted((r["rank"], r["peak_rss_kib"]) for r in reports if "peak_rss_kib" in r)
    result = {"peak_rss_mb": [round(kib * 1024 / 1e6, 1) for _, kib in peaks],
              "wall_s": round(time.time() - start, 2)}
    if processes == 1:
        [imported] = [r["imported_at"] for r in reports if "imported_at" in r]
        result.update(first_step_s=round(first_step, 2), imports_s=round(imported - start, 2),
                      first_step_after_imports_s=round(first_step - (imported - start), 2))
    result["converted"] = "converting imagenet32 train" in stderr
    return result


LOAD = """
import json, sys, time
from attnflow.data import load_configured
data = {"name": "imagenet32", "root": sys.argv[1], "n_bits": 0}
start = time.perf_counter()
train, test = load_configured(data, "train"), load_configured(data, "test")
print(time.perf_counter() - start)
"""


def _load_seconds(code: Path, root: Path) -> float:
    """Seconds a process takes to load the train and test splits (after its imports)."""
    done = subprocess.run([sys.executable, "-c", LOAD, str(root)], cwd=code, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(code)}, check=True)
    return round(float(done.stdout.split()[-1]), 3)


def memory(sizes: list[int], processes: list[int], val: int, tmp: Path, code: Path) -> None:
    peaks: dict[tuple[str, int], list[list[float]]] = {}
    second_run = None
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=tmp, prefix=f"data-scale-{n}-") as work:
            root = Path(work) / "imagenet32"
            write_synthetic_imagenet(root, n, val)
            env_cache = os.environ.pop("ATTNFLOW_CACHE", None)  # the cache goes beside the data, in work
            try:
                runs = [("first", 1)] + [("second", p) for p in processes]
                for i, (run, p) in enumerate(runs):
                    result = _train(code, Path(work) / f"run{i}", "glow-digits",
                                    [*MEMORY_SETTINGS, f"data.root={root}"], p)
                    line = {"item": "train_run", "images": n, "pixel_bytes": n * 3072, "val_images": val,
                            "processes": p, "run": run, **result}
                    print(json.dumps(line), flush=True)
                    peaks.setdefault((run, p), []).append(result["peak_rss_mb"])
                    if run == "second" and p == 1 and n == max(sizes):
                        second_run = {**result, "data_load_s": _load_seconds(code, root)}
            finally:
                if env_cache is not None:
                    os.environ["ATTNFLOW_CACHE"] = env_cache
    for (run, p), by_size in peaks.items():
        growth = max(large - small for small, large in zip(by_size[0], by_size[-1]))
        print(json.dumps({"item": "peak_rss_growth", "run": run, "processes": p, "from_images": min(sizes),
                          "to_images": max(sizes), "peak_rss_mb": by_size,
                          "peak_rss_growth_mb": round(growth, 1), "target_mb": 200, "met": growth <= 200}),
              flush=True)
    if second_run is not None:
        print(json.dumps({"item": "first_step_second_run", "images": max(sizes), "target_s": 2,
                          **{k: second_run[k] for k in ("first_step_s", "imports_s",
                                                        "first_step_after_imports_s", "data_load_s")},
                          "met": second_run["first_step_s"] < 2,
                          "met_after_imports": second_run["first_step_after_imports_s"] < 2}), flush=True)


def wait(n: int, val: int, tmp: Path, code: Path, device: str, batch: int, steps: int) -> None:
    with tempfile.TemporaryDirectory(dir=tmp, prefix="data-wait-") as work:
        root = Path(work) / "imagenet32"
        write_synthetic_imagenet(root, n, val)
        settings = ["data.name=imagenet32", f"data.root={root}", f"train.batch_size={batch}",
                    f"train.steps={steps}", "train.log_every=1", f"train.device={device}", "data.test_images=8",
                    "train.checkpoint_every=100000"]
        _train(code, Path(work) / "run", "glow-cifar10", settings, 1)
        rows = [json.loads(line) for line in (Path(work) / "run" / "metrics.jsonl").read_text().splitlines()]
        steps_rows = [r for r in rows if "bpd" in r]
        train_s = [r["train_s"] for r in steps_rows]
        step_s = [b - a for a, b in zip(train_s, train_s[1:])]  # from the second step on
        waits = [r["data_wait_s"] for r in steps_rows[1:]]
        mean_wait, mean_step = sum(waits) / len(waits), sum(step_s) / len(step_s)
        print(json.dumps({"item": "data_wait", "preset": "glow-cifar10", "device": device, "batch_size": batch,
                          "steps_measured": len(waits), "data_wait_s_mean": round(mean_wait, 6),
                          "data_wait_s_max": round(max(waits), 6), "step_s_mean": round(mean_step, 4),
                          "fraction": round(mean_wait / mean_step, 5), "target": 0.05,
                          "met": mean_wait / mean_step < 0.05}), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,500000", help="training images per synthetic directory")
    p.add_argument("--val", type=int, default=1000, help="validation images (the same for every size)")
    p.add_argument("--processes", default="1,2", help="process counts of the runs on the converted data")
    p.add_argument("--items", default="memory,wait")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the synthetic data is written")
    p.add_argument("--code", default=str(REPO), help="checkout whose attnflow trains")
    p.add_argument("--device", default="cpu", help="device of the data-wait run")
    p.add_argument("--wait-batch", type=int, default=4)
    p.add_argument("--wait-steps", type=int, default=6)
    a = p.parse_args(argv)
    sizes = sorted(int(s) for s in a.sizes.split(","))
    items = a.items.split(",")
    if "memory" in items:
        memory(sizes, [int(s) for s in a.processes.split(",")], a.val, Path(a.tmp), Path(a.code).resolve())
    if "wait" in items:
        wait(sizes[0], a.val, Path(a.tmp), Path(a.code).resolve(), a.device, a.wait_batch, a.wait_steps)


if __name__ == "__main__":
    main()
