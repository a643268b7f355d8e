"""Comparing training runs: a table of their final results and their test curves as PNG."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..rundir import RunDir

__all__ = ["run_summary", "plot_runs"]


def run_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Name, family, steps, training seconds and the last test bits/dim (± standard error) of a run;
    ``upper_bound``: whether that figure is a bound (from the run's results; ``None`` before the run
    has finished)."""
    run = RunDir(run_dir)
    rows = run.metrics()
    cfg = run.saved_config()
    tests = [r for r in rows if "test_bpd" in r]
    last = tests[-1] if tests else {}
    return {
        "run": str(run.path),
        "family": cfg["model"].get("family"),
        "steps": max((r["step"] for r in rows), default=0),
        "train_s": last.get("train_s"),
        "test_bpd": last.get("test_bpd"),
        "test_bpd_stderr": last.get("test_bpd_stderr"),
        "upper_bound": run.results()["test"]["upper_bound"] if run.is_finished() else None,
        "skipped_steps": sum(r.get("event") == "skipped_non_finite" for r in rows),
        "rollbacks": sum(r.get("event") == "rollback" for r in rows),
    }


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> None:
    """Test bits/dim of several runs against training step and against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run_dir in run_dirs:
        tests = [r for r in RunDir(run_dir).metrics() if "test_bpd" in r]
        label = Path(run_dir).name
        by_step.plot([r["step"] for r in tests], [r["test_bpd"] for r in tests], marker="o", label=label)
        timed = [r for r in tests if "train_s" in r]
        by_time.plot([r["train_s"] for r in timed], [r["test_bpd"] for r in timed], marker="o", label=label)
    by_step.set_xlabel("step")
    by_time.set_xlabel("training seconds")
    by_step.set_ylabel("test bits/dim")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
