"""Convergence with and without attention (ACF, Fig. 3): training bits/dim against the step and
against training time, mean and min-max range over seeds, one figure per model family.

The curves are the ``bpd`` rows of each run's ``metrics.jsonl`` (training bits/dim of one batch,
every ``train.log_every`` steps, with the seconds of training steps so far, ``train_s``). Over
seeds, the step curves are averaged on the steps every seed logged; the time curves on an even
grid from the latest first logged time to the shortest run's time (each seed's curve linearly
interpolated, never extrapolated). The band is the range (min to max) over seeds, not a standard
deviation: with three seeds a range hides nothing.

The table compares the models of a family at equal steps too (ACF's Fig. 3 is against
iterations): at the last step ``S`` that every run of the family logged, each run's training
bits/dim is the mean of its values logged over the last :data:`WINDOW` of the steps up to ``S``
(steps above ``(1 - WINDOW) * S``; one batch each, so a single value is noisy; a window in steps,
not in logged values, stays near ``S`` in short runs too); the table gives their mean and range
over seeds. The end-of-training column is the same over each run's own last step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .plumbing import RunResult, Settings, group_by_spec, train_runs
from .protocol import Defaults, Experiment
from .report import format_bpd, markdown_table, pyplot, save_figure, spread, write_outputs

NAME = "convergence"
DESCRIPTION = ("ACF Fig. 3: training bits/dim against step and training time, with and without attention, "
               "mean and min-max over seeds, one plot per family")
#: the fraction of the steps (the last ones) over which the table averages a run's logged training bits/dim
WINDOW = 0.1


Logged = list[tuple[int, float, float]]  # (step, training seconds, training bits/dim) per logged step


def _logged(run: RunResult) -> Logged:
    """The logged training bits/dim of ``run``, read once from its ``metrics.jsonl``."""
    return [(m["step"], m["train_s"], m["bpd"]) for m in run.metrics() if "bpd" in m]


def _curves(logs: list[Logged]) -> dict[str, Any]:
    """Mean and min-max of the training bits/dim over the seeds of one specification (one log per
    seed), by step and by time."""
    logs = [rows for rows in logs if rows]
    if not logs:
        return {}
    common = sorted(set.intersection(*({s for s, _, _ in rows} for rows in logs)))
    by_step = np.array([[dict((s, b) for s, _, b in rows)[s] for s in common] for rows in logs])
    horizon = min(rows[-1][1] for rows in logs)
    start = max(rows[0][1] for rows in logs)
    grid = np.linspace(start, horizon, 50) if horizon > start else np.array([horizon])
    by_time = np.array([np.interp(grid, [t for _, t, _ in rows], [b for _, _, b in rows]) for rows in logs])

    def band(values: np.ndarray) -> dict[str, list[float]]:
        return {"mean": values.mean(0).tolist(), "min": values.min(0).tolist(), "max": values.max(0).tolist()}

    return {"steps": common, "by_step": band(by_step), "seconds": grid.tolist(), "by_time": band(by_time)}


def _plot(family: str, curves: dict[str, dict[str, Any]], clock: str, path: Any) -> None:
    plt = pyplot()
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, c in curves.items():
        for ax, x, key in ((ax_step, c["steps"], "by_step"), (ax_time, c["seconds"], "by_time")):
            line, = ax.plot(x, c[key]["mean"], label=label)
            ax.fill_between(x, c[key]["min"], c[key]["max"], color=line.get_color(), alpha=0.2)
    ax_step.set_xlabel("step")
    ax_time.set_xlabel(f"training seconds ({clock} clock)")
    ax_step.set_ylabel("training bits/dim (mean; band: min-max over seeds)")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.suptitle(f"{family}: convergence")
    save_figure(fig, path)


def run(settings: Settings) -> None:
    results = train_runs(settings, settings.specs)
    groups = group_by_spec(results)
    families: dict[str, dict[str, list[RunResult]]] = {}
    for text, runs in groups.items():
        families.setdefault(runs[0].spec.family(), {})[text] = runs
    numbers: dict[str, Any] = {"families": {}}
    sections = []
    for family, specs in families.items():
        logs = {text: [_logged(r) for r in runs if r.ok] for text, runs in specs.items()}
        curves = {text: c for text, seeds in logs.items() if (c := _curves(seeds))}
        common = min((c["steps"][-1] for c in curves.values() if c["steps"]), default=None)
        rows, entry = [], {}
        for text, runs in specs.items():
            ok = [r for r in runs if r.ok]
            last = [b for rows in logs[text] if (b := _mean_bpd(rows)) is not None]
            final = spread(last) if last else None
            equal = ([b for rows in logs[text] if (b := _mean_bpd(rows, common)) is not None]
                     if common is not None else [])
            at_step = spread(equal) if equal else None
            steps = spread([r.results["step"] for r in ok]) if ok else None
            entry[text] = {"test_bpd": spread([r.results["test"]["bpd"] for r in ok]) if ok else None,
                           "final_train_bpd": final, "train_bpd_at_common_step": at_step, "common_step": common,
                           "steps": steps, "curves": curves.get(text),
                           "not_trained": [r.problem for r in runs if not r.ok]}
            rows.append([text, format_bpd(runs), _range(at_step), _range(final),
                         "-" if steps is None else f"{steps['mean']:.0f}"])
        numbers["families"][family] = entry
        lines = [f"## {family}", "", markdown_table(
            ["preset + overrides", "test bits/dim", f"training bits/dim at step {common}", "at the end of training",
             "steps (mean)"], rows), "",
            f"Training bits/dim: each run's mean of the values it logged over the last {WINDOW:.0%} of the steps up to "
            f"step {common} (the last step every run of the family logged), or up to its end; mean [min, max] over "
            "seeds."]
        if curves:
            png = f"convergence-{family}.png"
            _plot(family, curves, settings.clock, settings.out / png)
            lines += ["", f"![{family} convergence]({png})", "",
                     "Lines: mean over seeds of the training bits/dim (one batch per logged step); bands: min to max "
                     "over seeds."]
        sections.append("\n".join(lines))
    write_outputs(settings, "Convergence with and without attention (ACF Fig. 3)", DESCRIPTION + ".",
                  sections, numbers, results)


def _mean_bpd(logged: Logged, step: int | None = None) -> float | None:
    """Mean of a run's training bits/dim logged at steps in ``((1 - WINDOW) * end, end]``, ``end``
    being its last logged step up to ``step`` (its last logged step when ``None``)."""
    rows = [(s, b) for s, _, b in logged if step is None or s <= step]
    if not rows:
        return None
    end = rows[-1][0]
    return float(np.mean([b for s, b in rows if s > (1 - WINDOW) * end or s == end]))


def _range(values: dict[str, float] | None) -> str:
    return "-" if values is None else f"{values['mean']:.4f} [{values['min']:.4f}, {values['max']:.4f}]"


# ACF Fig. 3: pairs without / with attention, one plot per family (Flow++: without / with the self-attention
# of its coupling networks; DenseFlow: without / with Nyström attention in its coupling networks; mARFlow:
# without / with iMap); 2.5 minutes a run on Fashion-MNIST
DEFAULTS = Defaults(75, seeds=3, digits=(
    "glow-digits", "glow-digits-imap", "flowpp-digits-noattn", "flowpp-digits", "resflow-digits",
    "acf-resflow-l2-digits", "denseflow-digits-noattn", "denseflow-digits", "marflow-digits",
    "marflow-digits-imap"), fashion=(
    "glow-fmnist-tiny", "glow-fmnist-tiny-imap", "flowpp-fmnist-tiny-noattn", "flowpp-fmnist-tiny",
    "resflow-fmnist-tiny", "acf-resflow-l2-fmnist-tiny", "denseflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny",
    "marflow-fmnist-tiny", "marflow-fmnist-tiny-imap"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, defaults=DEFAULTS)
