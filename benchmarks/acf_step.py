"""Training step and inverse of the ACF residual flow of the speed issue, per attention kind.

    python benchmarks/acf_step.py [--kinds none,l2,lipnorm] [--attention-scales 2] [--threads 2]

Configuration: preset ``acf-resflow-l2-mnist`` (Residual Flow on 1x28x28, 3 scales without
factor-out, kernels 3-1-3, LipSwish, coeff 0.98, 4 heads) with 2 blocks per scale, hidden width 64,
batch 64, Russian-roulette log-det with 2 exact terms and the Neumann gradient (20 exact terms in
evaluation). ``--attention-scales`` lists the scales whose branches hold the attention (0 = 28x28,
1 = 14x14, 2 = 7x7; ``all`` = every scale).

Certification effort per training step (the same for every kind, and at least the reference's:
Residual Flows iterates its power method to atol = rtol = 1e-3 at every training forward): every
spectral-normalised convolution is normalised for the weights of that step, by the certified
Gram-iteration bound of its explicit matrix when one side has at most 256 dimensions (the 1x1
convolutions here), otherwise by power iteration warm-started from the previous step and continued
until one more step moves the unit vectors by at most 1e-3 (``model.power_tol``; a stricter rule
than the reference's per-element one). The attention's projection norms are certified Gram bounds
recomputed at every forward pass (no SVD). The ``power_steps`` field gives the power-iteration
steps of every convolution at the last timed step.

The training steps of all kinds are timed in this process, interleaved (one step of each kind in
turn, after ``--warmup`` rounds), so that machine load affects them alike: images/s and step
seconds are medians over ``--steps`` rounds, and the attention overhead is relative to ``none``.
Peak RSS (``resource.getrusage``), the parameter count and the inverse are measured in a separate
process per kind (so that the peak RSS is that kind's own), after ``--warmup`` + 1 training
steps: ``encode`` and ``decode`` seconds in evaluation mode, the fixed-point iterations of every
residual block (model order) under the model's stopping rule (``atol = 1e-6``) and the largest
reconstruction error, which must stay below 1e-5. One JSON object per kind, with torch version
and threads.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from attnflow.config import resolve_config
from attnflow.flows.residual_block import ResidualBlock
from attnflow.models import build_from_config
from attnflow.nets.lipschitz_layers import SpectralNormConv2d

PRESET = "acf-resflow-l2-mnist"
MAX_INVERSE_ERROR = 1e-5


def overrides(kind: str, scales: str) -> list[str]:
    """Config overrides of the issue's configuration for attention ``kind`` on ``scales``."""
    listed = "[]" if scales == "all" else f"[{scales}]"
    return ["model.blocks=2", "model.hidden=64", f"model.attention={kind}", f"model.attention_scales={listed}"]


def build(kind: str, scales: str) -> torch.nn.Module:
    """The model for attention ``kind`` on ``scales`` (seed 0)."""
    torch.manual_seed(0)
    return build_from_config(resolve_config(PRESET, overrides(kind, scales))["model"])


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """One training step (forward, backward, Adam); its seconds."""
    t0 = time.perf_counter()
    loss = -model.log_prob(x).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def step_times(
    kinds: list[str], scales: str, batch_size: int, steps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds of ``steps`` training steps per kind, interleaved across kinds after ``warmup`` rounds,
    and the power-iteration steps of every spectral-normalised convolution at the last step."""
    models = {kind: build(kind, scales).train() for kind in kinds}
    opts = {kind: torch.optim.Adam(m.parameters(), lr=1e-4) for kind, m in models.items()}
    x = torch.rand(batch_size, *models[kinds[0]].shape) * 0.98 + 0.01
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(warmup + steps):
        for kind in kinds:
            seconds = train_step(models[kind], opts[kind], x)
            if i >= warmup:
                times[kind].append(seconds)
    power = {kind: [m.power_steps for m in model.modules() if isinstance(m, SpectralNormConv2d)]
             for kind, model in models.items()}
    return times, power


def memory_and_inverse(kind: str, scales: str, batch_size: int, train_steps: int) -> dict:
    """Peak RSS over ``train_steps`` training steps, then the inverse in evaluation mode."""
    t0 = time.perf_counter()
    model = build(kind, scales).train()
    build_s = time.perf_counter() - t0
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch_size, *model.shape) * 0.98 + 0.01
    for _ in range(train_steps):
        train_step(model, opt, x)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        z = model.encode(x)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        x_rec = model.decode(z)
        decode_s = time.perf_counter() - t0
    error = float((x_rec - x).abs().max())
    return {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_s": round(build_s, 2),
        "encode_s": round(encode_s, 3),
        "decode_s": round(decode_s, 3),
        "inverse_iterations_per_block": [m.last_iterations for m in model.modules() if isinstance(m, ResidualBlock)],
        "inverse_max_abs_error": error,
        "inverse_error_below_1e-5": error < MAX_INVERSE_ERROR,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="none,l2,lipnorm", help="comma-separated attention kinds")
    p.add_argument("--attention-scales", default="2", help='comma-separated scales, or "all"')
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # measure one kind, print its JSON
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    kinds = a.kinds.split(",")
    if a.worker is not None:
        json.dump(memory_and_inverse(a.worker, a.attention_scales, a.batch_size, a.warmup + 1), sys.stdout)
        return
    per_kind = {}
    for kind in kinds:
        command = [sys.executable, __file__, "--worker", kind, "--attention-scales", a.attention_scales,
                   "--batch-size", str(a.batch_size), "--warmup", str(a.warmup), "--threads", str(a.threads)]
        per_kind[kind] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    times, power = step_times(kinds, a.attention_scales, a.batch_size, a.steps, a.warmup)
    medians = {kind: statistics.median(t) for kind, t in times.items()}
    for kind in kinds:
        base = medians.get("none")
        print(json.dumps({
            "attention": kind,
            "attention_scales": a.attention_scales,
            "batch_size": a.batch_size,
            "train_images_per_s": round(a.batch_size / medians[kind], 1),
            "train_step_s": round(medians[kind], 4),
            "train_step_s_all": [round(t, 4) for t in times[kind]],
            "attention_overhead_pct": None if base is None else round(100 * (medians[kind] / base - 1), 1),
            "power_steps": power[kind],
            **per_kind[kind],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()
