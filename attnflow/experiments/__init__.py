"""The papers' experiments as commands (``attnflow experiment NAME --out DIR``): each trains its
runs within a time budget (:mod:`.plumbing`), evaluates them with :mod:`attnflow.evaluate`, and
writes ``report.md``, its PNG figures and ``results.json`` into ``DIR`` (:mod:`.report`).

:data:`DEFAULTS` gathers each experiment's defaults (declared in its own module): training
budget, run specifications (``PRESET[+section.key=value...]``) for each ``--data`` choice, seeds
and test images. The budgets add up to 405 minutes of training for the whole set on
Fashion-MNIST (275 for the papers' figures and tables, 130 for the results ``table``; every run at
least 2.5 minutes); ``attnflow experiment --list`` prints them with each experiment's number of
runs.

Each experiment module declares its :class:`~.protocol.Experiment` (name, description, defaults,
the runs it plans, its report, the type of its own options); the command line's options arrive as
one typed :class:`ExperimentOptions`, resolved against the defaults into the
:class:`~.plumbing.Settings` the experiment runs with (:func:`resolve_settings`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import parse_override
from ..rundir import RunDir
from . import classification, convergence, heads, interpolation, perturbation, positions, samples, table
from .plumbing import RunSpec, Settings
from .protocol import Defaults, Experiment

__all__ = ["EXPERIMENTS", "DEFAULTS", "DATA_SETS", "Defaults", "Experiment", "ExperimentOptions", "resolve_settings",
           "make_settings", "run_experiment", "listing", "count_runs"]

DATA_SETS = ("digits", "fashion-mnist")

EXPERIMENTS: dict[str, Experiment] = {m.EXPERIMENT.name: m.EXPERIMENT for m in (
    convergence, heads, positions, perturbation, interpolation, classification, samples, table)}
#: Each experiment's defaults (:attr:`Experiment.defaults`, declared in its module), by name.
DEFAULTS: dict[str, Defaults] = {name: e.defaults for name, e in EXPERIMENTS.items()}

#: The types of the options one experiment takes; each field is an :class:`ExperimentOptions` field too.
_OPTION_TYPES = tuple(e.options for e in EXPERIMENTS.values() if e.options is not None)


@dataclass(frozen=True)
class ExperimentOptions:
    """The options of ``attnflow experiment NAME --out DIR ...`` as given; ``None`` (or empty) is
    the experiment's default (:data:`DEFAULTS`): ``budget`` minutes of training in all, the run
    specifications ``presets``, ``seeds`` per specification, ``clock`` (``cpu`` when ``jobs > 1``,
    runs then share the cores, else ``wall``), ``device``, ``--set`` ``overrides``, existing
    ``runs`` instead of training, the
    ``command`` recorded in the report, ``progress`` bars, ``jobs`` trained at once and the runs'
    ``test_images``; then the options one experiment takes (its :attr:`Experiment.options` type
    has a field of the same name): the heads experiment's ``heads``, the table's
    ``importance_samples`` / ``importance_images`` (16 draws on the whole test set)."""

    name: str
    out: Path
    budget: float | None = None
    data: str = "fashion-mnist"
    presets: tuple[str, ...] = ()
    seeds: int | None = None
    clock: str | None = None
    device: str | None = None
    overrides: tuple[str, ...] = ()
    heads: tuple[int, ...] | None = None
    runs: tuple[Path, ...] = ()
    command: str = ""
    progress: bool = True
    jobs: int = 1
    importance_samples: int | None = None
    importance_images: int | None = None
    test_images: int | None = None


def count_runs(settings: Settings) -> int:
    """The number of training runs of ``settings`` (refused ones included)."""
    if settings.runs:
        return 0
    return len(EXPERIMENTS[settings.name].plan(settings)) * settings.seeds


def listing(data: str = "fashion-mnist") -> list[str]:
    """One line per experiment on ``data``: name, default budget, number of training runs, each
    run's share of the budget, the test images its runs are evaluated on, and description; then the
    total."""
    lines, minutes, runs = [], 0.0, 0
    for name, experiment in EXPERIMENTS.items():
        n = count_runs(make_settings(name, "unused", data=data))
        budget = DEFAULTS[name].minutes
        minutes, runs = minutes + budget, runs + n
        test = DEFAULTS[name].test_images or "all"
        lines.append(f"{name:15s} {budget:4g} min  {n:3d} runs  {budget / n:4.1f} min/run  test images {test!s:>4}  "
                     f"{experiment.description}")
    lines.append(f"{'(all)':15s} {minutes:4g} min  {runs:3d} runs  on {data}; --jobs 2 on 2 cores: about "
                 f"{minutes / 2:g} min elapsed, evaluation extra")
    return lines


def _own_options(o: ExperimentOptions) -> Any:
    """The experiment's own options object (:attr:`Experiment.options`) from the options given;
    an option of another experiment is refused naming the experiments that take it."""
    own = EXPERIMENTS[o.name].options
    takes = {f.name for f in dataclasses.fields(own)} if own is not None else set()
    given = {f.name: getattr(o, f.name) for kind in _OPTION_TYPES for f in dataclasses.fields(kind)
             if getattr(o, f.name) is not None}
    for name in given.keys() - takes:
        users = [n for n, e in EXPERIMENTS.items() if e.options is not None
                 and name in {f.name for f in dataclasses.fields(e.options)}]
        raise ValueError(f"--{name.replace('_', '-')} applies to the {', '.join(users)} experiment only")
    return None if own is None else own(**given)


def _check(o: ExperimentOptions) -> None:
    """Refuse, in one line, an unknown experiment and the options the experiment does not take."""
    if o.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {o.name!r}; experiments: {', '.join(EXPERIMENTS)} "
                         "(`attnflow experiment --list` describes them)")
    if o.data not in DATA_SETS:
        raise ValueError(f"--data must be one of {', '.join(DATA_SETS)}, got {o.data!r}")
    experiment = EXPERIMENTS[o.name]
    if o.seeds is not None and DEFAULTS[o.name].seeds is None:
        raise ValueError(f"experiment {o.name} evaluates one trained model per preset; --seeds applies to "
                         f"{', '.join(n for n, x in DEFAULTS.items() if x.seeds is not None)}")
    if o.runs and not experiment.takes_runs:
        raise ValueError(f"--run applies to {', '.join(n for n, e in EXPERIMENTS.items() if e.takes_runs)}; "
                         f"experiment {o.name} trains its own runs")
    for run in map(RunDir, o.runs):
        if not run.is_run():
            raise FileNotFoundError(f"--run {run.not_a_run()}; train it with `attnflow train`")
    if (o.test_images or 0) < 0:
        raise ValueError(f"--test-images must be >= 0 (0: the whole test set), got {o.test_images}")
    if o.budget is not None and not o.budget > 0:
        raise ValueError(f"--budget must be a positive number of minutes, got {o.budget}")
    if o.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {o.jobs}")


def resolve_settings(o: ExperimentOptions) -> Settings:
    """The settings of the experiment ``o`` names: its options, with :data:`DEFAULTS` for those
    not given; options an experiment does not take are one-line errors."""
    _check(o)
    own = _own_options(o)
    d = DEFAULTS[o.name]
    specs = tuple(RunSpec.parse(p) for p in (o.presets or (d.digits if o.data == "digits" else d.fashion)))
    return Settings(name=o.name, out=Path(o.out), budget_minutes=d.minutes if o.budget is None else o.budget,
                    data=o.data, specs=specs, seeds=o.seeds or d.seeds or 1,
                    clock=o.clock or ("cpu" if o.jobs > 1 else "wall"), device=o.device,
                    overrides=tuple(parse_override(t) for t in o.overrides), runs=tuple(Path(r) for r in o.runs),
                    command=o.command, progress=o.progress, jobs=o.jobs,
                    test_images=d.test_images if o.test_images is None else o.test_images, options=own)


def make_settings(name: str, out: str | Path, **options: Any) -> Settings:
    """:func:`resolve_settings` of ``ExperimentOptions(name, out, **options)``, sequences given as
    lists or tuples (the short form for Python callers and tests)."""
    given: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return resolve_settings(ExperimentOptions(name, Path(out), **given))


def run_experiment(settings: Settings) -> None:
    """Run the experiment of ``settings`` into ``settings.out``."""
    settings.out.mkdir(parents=True, exist_ok=True)
    EXPERIMENTS[settings.name].run(settings)
