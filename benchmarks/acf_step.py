"""Training step and inverse of the ACF residual flow of the speed issues, per attention kind.

    python benchmarks/acf_step.py [--kinds none,l2,lipnorm] [--attention-scales 2] [--threads 2]
        [--n-exact 4] [--baseline DIR]

Configuration: preset ``acf-resflow-l2-mnist`` (Residual Flow on 1x28x28, 3 scales without
factor-out, kernels 3-1-3, LipSwish, coeff 0.98, 4 heads) with 2 blocks per scale, hidden width 64,
batch 64, Russian-roulette log-det with ``--n-exact`` exact terms (default 4) and the Neumann
gradient (20 exact terms in evaluation). ``--attention-scales`` lists the scales whose branches hold
the attention (0 = 28x28, 1 = 14x14, 2 = 7x7; ``all`` = every scale).

Equal work with the reference (Residual Flows' code): its geometric tail starts one term later, so
its 2 exact terms draw the same distribution of series terms as ``n_exact = 4`` here (issue 19);
hence the default.

Certification per training step (the same for every kind; the ``certification`` field names it per
convolution): every spectral-normalised convolution divides, at every forward pass, by a certified
upper bound of its operator norm for the weights of that step -- ``explicit``: the Gram-iteration
bound of its explicit matrix (a side of at most 256 dimensions), ``kernel``: of its kernel matrix
(1x1), ``circulant``: of its circulant embedding (the 3x3 convolutions here). No iteration runs to
a tolerance. The attention's projection norms are certified Gram bounds recomputed at every
forward pass (no SVD). The reference instead refreshes a power-iteration estimate (a lower bound)
after every optimizer step.

The training steps of all kinds are timed in this process, interleaved (one step of each kind in
turn, after ``--warmup`` rounds), so that machine load affects them alike: images/s and step
seconds are medians over ``--steps`` rounds, and the attention overhead is relative to ``none``.
``--baseline DIR`` adds, interleaved in the same rounds, the same models built by another version of
the library (``DIR`` holds its ``attnflow`` package, e.g. a ``git worktree`` of an older commit,
imported under the name ``attnflow_baseline``) and prints ``speedup_vs_baseline`` per kind.
Peak RSS (``resource.getrusage``), the parameter count and the inverse are measured in a separate
process per kind (so that the peak RSS is that kind's own), after ``--warmup`` + 1 training
steps: ``encode`` and ``decode`` seconds in evaluation mode, the fixed-point iterations of every
residual block (model order) under the model's stopping rule (``atol = 1e-6``) and the largest
reconstruction error, which must stay below 1e-5. One JSON object per kind, with torch version
and threads.
"""
from __future__ import annotations

import argparse
import importlib.util
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


def overrides(kind: str, scales: str, n_exact: int) -> list[str]:
    """Config overrides of the issue's configuration for attention ``kind`` on ``scales``."""
    listed = "[]" if scales == "all" else f"[{scales}]"
    return ["model.blocks=2", "model.hidden=64", f"model.attention={kind}", f"model.attention_scales={listed}",
            f"model.n_exact={n_exact}"]


def build(kind: str, scales: str, n_exact: int, library: object = None) -> torch.nn.Module:
    """The model for attention ``kind`` on ``scales`` (seed 0), built by ``library`` (a package with
    ``config.resolve_config`` and ``models.build_from_config``; this one by default)."""
    torch.manual_seed(0)
    if library is None:
        return build_from_config(resolve_config(PRESET, overrides(kind, scales, n_exact))["model"])
    cfg = library.config.resolve_config(PRESET, overrides(kind, scales, n_exact))
    return library.models.build_from_config(cfg["model"])


def import_baseline(directory: str) -> object:
    """The ``attnflow`` package in ``directory``, imported as ``attnflow_baseline``."""
    spec = importlib.util.spec_from_file_location(
        "attnflow_baseline", f"{directory}/attnflow/__init__.py", submodule_search_locations=[f"{directory}/attnflow"])
    module = importlib.util.module_from_spec(spec)
    sys.modules["attnflow_baseline"] = module
    spec.loader.exec_module(module)
    for name in ("config", "models"):
        importlib.import_module(f"attnflow_baseline.{name}")
    return module


def certification(layer: SpectralNormConv2d) -> str:
    """How the layer's divisor is certified (module docstring)."""
    if layer.kernel_size == (1, 1):
        return "kernel"
    return "explicit" if layer.divides_by_explicit_matrix() else "circulant"


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """One training step (forward, backward, Adam); its seconds."""
    t0 = time.perf_counter()
    loss = -model.log_prob(x).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def step_times(
    kinds: list[str], scales: str, batch_size: int, steps: int, warmup: int, n_exact: int, lr: float,
    baseline: object = None,
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Seconds of ``steps`` training steps per kind (and per ``baseline/kind``), interleaved after
    ``warmup`` rounds on a new batch each round (Adam at ``lr``, so that the weights move as in
    training), and the certification of every spectral-normalised convolution."""
    models = {kind: build(kind, scales, n_exact).train() for kind in kinds}
    if baseline is not None:
        models.update({f"baseline/{kind}": build(kind, scales, n_exact, baseline).train() for kind in kinds})
    opts = {kind: torch.optim.Adam(m.parameters(), lr=lr) for kind, m in models.items()}
    shape = models[kinds[0]].shape
    times: dict[str, list[float]] = {kind: [] for kind in models}
    for i in range(warmup + steps):
        x = torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(i)) * 0.98 + 0.01
        for kind, model in models.items():
            torch.manual_seed(i)  # the same roulette draws for a kind and its baseline
            seconds = train_step(model, opts[kind], x)
            if i >= warmup:
                times[kind].append(seconds)
    certified = {kind: [certification(m) for m in models[kind].modules() if isinstance(m, SpectralNormConv2d)]
                 for kind in kinds}
    return times, certified


def memory_and_inverse(kind: str, scales: str, batch_size: int, train_steps: int, n_exact: int) -> dict:
    """Peak RSS over ``train_steps`` training steps, then the inverse in evaluation mode."""
    t0 = time.perf_counter()
    model = build(kind, scales, n_exact).train()
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
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the timed steps (the presets')")
    p.add_argument("--n-exact", type=int, default=4,
                   help="exact terms of the training log-det (4: the reference's work)")
    p.add_argument("--baseline", default=None, help="a directory holding another version's attnflow package")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # measure one kind, print its JSON
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    kinds = a.kinds.split(",")
    if a.worker is not None:
        json.dump(memory_and_inverse(a.worker, a.attention_scales, a.batch_size, a.warmup + 1, a.n_exact), sys.stdout)
        return
    per_kind = {}
    for kind in kinds:
        command = [sys.executable, __file__, "--worker", kind, "--attention-scales", a.attention_scales,
                   "--batch-size", str(a.batch_size), "--warmup", str(a.warmup), "--threads", str(a.threads),
                   "--n-exact", str(a.n_exact)]
        per_kind[kind] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    baseline = import_baseline(a.baseline) if a.baseline else None
    times, certified = step_times(kinds, a.attention_scales, a.batch_size, a.steps, a.warmup, a.n_exact, a.lr, baseline)
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
            "n_exact": a.n_exact,
            "certification": certified[kind],
            **({"baseline_train_step_s": round(medians[f"baseline/{kind}"], 4),
                "speedup_vs_baseline": round(medians[f"baseline/{kind}"] / medians[kind], 3)} if baseline else {}),
            **per_kind[kind],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()
