"""Time a training step (forward + backward + optimizer) and an inverse pass of any preset.

    python benchmarks/train_step.py --preset glow-digits [--batch-size 64] [--threads 2]

Prints one JSON object: images/s (median over runs, after warm-up), peak memory, parameter
count, torch version and thread count.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from attnflow.config import resolve_config
from attnflow.models import build_from_config


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(preset: str, overrides: list[str], batch_size: int | None, runs: int, warmup: int, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = resolve_config(preset, overrides)
    model = build_from_config(cfg["model"])
    bs = batch_size or cfg["train"]["batch_size"]
    x = torch.rand(bs, *model.shape) * 0.98 + 0.01
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def train_step() -> None:
        loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    step_times = timed(train_step)
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        inverse_times = timed(lambda: model.decode(z))
        err = float((model.decode(z) - x).abs().max())
    return {
        "preset": preset,
        "overrides": overrides,
        "batch_size": bs,
        "train_images_per_s": bs / statistics.median(step_times),
        "train_step_s_median": statistics.median(step_times),
        "inverse_images_per_s": bs / statistics.median(inverse_times),
        "inverse_max_abs_error": err,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True)
    p.add_argument("--set", action="append", default=[], help="override, e.g. model.hidden=32")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = torch default")
    a = p.parse_args(argv)
    json.dump(bench(a.preset, a.set, a.batch_size, a.runs, a.warmup, a.threads), sys.stdout)
    print()


if __name__ == "__main__":
    main()
