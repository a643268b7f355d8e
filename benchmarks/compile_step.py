"""``train.compile`` on and off: a training step of each family's preset eager and compiled
(:class:`attnflow.train.compile.CompiledForward`, as the trainer runs it), interleaved in one
process (:mod:`interleaved`), one thread by default.

    python benchmarks/compile_step.py [--presets glow-fmnist-tiny flowpp-fmnist-tiny] [--device cuda]

Prints one JSON line per preset: seconds spent in the compiled model's first steps (the compile
warm-up), median CPU and wall seconds per step eager and compiled, the speed-ups (eager /
compiled) in CPU seconds (the measure on a shared CPU) and in wall seconds (the measure on a GPU,
whose work the CPU clock does not count), the first step's loss both ways (equal up to rounding;
stochastic models such as DenseFlow draw different noise for the two), and ``fell_back``: the
part that failed to compile when the compiled model trained eagerly. On a CPU each compilation
takes minutes (less when inductor's cache already holds its kernels).
"""
from __future__ import annotations

import json
import time

import torch

from interleaved import TrainStep, interleaved, timing_parser

PRESETS = [
    "glow-fmnist-tiny", "glow-fmnist-tiny-imap", "glow-fmnist-tiny-isdp", "flowpp-fmnist-tiny",
    "marflow-fmnist-tiny", "denseflow-fmnist-tiny", "resflow-fmnist-tiny", "acf-resflow-l2-fmnist-tiny",
]


def measure(preset: str, rounds: int, warmup: int, batch_size: int, device: str) -> dict[str, object]:
    eager = TrainStep(preset, batch_size=batch_size, device=device)
    compiled = TrainStep(preset, batch_size=batch_size, device=device, compile=True)
    losses = [eager(), None]
    start = time.perf_counter()
    losses[1] = compiled()  # the same initial weights and batch (one seed): the same first loss
    for _ in range(2):  # later recompilations (ActNorm's initialised flag, say) belong to the warm-up
        compiled()
    warm_up = time.perf_counter() - start
    t_eager, t_compiled = interleaved([eager, compiled], rounds, warmup)
    return {
        "preset": preset, "device": device, "parameters": eager.parameters, "batch_size": eager.batch.shape[0],
        "compile_warm_up_s": round(warm_up, 1), "first_loss": losses,
        "cpu_s_per_step": [round(t_eager["cpu_s"], 4), round(t_compiled["cpu_s"], 4)],
        "wall_s_per_step": [round(t_eager["wall_s"], 4), round(t_compiled["wall_s"], 4)],
        "speedup_cpu": round(t_eager["cpu_s"] / t_compiled["cpu_s"], 3),
        "speedup_wall": round(t_eager["wall_s"] / t_compiled["wall_s"], 3),
        "fell_back": compiled.forward.failure, "threads": torch.get_num_threads(), "rounds": rounds,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    p = timing_parser(__doc__, warmup=2)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for preset in a.presets:
        print(json.dumps(measure(preset, a.rounds, a.warmup, a.batch_size, a.device)), flush=True)


if __name__ == "__main__":
    main()
