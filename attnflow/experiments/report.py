"""The outputs of an experiment: aggregation of its runs over seeds, the Markdown of
``report.md`` (header, the experiment's sections, the table of training runs), ``results.json``
and PNG figures (matplotlib on its file-only backend)."""
from __future__ import annotations

import json
import math
import shlex
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..rundir import LOG, RunDir
from .plumbing import RESULTS, ExperimentFailed, RunResult, Settings, say

__all__ = ["row_numbers", "spread", "format_bpd", "markdown_table", "write_outputs", "pyplot", "save_figure",
           "command_line"]


def row_numbers(settings: Settings, runs: Sequence[RunResult]) -> tuple[dict[str, Any], list[str]]:
    """One planned row's numbers (test bits/dim, seconds per step and steps, each spread over its
    seeds; the error when none has results) and its table cells: bits/dim, steps, s/step."""
    ok = [r for r in runs if r.ok]
    if not ok:
        return {"error": runs[0].problem}, [runs[0].problem, "-", "-"]
    numbers = {"test_bpd": spread([r.results["test"]["bpd"] for r in ok]),
               "seconds_per_step": spread([r.summary(settings.out)["seconds_per_step"] for r in ok]),
               "steps": spread([r.results["step"] for r in ok])}
    return numbers, [format_bpd(runs), f"{numbers['steps']['mean']:.0f}", f"{numbers['seconds_per_step']['mean']:.3g}"]


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value), min, max and count of ``values``."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def format_bpd(runs: Sequence[RunResult]) -> str:
    """Test bits/dim of a specification's runs: ``mean ± std (n seeds)`` over several seeds,
    ``value ± s.e.`` (standard error over test images) for one; the status (``refused``,
    ``failed``) when no run has results."""
    ok = [r for r in runs if r.ok]
    if not ok:
        return runs[0].status
    bound = "≤ " if ok[0].results["test"]["upper_bound"] else ""
    if len(ok) == 1:
        t = ok[0].results["test"]
        return f"{bound}{t['bpd']:.4f} ± {t['bpd_stderr']:.4f} s.e."
    s = spread([r.results["test"]["bpd"] for r in ok])
    return f"{bound}{s['mean']:.4f} ± {s['std']:.4f} sd ({s['n']} seeds)"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None`` (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _runs_section(settings: Settings, results: Sequence[RunResult]) -> str:
    rows = []
    for r in results:
        s = r.summary(settings.out)
        if not r.ok:
            rows.append([s["dir"], s["spec"], r.seed, r.problem, "-", "-", "-"])
            continue
        secs = "-" if s["train_seconds"] is None else f"{s['train_seconds']:.1f}"
        rows.append([s["dir"], s["spec"], r.seed, r.status, s["steps"], secs, format_bpd([r])])
    return ("## Training runs\n\n" + markdown_table(
        ["run", "preset + overrides", "seed", "status", "steps", f"train s ({settings.clock})", "test bits/dim"], rows))


def _test_images(settings: Settings, results: Sequence[RunResult]) -> str:
    """Which test images the runs' bits/dim are over, from their results (``n`` per run)."""
    counts = sorted({r.results["test"]["n"] for r in results if r.ok})
    if not counts:
        return "test set of the run's data"
    images = f"{' / '.join(map(str, counts))} test images of each run's data"
    return f"the first {images} (`--test-images {settings.test_images}`)" if settings.test_images else images


def write_outputs(settings: Settings, title: str, description: str, sections: Sequence[str],
                  numbers: dict[str, Any], results: Sequence[RunResult] = ()) -> None:
    """Write ``report.md`` (header, the experiment's sections, the table of training runs) and
    ``results.json`` (settings, every run's numbers and the experiment's ``numbers``); then raise
    :class:`ExperimentFailed` naming the runs whose training failed, if any."""
    trained = [r for r in results if r.status != "refused"]
    budget = (f"{settings.budget_minutes:g} min of training ({settings.clock} clock) split evenly over "
              f"{len(trained)} runs, {settings.budget_minutes * 60 / len(trained):.4g} s each; evaluation extra"
              if trained else "no training (existing runs)")
    header = [
        f"# {title}", "", description, "",
        f"- command: `{settings.command}`",
        f"- data: {settings.data}",
        f"- training budget: {budget}",
        f"- bits/dim: {_test_images(settings, results)}; `± s.e.` is the standard error over those images (one run), "
        "`± sd` the standard deviation over seeds; `≤` marks upper bounds: the one-sample variational bound of "
        "Flow++ (variational dequantization) and DenseFlow (noise augmentation), not importance-weighted",
    ]
    if settings.jobs > 1:
        header.append(f"- processes: up to {settings.jobs} runs trained at once, each in its own process "
                      f"(output in `runs/*/{LOG}`)")
    if settings.overrides:
        header.append(f"- overrides applied to every run that uses the key: `{' '.join(map(str, settings.overrides))}`")
    parts = ["\n".join(header), *sections] + ([_runs_section(settings, results)] if results else [])
    (settings.out / "report.md").write_text("\n\n".join(parts) + "\n")
    payload = {
        "experiment": settings.name, "command": settings.command, "data": settings.data,
        "budget_minutes": settings.budget_minutes, "clock": settings.clock, "jobs": settings.jobs,
        "seeds": settings.seeds,
        "overrides": list(map(str, settings.overrides)), "test_images": settings.test_images if results else None,
        "runs": [r.summary(settings.out) for r in results], **numbers,
    }
    (settings.out / RESULTS).write_text(json.dumps(_finite(payload), indent=2) + "\n")
    say(f"wrote {settings.out / 'report.md'} and {settings.out / RESULTS}")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise ExperimentFailed(
            f"{len(failed)} of {len(trained)} training runs failed: "
            + "; ".join(f"{r.spec.text} seed {r.seed} ({r.error}; log {RunDir(r.dir).log})" for r in failed)
            + "; the report lists them; rerun the same command to retry them (from their checkpoints where kept)")


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg (file-only) backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out ``fig``, write it as a PNG at ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def command_line(argv: Sequence[str]) -> str:
    """The shell command that reproduces an ``attnflow`` invocation."""
    return "attnflow " + shlex.join(argv)
