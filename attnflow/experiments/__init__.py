"""The papers' experiments as commands (``attnflow experiment NAME --out DIR``): each trains its
runs within a time budget (:mod:`.plumbing`), evaluates them with :mod:`attnflow.evaluate`, and
writes ``report.md``, its PNG figures and ``results.json`` into ``DIR``.

:data:`DEFAULTS` is the one table of per-experiment defaults: training budget, run
specifications (``PRESET[+section.key=value...]``) for each ``--data`` choice, seeds, and head
counts of the ``heads`` experiment. The budgets add up to 405 minutes of training for the whole
set on Fashion-MNIST (275 for the papers' figures and tables, 130 for the results ``table``; every
run at least 2.5 minutes); ``attnflow experiment --list`` prints them with each experiment's
number of runs.

Each experiment module declares its :class:`~.protocol.Experiment` (name, description, the runs
it plans, its report); the command line's options arrive as one typed
:class:`ExperimentOptions`, resolved against :data:`DEFAULTS` into the
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
from .protocol import Experiment

__all__ = ["EXPERIMENTS", "DEFAULTS", "DATA_SETS", "Defaults", "Experiment", "ExperimentOptions", "resolve_settings",
           "make_settings", "run_experiment", "listing", "count_runs"]

DATA_SETS = ("digits", "fashion-mnist")


@dataclass(frozen=True)
class Defaults:
    """``minutes`` of training in all; run specifications per data set (``digits``: the bundled
    8x8 digits, ``fashion``: Fashion-MNIST); ``seeds`` per specification (``None``: one model per
    specification is evaluated, ``--seeds`` is refused); ``heads``: head counts per model family;
    ``test_images``: each run's test bits/dim is over at most the first that many test images (0: all;
    the digits' 360 are always all; 2000 of Fashion-MNIST's 10000 keep a residual flow's evaluation
    near 3 CPU-minutes instead of 14, at a standard error near 0.02 bits/dim)."""

    minutes: float
    digits: tuple[str, ...]
    fashion: tuple[str, ...]
    seeds: int | None = 1
    heads: tuple[tuple[str, tuple[int, ...]], ...] = ()
    test_images: int = 2000


DEFAULTS: dict[str, Defaults] = {
    # ACF Fig. 3: pairs without / with attention, one plot per family (Flow++: without / with the self-attention
    # of its coupling networks; DenseFlow: without / with Nyström attention in its coupling networks; mARFlow:
    # without / with iMap); 2.5 minutes a run on Fashion-MNIST
    "convergence": Defaults(75, seeds=3, digits=(
        "glow-digits", "glow-digits-imap", "flowpp-digits-noattn", "flowpp-digits", "resflow-digits",
        "acf-resflow-l2-digits", "denseflow-digits-noattn", "denseflow-digits", "marflow-digits",
        "marflow-digits-imap"), fashion=(
        "glow-fmnist-tiny", "glow-fmnist-tiny-imap", "flowpp-fmnist-tiny-noattn", "flowpp-fmnist-tiny",
        "resflow-fmnist-tiny", "acf-resflow-l2-fmnist-tiny", "denseflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny",
        "marflow-fmnist-tiny", "marflow-fmnist-tiny-imap")),
    # ACF Table 2 (Residual Flow + L2: 1, 4, 16 heads); AttnFlow Fig. 14 (iSDP: 1, 3, 5, 7 heads)
    "heads": Defaults(45, digits=("acf-resflow-l2-digits", "glow-digits-isdp"),
                      fashion=("acf-resflow-l2-fmnist-tiny", "glow-fmnist-tiny-isdp"),
                      heads=heads.DEFAULT_HEADS),
    # AttnFlow Fig. 13: the no-attention baseline, then iMap and iSDP at pos-1..4
    "positions": Defaults(45, test_images=0, digits=("glow-digits", "glow-digits-imap", "glow-digits-isdp"),
                          fashion=("glow-fmnist-tiny", "glow-fmnist-tiny-imap", "glow-fmnist-tiny-isdp")),
    # ACF supplement Table 5 / Fig. 2: dot (not Lipschitz), L2, LipNorm, none
    "perturbation": Defaults(40, seeds=None, digits=(
        "acf-resflow-dot-digits", "acf-resflow-l2-digits", "acf-resflow-lipnorm-digits", "resflow-digits"), fashion=(
        "acf-resflow-l2-fmnist-tiny+model.attention=dot", "acf-resflow-l2-fmnist-tiny",
        "acf-resflow-lipnorm-fmnist-tiny", "resflow-fmnist-tiny")),
    # ACF Algorithm 2
    "interpolation": Defaults(10, seeds=None, digits=("acf-resflow-l2-digits",),
                              fashion=("acf-resflow-l2-fmnist-tiny",)),
    # ACF Table 3: the hybrid model with and without attention; Fashion-MNIST runs digits too
    "classification": Defaults(40, digits=("resflow-digits-hybrid", "acf-resflow-l2-digits-hybrid"),
                               fashion=("resflow-digits-hybrid", "acf-resflow-l2-digits-hybrid",
                                        "resflow-fmnist-tiny-hybrid", "acf-resflow-l2-fmnist-tiny-hybrid")),
    # one model of each family, with its attention
    "samples": Defaults(20, seeds=None, digits=(
        "glow-digits-imap", "flowpp-digits", "marflow-digits-imap", "acf-resflow-l2-digits", "denseflow-digits"),
        fashion=("glow-fmnist-tiny-imap", "flowpp-fmnist-tiny", "marflow-fmnist-tiny-imap",
                 "acf-resflow-l2-fmnist-tiny", "denseflow-fmnist-tiny")),
    # the results table: each family without, then with its attention(s), 10 minutes per run on Fashion-MNIST;
    # residual flows without EMA (train.ema_decay=0) so every row is evaluated on its trained weights
    "table": Defaults(130, seeds=None, test_images=0, digits=(
        "glow-digits", "glow-digits-imap", "glow-digits-isdp", "flowpp-digits-noattn", "flowpp-digits",
        "marflow-digits+model.coupling_heads=0", "marflow-digits", "marflow-digits-imap",
        "resflow-digits+train.ema_decay=0", "acf-resflow-l2-digits+train.ema_decay=0",
        "acf-resflow-lipnorm-digits+train.ema_decay=0", "denseflow-digits-noattn", "denseflow-digits"), fashion=(
        "glow-fmnist-tiny", "glow-fmnist-tiny-imap", "glow-fmnist-tiny-isdp", "flowpp-fmnist-tiny-noattn",
        "flowpp-fmnist-tiny", "marflow-fmnist-tiny-noattn", "marflow-fmnist-tiny", "marflow-fmnist-tiny-imap",
        "resflow-fmnist-tiny+train.ema_decay=0", "acf-resflow-l2-fmnist-tiny+train.ema_decay=0",
        "acf-resflow-lipnorm-fmnist-tiny+train.ema_decay=0", "denseflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny")),
}

EXPERIMENTS: dict[str, Experiment] = {m.EXPERIMENT.name: m.EXPERIMENT for m in (
    convergence, heads, positions, perturbation, interpolation, classification, samples, table)}
#: The types of the options one experiment takes; each field is an :class:`ExperimentOptions` field too.
_OPTION_TYPES = tuple(e.options for e in EXPERIMENTS.values() if e.options is not None)


@dataclass(frozen=True)
class ExperimentOptions:
    """The options of ``attnflow experiment NAME --out DIR ...`` as given; ``None`` (or empty) is
    the experiment's default (:data:`DEFAULTS`): ``budget`` minutes of training in all, the run
    specifications ``presets``, ``seeds`` per specification, ``clock`` (``cpu`` when ``jobs > 1``,
    runs then share the cores, else ``wall``), ``device``, ``--set`` ``overrides``,
    ``heads`` (the heads experiment's counts), existing ``runs`` instead of training, the
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
