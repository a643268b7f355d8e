"""Training-step speed and memory of the paper-size presets on the available device, and the cost of
Lipschitz attention in the ACF residual flow.

    python benchmarks/gpu_presets.py [--presets glow-cifar10,denseflow-74-10-cifar10]
                                     [--precision fp32,bf16] [--batch-size 64] [--steps 5]

Device: CUDA when available (``--device`` overrides), else the CPU, where the paper sizes are slow
and large: use a small ``--batch-size`` and ``--steps`` there (the figures then say little about a
GPU). Presets: every ``*-cifar10``, ``*-mnist``, ``*-imagenet32``, ``*-celeba-*`` and
``*-cityscapes`` preset of the registry unless ``--presets`` names some. Each preset and precision
(``train.precision``, :mod:`attnflow.precision`) gets one JSON line: images/s and seconds of a
training step (forward, backward, Adam; median over ``--steps`` after ``--warmup``), peak memory
(``torch.cuda.max_memory_allocated`` since that preset's start on CUDA; on the CPU the process's
peak resident memory so far, ``ru_maxrss``, which only grows from preset to preset) and the
parameter count; a preset that fails (e.g. out of memory) gets a line with its ``error``.

Then the attention overhead: ``acf-resflow-l2-mnist`` at 3 scales x 2 blocks, width 64 (the
overrides of ``benchmarks/acf_step.py``; the preset itself is 16 blocks of width 512) with its L2
attention on scales 1 and 2, against the same model with ``model.attention=none``; steps alternate
between the two models in one process (same batch, same everything), and the overhead is the
ratio of median step times minus one, in percent.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from acf_step import PRESET as ACF_PRESET, overrides as acf_overrides
from attnflow.config import preset_names, resolve_config
from attnflow.core import Flow
from attnflow.device import resolve_device
from attnflow.models import build_from_config
from attnflow.precision import PRECISIONS, mixed_precision

PAPER_SIZES = ("-cifar10", "-mnist", "-imagenet32", "-celeba-", "-cityscapes")


def paper_presets() -> list[str]:
    """The registry's paper-size presets (names containing one of :data:`PAPER_SIZES`)."""
    return [n for n in preset_names() if any(tag in n for tag in PAPER_SIZES)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_fn(model: Flow, batch_size: int, device: torch.device, precision: str) -> Callable[[], float]:
    """A training step of ``model`` on a fixed random batch (and condition); returns its seconds."""
    x = torch.rand(batch_size, *model.shape, device=device) * 0.98 + 0.01
    context = (torch.rand(batch_size, *model.context_shape, device=device)
               if model.context_shape is not None else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with mixed_precision(precision):
            loss = -model.log_prob(x, context).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t0

    return step


def build(preset: str, settings: list[str], device: torch.device) -> Flow:
    torch.manual_seed(0)
    return build_from_config(resolve_config(preset, settings)["model"]).to(device)


def bench_preset(preset: str, precision: str, batch_size: int, steps: int, warmup: int,
                 device: torch.device) -> dict:
    """One JSON row: speed and memory of a training step of ``preset``."""
    row = {"preset": preset, "precision": precision, "batch_size": batch_size, "device": str(device)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model = build(preset, [], device)
        step = step_fn(model, batch_size, device, precision)
        times = [step() for _ in range(warmup + steps)][warmup:]
    except (RuntimeError, ValueError) as exc:  # out of memory, a kernel missing on this device, ...
        return {**row, "error": " ".join(str(exc).split())[:300]}
    median = statistics.median(times)
    return {**row, "train_images_per_s": round(batch_size / median, 2), "train_step_s_median": round(median, 4),
            "peak_memory_mib": round(_peak_mib(device), 1),
            "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process ru_maxrss so far",
            "parameters": sum(p.numel() for p in model.parameters()), "steps": steps}


def attention_overhead(precision: str, batch_size: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Interleaved steps of the ACF model with L2 attention (scales 1, 2) and without attention."""
    kinds = ("l2", "none")
    fns = {k: step_fn(build(ACF_PRESET, acf_overrides(k, "1,2"), device), batch_size, device, precision)
           for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(warmup + steps):
        for k in kinds:
            seconds = fns[k]()
            if i >= warmup:
                times[k].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"comparison": f"{ACF_PRESET} 3 scales x 2 blocks, width 64: l2 attention on scales 1,2 vs none",
            "precision": precision, "batch_size": batch_size, "device": str(device), "steps": steps,
            "step_s_median": {k: round(v, 4) for k, v in med.items()},
            "attention_overhead_percent": round(100 * (med["l2"] / med["none"] - 1), 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="", help="comma-separated presets; default: every paper-size preset")
    p.add_argument("--precision", default="fp32", help=f"comma-separated, among {', '.join(PRECISIONS)}")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-comparison", action="store_true", help="skip the attention-overhead comparison")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    precisions = a.precision.split(",")
    unknown = [q for q in precisions if q not in PRECISIONS]
    presets = a.presets.split(",") if a.presets else paper_presets()
    missing = [n for n in presets if n not in preset_names()]
    if unknown or missing or min(a.batch_size, a.steps) < 1 or a.warmup < 0:
        p.error(f"unknown precision {unknown} (valid: {', '.join(PRECISIONS)}) or preset {missing} "
                "(see attnflow presets), or --batch-size/--steps below 1")
    if device.type == "cpu":
        print(json.dumps({"note": "no CUDA device: CPU timings of paper-size models, with a small batch say "
                                  "little about a GPU", "batch_size": a.batch_size}), flush=True)
    for preset in presets:
        for precision in precisions:
            print(json.dumps(bench_preset(preset, precision, a.batch_size, a.steps, a.warmup, device)), flush=True)
    if not a.no_comparison:
        for precision in precisions:
            print(json.dumps(attention_overhead(precision, a.batch_size, a.steps, a.warmup, device)), flush=True)
    json.dump({"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
               **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
