"""Sample grids at several temperatures for every model family (Glow, Flow++, mARFlow,
contractive residual flows, DenseFlow): ``x = decode(T * z)``, ``z ~ N(0, I)``, with
:func:`attnflow.evaluate.finite_samples`; samples whose inverse is not finite are counted and
left out of the grid.

A conditional run (SRFlow, Full-Glow) is sampled as ``attnflow sample`` samples it: 4 outputs
for each of its first test conditions, beside the condition and the ground truth.

``--run DIR ...`` samples existing runs; otherwise the experiment trains one preset per family
within the budget.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..heartbeat import heartbeat
from .plumbing import RunResult, Settings, load_trained, say, train_runs
from .protocol import Defaults, Experiment
from .report import markdown_table, write_outputs

if TYPE_CHECKING:
    from ..config import RunConfig

NAME = "samples"
DESCRIPTION = "sample grids at temperatures 0.5, 0.7, 0.85 and 1.0 for every model family"
TEMPERATURES = (0.5, 0.7, 0.85, 1.0)
N_SAMPLES = 64
#: test conditions per grid of a conditional run
N_CONDITIONS = 8


def _conditional_grids(model: Any, cfg: RunConfig, settings: Settings, i: int, run_dir: Path) -> list[str]:
    """A conditional run's cells: at each temperature, a grid of the first
    :data:`N_CONDITIONS` test conditions (rows: condition, bicubic for super-resolution, 4 outputs,
    ground truth; an output that overflowed is black), as ``attnflow sample`` draws them."""
    from ..data import load_configured
    from ..evaluate.superres import save_comparison_grid, sr_scale

    data = load_configured(cfg.data, "test")
    cells = []
    for t in TEMPERATURES:
        png = f"samples/{i}-{run_dir.name}-t{t:g}.png"
        save_comparison_grid(model, data, settings.out / png, sr_scale(cfg.data), [t] * 4, n=N_CONDITIONS)
        cells.append(f"![T={t:g}]({png})")
    return cells


def run(settings: Settings) -> None:
    from ..evaluate import finite_samples, save_image_grid

    results: list[RunResult] = [] if settings.runs else train_runs(settings, settings.specs)
    run_dirs: list[Path] = list(settings.runs) or [r.dir for r in results if r.ok]
    (settings.out / "samples").mkdir(exist_ok=True)
    rows = []
    numbers: dict[str, Any] = {"temperatures": list(TEMPERATURES), "n": N_SAMPLES, "runs": {}}
    for i, run_dir in enumerate(run_dirs):
        say(f"samples: {run_dir}")
        model, cfg = load_trained(run_dir, settings)
        entry: dict[str, Any] = {"family": cfg.model.family, "non_finite": {}}
        cells = []
        if model.context_shape is not None:  # conditional: outputs for the run's own test conditions
            rows.append([f"{entry['family']}: {run_dir.name}", *_conditional_grids(model, cfg, settings, i, run_dir)])
            entry["conditional"] = True
            numbers["runs"][str(run_dir)] = entry
            continue
        for t in TEMPERATURES:
            with heartbeat(f"samples: {run_dir} at T = {t:g}", settings.progress):
                x, bad = finite_samples(model, N_SAMPLES, temperature=t, generator=torch.Generator().manual_seed(0))
            entry["non_finite"][str(t)] = bad.count if bad else 0
            png = f"samples/{i}-{run_dir.name}-t{t:g}.png"
            if len(x):
                save_image_grid(x.cpu(), settings.out / png)
                cells.append(f"![T={t:g}]({png})" + (f" ({bad.count} not finite)" if bad else ""))
            else:
                cells.append(f"all {N_SAMPLES} not finite")
        numbers["runs"][str(run_dir)] = entry
        rows.append([f"{entry['family']}: {run_dir.name}", *cells])
    section = "\n".join([
        "## Samples", "", f"{N_SAMPLES} samples per grid, the same latent draws (seed 0) at every temperature.", "",
        markdown_table(["run", *(f"T = {t:g}" for t in TEMPERATURES)], rows),
    ])
    write_outputs(settings, "Samples at several temperatures", DESCRIPTION + ".", [section], numbers, results)


# one model of each family, with its attention
DEFAULTS = Defaults(20, seeds=None, digits=(
    "glow-digits-imap", "flowpp-digits", "marflow-digits-imap", "acf-resflow-l2-digits", "denseflow-digits"),
    fashion=("glow-fmnist-tiny-imap", "flowpp-fmnist-tiny", "marflow-fmnist-tiny-imap",
             "acf-resflow-l2-fmnist-tiny", "denseflow-fmnist-tiny"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, takes_runs=True, defaults=DEFAULTS)
