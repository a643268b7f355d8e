"""Sample grids at several temperatures for every model family (Glow, Flow++, mARFlow,
contractive residual flows, DenseFlow): ``x = decode(T * z)``, ``z ~ N(0, I)``, with
:func:`attnflow.evaluate.finite_samples`; samples whose inverse is not finite are counted and
left out of the grid.

``--run DIR ...`` samples existing runs; otherwise the experiment trains one preset per family
within the budget.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .plumbing import RunResult, Settings, load_trained, markdown_table, say, train_runs, write_outputs

NAME = "samples"
DESCRIPTION = "sample grids at temperatures 0.5, 0.7, 0.85 and 1.0 for every model family"
TAKES_RUNS = True
TEMPERATURES = (0.5, 0.7, 0.85, 1.0)
N_SAMPLES = 64


def run(settings: Settings) -> None:
    from ..evaluate import finite_samples, save_image_grid

    results: list[RunResult] = [] if settings.runs else train_runs(settings, settings.specs)
    run_dirs: list[Path] = list(settings.runs) or [r.dir for r in results if r.ok]
    (settings.out / "samples").mkdir(exist_ok=True)
    rows, numbers = [], {"temperatures": list(TEMPERATURES), "n": N_SAMPLES, "runs": {}}
    for i, run_dir in enumerate(run_dirs):
        say(f"samples: {run_dir}")
        model, cfg = load_trained(run_dir, settings)
        entry: dict[str, Any] = {"family": cfg["model"]["family"], "non_finite": {}}
        cells = []
        for t in TEMPERATURES:
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
