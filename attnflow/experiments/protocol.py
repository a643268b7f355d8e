"""The experiment protocol: what ``attnflow experiment`` needs from an experiment, as a typed
object each experiment module declares (``EXPERIMENT = Experiment(...)``): its name, description,
:class:`Defaults` (budget, run specifications per data set, seeds, test images), the runs it plans,
the function that writes its report and the type of the options only it takes. An experiment is
its module and its entry in :data:`attnflow.experiments.EXPERIMENTS`; ``DEFAULTS`` there gathers
the defaults by name (the budgets add up to the whole set's, ``attnflow experiment --list``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plumbing import RunSpec, Settings

__all__ = ["Experiment", "Defaults"]


def _given_specs(settings: Settings) -> list[RunSpec]:
    return list(settings.specs)


@dataclass(frozen=True)
class Defaults:
    """``minutes`` of training in all; run specifications per data set (``digits``: the bundled
    8x8 digits, ``fashion``: Fashion-MNIST); ``seeds`` per specification (``None``: one model per
    specification is evaluated, ``--seeds`` is refused); ``test_images``: each run's test bits/dim
    is over at most the first that many test images (0: all; the digits' 360 are always all; 2000
    of Fashion-MNIST's 10000 keep a residual flow's evaluation near 3 CPU-minutes instead of 14, at
    a standard error near 0.02 bits/dim)."""

    minutes: float
    digits: tuple[str, ...]
    fashion: tuple[str, ...]
    seeds: int | None = 1
    test_images: int = 2000


@dataclass(frozen=True)
class Experiment:
    """``name`` (the command's argument) and one-line ``description``; ``defaults`` (its budget and
    run specifications when the command line gives none); ``run(settings)`` trains
    (or reuses) the runs it plans, evaluates them and writes ``report.md``, its figures and
    ``results.json``; ``plan(settings)`` gives the run specifications it trains, each once per
    seed (default: the given ones); ``takes_runs``: whether ``--run DIR`` replaces training;
    ``options``: the frozen dataclass of the options only this experiment takes (each field with
    its default; the command line's option of the same name sets it), which it reads as
    ``settings.option(ItsOptions)``."""

    name: str
    description: str
    run: Callable[[Settings], None]
    _: KW_ONLY
    defaults: Defaults
    plan: Callable[[Settings], list[RunSpec]] = _given_specs
    takes_runs: bool = False
    options: type[Any] | None = None
