"""The papers' experiments as commands (``attnflow experiment NAME --out DIR``): each trains its
runs within a time budget (:mod:`.plumbing`), evaluates them with :mod:`attnflow.evaluate`, and
writes ``report.md``, its PNG figures and ``results.json`` into ``DIR``.

:data:`DEFAULTS` is the one table of per-experiment defaults: training budget, run
specifications (``PRESET[+section.key=value...]``) for each ``--data`` choice, seeds, and head
counts of the ``heads`` experiment.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import classification, convergence, heads, interpolation, perturbation, positions, samples
from .plumbing import RunSpec, Settings

__all__ = ["EXPERIMENTS", "DEFAULTS", "DATA_SETS", "Defaults", "make_settings", "run_experiment", "listing"]

DATA_SETS = ("digits", "fashion-mnist")


@dataclass(frozen=True)
class Defaults:
    """``minutes`` of training in all; run specifications per data set (``digits``: the bundled
    8x8 digits, ``fashion``: Fashion-MNIST); ``seeds`` per specification (``None``: one model per
    specification is evaluated, ``--seeds`` is refused); ``heads``: head counts per model family."""

    minutes: float
    digits: tuple[str, ...]
    fashion: tuple[str, ...]
    seeds: int | None = 1
    heads: tuple[tuple[str, tuple[int, ...]], ...] = ()


DEFAULTS: dict[str, Defaults] = {
    # ACF Fig. 3: pairs without / with attention, one plot per family (DenseFlow: without / with Nyström
    # attention in its coupling networks; mARFlow: without / with iMap)
    "convergence": Defaults(120, seeds=3, digits=(
        "glow-digits", "glow-digits-imap", "resflow-digits", "acf-resflow-l2-digits",
        "denseflow-digits-noattn", "denseflow-digits", "marflow-digits", "marflow-digits-imap"), fashion=(
        "glow-fmnist-tiny", "glow-fmnist-tiny-imap", "resflow-fmnist-tiny", "acf-resflow-l2-fmnist-tiny",
        "denseflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny", "marflow-fmnist-tiny", "marflow-fmnist-tiny-imap")),
    # ACF Table 2 (Residual Flow + L2: 1, 4, 16 heads); AttnFlow Fig. 14 (iSDP: 1, 3, 5, 7 heads)
    "heads": Defaults(90, digits=("acf-resflow-l2-digits", "glow-digits-isdp"),
                      fashion=("acf-resflow-l2-fmnist-tiny", "glow-fmnist-tiny-isdp"),
                      heads=(("residual", (1, 4, 16)), ("glow", (1, 3, 5, 7)))),
    # AttnFlow Fig. 13: the no-attention baseline, then iMap and iSDP at pos-1..4
    "positions": Defaults(90, digits=("glow-digits", "glow-digits-imap", "glow-digits-isdp"),
                          fashion=("glow-fmnist-tiny", "glow-fmnist-tiny-imap", "glow-fmnist-tiny-isdp")),
    # ACF supplement Table 5 / Fig. 2: dot (not Lipschitz), L2, LipNorm, none
    "perturbation": Defaults(60, seeds=None, digits=(
        "acf-resflow-dot-digits", "acf-resflow-l2-digits", "acf-resflow-lipnorm-digits", "resflow-digits"), fashion=(
        "acf-resflow-l2-fmnist-tiny+model.attention=dot", "acf-resflow-l2-fmnist-tiny",
        "acf-resflow-lipnorm-fmnist-tiny", "resflow-fmnist-tiny")),
    # ACF Algorithm 2
    "interpolation": Defaults(20, seeds=None, digits=("acf-resflow-l2-digits",),
                              fashion=("acf-resflow-l2-fmnist-tiny",)),
    # ACF Table 3: the hybrid model with and without attention; Fashion-MNIST runs digits too
    "classification": Defaults(60, digits=("resflow-digits-hybrid", "acf-resflow-l2-digits-hybrid"),
                               fashion=("resflow-digits-hybrid", "acf-resflow-l2-digits-hybrid",
                                        "resflow-fmnist-tiny-hybrid", "acf-resflow-l2-fmnist-tiny-hybrid")),
    # one model of each family, with its attention
    "samples": Defaults(75, seeds=None, digits=(
        "glow-digits-imap", "flowpp-digits", "marflow-digits-imap", "acf-resflow-l2-digits", "denseflow-digits"),
        fashion=("glow-fmnist-tiny-imap", "flowpp-fmnist-tiny", "marflow-fmnist-tiny-imap", "acf-resflow-l2-fmnist-tiny",
                 "denseflow-fmnist-tiny")),
}

EXPERIMENTS: dict[str, ModuleType] = {m.NAME: m for m in (
    convergence, heads, positions, perturbation, interpolation, classification, samples)}


def listing() -> list[str]:
    """One line per experiment: name, default budget and description."""
    return [f"{name:15s} {DEFAULTS[name].minutes:4g} min  {m.DESCRIPTION}" for name, m in EXPERIMENTS.items()]


def make_settings(
    name: str,
    out: str | Path,
    budget: float | None = None,
    data: str = "fashion-mnist",
    presets: Sequence[str] = (),
    seeds: int | None = None,
    clock: str = "wall",
    device: str | None = None,
    overrides: Sequence[str] = (),
    head_counts: Sequence[int] | None = None,
    runs: Sequence[str | Path] = (),
    command: str = "",
    progress: bool = True,
) -> Settings:
    """The settings of experiment ``name`` from its options, with :data:`DEFAULTS` for those not
    given; options an experiment does not take are one-line errors."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)} "
                         "(`attnflow experiment --list` describes them)")
    if data not in DATA_SETS:
        raise ValueError(f"--data must be one of {', '.join(DATA_SETS)}, got {data!r}")
    d = DEFAULTS[name]
    if seeds is not None and d.seeds is None:
        raise ValueError(f"experiment {name} evaluates one trained model per preset; --seeds applies to "
                         f"{', '.join(n for n, x in DEFAULTS.items() if x.seeds is not None)}")
    if head_counts is not None and name != "heads":
        raise ValueError("--heads applies to the heads experiment only")
    if runs and not getattr(EXPERIMENTS[name], "TAKES_RUNS", False):
        raise ValueError(f"--run applies to {', '.join(n for n, m in EXPERIMENTS.items() if getattr(m, 'TAKES_RUNS', False))}; "
                         f"experiment {name} trains its own runs")
    for run in runs:
        if not (Path(run) / "config.json").is_file():
            raise FileNotFoundError(f"--run {run} is not a run directory (no config.json); train it with `attnflow train`")
    if budget is not None and not budget > 0:
        raise ValueError(f"--budget must be a positive number of minutes, got {budget}")
    specs = tuple(RunSpec.parse(p) for p in (presets or (d.digits if data == "digits" else d.fashion)))
    return Settings(name=name, out=Path(out), budget_minutes=d.minutes if budget is None else budget, data=data,
                    specs=specs, seeds=seeds or d.seeds or 1, clock=clock, device=device, overrides=tuple(overrides),
                    heads=None if head_counts is None else tuple(head_counts), runs=tuple(Path(r) for r in runs),
                    command=command, progress=progress)


def run_experiment(settings: Settings) -> None:
    """Run the experiment of ``settings`` into ``settings.out``."""
    settings.out.mkdir(parents=True, exist_ok=True)
    EXPERIMENTS[settings.name].run(settings)
