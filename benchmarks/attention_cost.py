"""Per-step cost of attention in each family at the Fashion-MNIST table's presets: a training
step with the family's attention against the same family without it, interleaved in one process
(:mod:`interleaved`), one thread by default, batch 64.

    python benchmarks/attention_cost.py [--families flowpp isdp] [--rounds 10] [--threads 1] [--compile]

Prints one JSON line per family: both presets and parameter counts, median CPU and wall seconds
per step, their ratios and the issue-20 target. When the CPU ratio misses its target the line
also holds ``extra_ms_by_op``: the operators whose self CPU time per step grew most from the
attention-free step to the attention step (``torch.profiler``), i.e. where the extra time goes.
``--compile`` compiles both models' forward as ``train.compile = true`` does (minutes per model on
a CPU; the first steps, which compile, are untimed warm-up rounds).
"""
from __future__ import annotations

import json

import torch

from interleaved import TrainStep, interleaved, profile_steps, timing_parser

# family: (attention preset, attention-free preset, target ratio of CPU seconds per step or None)
FAMILIES: dict[str, tuple[str, str, float | None]] = {
    "flowpp": ("flowpp-fmnist-tiny", "flowpp-fmnist-tiny-noattn", 2.0),
    "denseflow": ("denseflow-fmnist-tiny", "denseflow-fmnist-tiny-noattn", 1.25),
    "isdp": ("glow-fmnist-tiny-isdp", "glow-fmnist-tiny", 1.3),
    "imap": ("glow-fmnist-tiny-imap", "glow-fmnist-tiny", 1.1),
    "marflow": ("marflow-fmnist-tiny", "marflow-fmnist-tiny-noattn", 1.15),
    "acf-l2": ("acf-resflow-l2-fmnist-tiny", "resflow-fmnist-tiny", None),
    "acf-lipnorm": ("acf-resflow-lipnorm-fmnist-tiny", "resflow-fmnist-tiny", None),
}


def extra_time_by_op(with_attention: TrainStep, without: TrainStep, top: int = 8) -> list[dict[str, object]]:
    """Operators ordered by how much self CPU time per step they add with attention (medians over
    interleaved profiled steps)."""
    attn, base = profile_steps([with_attention, without])
    extra = [{"op": op, "extra_ms": round(ms - base.get(op, 0.0), 2), "ms_per_step": round(ms, 2)}
             for op, ms in attn.items()]
    return sorted(extra, key=lambda r: r["extra_ms"], reverse=True)[:top]


def measure(family: str, rounds: int, warmup: int, batch_size: int, compile: bool = False) -> dict[str, object]:
    attn_preset, base_preset, target = FAMILIES[family]
    attn, base = (TrainStep(preset, batch_size=batch_size, compile=compile) for preset in (attn_preset, base_preset))
    t_attn, t_base = interleaved([attn, base], rounds, warmup)
    ratio = t_attn["cpu_s"] / t_base["cpu_s"]
    row: dict[str, object] = {
        "family": family, "attention": attn_preset, "without": base_preset,
        "parameters": [attn.parameters, base.parameters], "batch_size": attn.batch.shape[0],
        "cpu_s_per_step": [round(t_attn["cpu_s"], 4), round(t_base["cpu_s"], 4)],
        "wall_s_per_step": [round(t_attn["wall_s"], 4), round(t_base["wall_s"], 4)],
        "cpu_ratio": round(ratio, 3), "wall_ratio": round(t_attn["wall_s"] / t_base["wall_s"], 3),
        "target": target, "met": None if target is None else ratio <= target, "compiled": compile,
        "threads": torch.get_num_threads(), "rounds": rounds, "torch": torch.__version__,
    }
    if target is not None and ratio > target:
        row["extra_ms_by_op"] = extra_time_by_op(attn, base)
    return row


def main(argv: list[str] | None = None) -> None:
    p = timing_parser(__doc__, warmup=3)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--compile", action="store_true", help="compile both models' training forward")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for family in a.families:
        print(json.dumps(measure(family, a.rounds, a.warmup, a.batch_size, a.compile)), flush=True)


if __name__ == "__main__":
    main()
