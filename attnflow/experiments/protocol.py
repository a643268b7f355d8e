"""The experiment protocol: what ``attnflow experiment`` needs from an experiment, as a typed
object each experiment module declares (``EXPERIMENT = Experiment(...)``) instead of module
attributes read with defaults.

The per-experiment defaults (budget, run specifications per data set, seeds, head counts, test
images) stay in one table, :data:`attnflow.experiments.DEFAULTS` (keyed by :attr:`Experiment.name`),
whose budgets add up to the whole set's.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plumbing import RunSpec, Settings

__all__ = ["Experiment"]


def _given_specs(settings: Settings) -> list[RunSpec]:
    return list(settings.specs)


@dataclass(frozen=True)
class Experiment:
    """``name`` (the command's argument) and one-line ``description``; ``run(settings)`` trains
    (or reuses) the runs it plans, evaluates them and writes ``report.md``, its figures and
    ``results.json``; ``plan(settings)`` gives the run specifications it trains, each once per
    seed (default: the given ones); ``takes_runs``: whether ``--run DIR`` replaces training;
    ``options``: the frozen dataclass of the options only this experiment takes (each field with
    its default; the command line's option of the same name sets it), which it reads as
    ``settings.option(ItsOptions)``."""

    name: str
    description: str
    run: Callable[[Settings], None]
    plan: Callable[[Settings], list[RunSpec]] = _given_specs
    takes_runs: bool = False
    options: type[Any] | None = None
