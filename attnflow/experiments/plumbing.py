"""Shared plumbing of the experiments: run specifications, the training-time budget, training or
reusing the runs of an experiment directory (their outputs: :mod:`.report`).

A *run specification* is a preset name with optional overrides joined by ``+``, e.g.
``glow-digits-imap+model.positions=[2]``, parsed once (:meth:`RunSpec.parse`) into typed
:class:`~attnflow.config.Override` values. Each specification is trained once per seed into
``DIR/runs/<slug>-seed<k>`` with :class:`attnflow.train.Trainer`, from the
:class:`~attnflow.config.RunConfig` that :func:`run_config` builds (no text below the command line).

Budget: an experiment's ``--budget`` minutes of training are split evenly across its runs; each
run gets ``train.time_limit_s`` = its share and ``train.steps`` large enough not to bind (unless
``--set train.steps=N`` caps the steps too), so all runs of an experiment get equal training time
(counted by ``train.clock``: elapsed or CPU seconds). Evaluation is not counted.

Processes: with ``jobs = 1`` the runs train one after another in this process; with ``jobs > 1``
up to that many train at once, each in its own ``attnflow train --config DIR/configs/<run>.json``
process (:mod:`.parallel`), handed its whole configuration as a file, with
``train.threads = max(1, cpus // jobs)`` unless the runs set ``train.threads`` themselves. The
runs' numbers do not depend on ``jobs`` (only their timing does) as long as their thread count is
the same. A run that fails (an error in training, a killed process) does not stop the others: it
becomes a ``failed`` row with its error, and the experiment ends with :class:`ExperimentFailed`
once its report is written.

Resuming: a finished run directory (one holding its report, :class:`attnflow.rundir.RunDir`) is
reused, never evaluated again (its test numbers are read from its report); one holding a
checkpoint is continued (``Trainer(..., resume=True)``), so an interrupted experiment rerun with
the same command picks up where it stopped.
"""
from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..rundir import LOG, RunDir
from ..schema import ConfigError

if TYPE_CHECKING:
    from ..config import Override, RunConfig
    from ..core import Flow

__all__ = [
    "RunSpec", "Settings", "RunResult", "ExperimentInterrupted", "ExperimentFailed", "train_runs", "train_planned",
    "planned_specs", "group_by_spec", "run_config", "load_trained", "refuse_conditional", "say", "TRAIN_STEPS",
    "RESULTS", "CONFIGS",
]

T = TypeVar("T")

#: ``train.steps`` of every experiment run unless set: the time limit ends training long before.
TRAIN_STEPS = 10**8
#: Keys the experiment sets itself (from ``--budget``, ``--clock``, ``--seeds``); ``--set`` may not.
_OWN_KEYS = ("train.time_limit_s", "train.clock", "train.seed")
_SPLIT = re.compile(r"\+(?=(?:model|data|train)\.)")
#: The experiment directory's numbers (beside ``report.md``).
RESULTS = "results.json"
#: The folder of the configurations handed to the runs' ``attnflow train`` processes (``--jobs > 1``).
CONFIGS = "configs"


class ExperimentInterrupted(RuntimeError):
    """A training run of the experiment was stopped by SIGINT / SIGTERM (its checkpoint is kept)."""


class ExperimentFailed(RuntimeError):
    """Training runs of the experiment failed; the report (written) lists them with their errors."""


@dataclass(frozen=True)
class RunSpec:
    """A preset and the keys set on it (:class:`~attnflow.config.Override` values), written
    ``PRESET+section.key=value+...`` (``text``: as given, which names the run's directory)."""

    preset: str
    overrides: tuple[Override, ...] = ()
    text: str = ""

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", "+".join((self.preset, *map(str, self.overrides))))

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """The specification of the command line's ``PRESET+section.key=value...``; its values are
        parsed here, once."""
        from ..config import parse_override

        preset, *overrides = _SPLIT.split(text.strip())
        if not preset:
            raise ValueError(f"run specification {text!r} has no preset name; write PRESET[+section.key=value...]")
        if "+" in preset:
            name, bad = preset.split("+", 1)
            raise ValueError(f"run specification {text!r}: {bad!r} is not an override; write PRESET+section.key=value "
                             f"with its section (model, data or train), e.g. {name}+model.{bad}")
        return cls(preset, tuple(map(parse_override, overrides)), text.strip())

    def plus(self, *overrides: Override) -> RunSpec:
        """This specification with ``overrides`` set too."""
        return RunSpec(self.preset, (*self.overrides, *overrides), "+".join((self.text, *map(str, overrides))))

    def family(self) -> str:
        """The preset's ``model.family``."""
        from ..config import load_preset

        return load_preset(self.preset)["model"]["family"]

    def config(self) -> RunConfig:
        """The preset's configuration with the specification's keys set."""
        from ..config import RunConfig

        return RunConfig.from_preset(self.preset).with_overrides(self.overrides)

    def conditional(self) -> bool:
        """Whether the run's data pairs each image with a condition (SRFlow, Full-Glow)."""
        return self.config().data.condition != "none"

    @property
    def slug(self) -> str:
        """A directory name: the preset, then each override as ``key-value``."""
        preset, *overrides = _SPLIT.split(self.text)
        parts = [preset] + [o.split(".", 1)[-1] for o in overrides]
        return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", p).strip("-") for p in parts)


@dataclass(frozen=True)
class Settings:
    """Everything an experiment needs from its command line (resolved defaults included)."""

    name: str
    out: Path
    budget_minutes: float
    data: str
    specs: tuple[RunSpec, ...]
    seeds: int
    clock: str = "wall"
    device: str | None = None  # None: the presets' train.device (auto)
    overrides: tuple[Override, ...] = ()  # --set, applied to every run whose family uses the key
    runs: tuple[Path, ...] = ()  # --run: existing run directories instead of training
    command: str = ""
    progress: bool = True
    jobs: int = 1  # runs trained at once, each in its own process when > 1
    test_images: int = 0  # the runs' data.test_images: at most the first N test images (0: all)
    options: Any = None  # the experiment's own options (Experiment.options), read with option()

    def option(self, kind: type[T]) -> T:
        """The experiment's own options of type ``kind`` (its defaults when none were set)."""
        return self.options if isinstance(self.options, kind) else kind()

    @property
    def eval_device(self) -> Any:
        from ..device import resolve_device

        return resolve_device(self.device or "auto", fallback_hint="pass --device cpu")


@dataclass
class RunResult:
    """One trained, refused or failed run: its specification, seed, directory and results (its report)."""

    spec: RunSpec
    seed: int
    dir: Path
    status: str  # "trained", "resumed", "reused", "refused" (not trained) or "failed" (training failed)
    error: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status not in ("refused", "failed")

    @property
    def problem(self) -> str:
        """``refused: ERROR`` or ``failed: ERROR`` for a run without results."""
        return f"{self.status}: {self.error}"

    def metrics(self) -> list[dict[str, Any]]:
        return RunDir(self.dir).metrics() if self.ok else []

    def summary(self, root: Path) -> dict[str, Any]:
        """The numbers of this run for tables and the experiment's ``results.json``."""
        shown = self.dir.relative_to(root) if self.dir.is_relative_to(root) else self.dir
        row: dict[str, Any] = {"spec": self.spec.text, "seed": self.seed, "status": self.status, "dir": str(shown)}
        if not self.ok:
            return {**row, "error": self.error}
        test, steps, secs = self.results["test"], self.results["step"], self.results.get("train_seconds")
        row.update({"test_bpd": test["bpd"], "test_bpd_stderr": test["bpd_stderr"], "test_images": test["n"],
                    "upper_bound": test["upper_bound"],
                    "steps": steps, "train_seconds": secs,
                    "seconds_per_step": secs / steps if secs is not None and steps else None})
        if "accuracy" in test:
            row["test_accuracy"] = test["accuracy"]
        return row


def run_config(settings: Settings, spec: RunSpec, seed: int, time_limit_s: float) -> RunConfig:
    """The configuration of one run: the specification's, with the ``--set`` keys the run's family
    uses, then the experiment's own keys (``train.time_limit_s``, ``train.clock``, ``train.seed``;
    ``train.steps``, ``data.test_images`` and, with ``jobs > 1``, ``train.threads`` only where
    neither sets them; ``train.device`` when ``--device`` is given)."""
    from ..models.registry import model_fields
    from .parallel import child_threads

    cfg = spec.config()
    used = [o for o in settings.overrides if o.section != "model" or o.key in model_fields(cfg.model.family)]
    given = {o.name for o in (*spec.overrides, *used)}
    train: dict[str, Any] = {"time_limit_s": time_limit_s, "clock": settings.clock, "seed": seed}
    if "train.steps" not in given:
        train["steps"] = TRAIN_STEPS
    if settings.jobs > 1 and "train.threads" not in given:
        train["threads"] = child_threads(settings.jobs)
    if settings.device:
        train["device"] = settings.device
    data = {"test_images": settings.test_images} if settings.test_images and "data.test_images" not in given else {}
    return cfg.with_overrides(used).replace(train=train, data=data)


def check_overrides(settings: Settings, specs: Iterable[RunSpec]) -> None:
    """Refuse ``--set`` keys the experiment sets itself, and model keys no run's family uses."""
    from ..models.registry import model_fields

    families = {s.family() for s in specs}  # an unknown preset fails here
    for o in settings.overrides:
        if o.name in _OWN_KEYS:
            raise ConfigError(f"--set {o}: {o.name} is set by the experiment (--budget, --clock, --seeds); drop it")
        if o.section == "model" and not any(o.key in model_fields(f) for f in families):
            raise ConfigError(f"--set {o}: no run of this experiment (families {', '.join(sorted(families))}) "
                              f"has the key {o.name}")


def _refusal(settings: Settings, spec: RunSpec, seed: int) -> str:
    """Why a run's configuration cannot be trained (an unknown key, a head count the model
    refuses, ...), or ``""``; the model is built once on the CPU to find out before training."""
    try:
        run_config(settings, spec, seed, 1.0).model.build()
    except (ValueError, TypeError) as exc:
        return " ".join(str(exc).split())
    return ""


def _same_setup(run: RunDir, cfg: RunConfig) -> None:
    """A run directory being reused or resumed must hold a run with the same set-up
    (:meth:`attnflow.rundir.RunDir.setup_changes`)."""
    if changed := run.setup_changes(cfg):
        raise ValueError(f"{run.path} holds a run with a different {' and '.join(changed)} configuration "
                         "than this experiment asks for; choose a new --out or delete that run directory")


@dataclass
class _Pending:
    """A run still to train (or to finish): its place in the plan, progress tag and configuration."""

    index: int
    tag: str
    spec: RunSpec
    seed: int
    dir: Path
    cfg: RunConfig
    resume: bool

    @property
    def start_line(self) -> str:
        return f"{self.tag}: {'resuming' if self.resume else 'training'} into {self.dir}"


def train_runs(settings: Settings, specs: Sequence[RunSpec], seeds: Sequence[int] | None = None) -> list[RunResult]:
    """Train each specification once per seed (default ``range(settings.seeds)``) with an equal
    share of the budget, ``settings.jobs`` at a time; finished runs are reused, interrupted ones
    resumed. Runs whose configuration is refused are returned with status ``"refused"`` and
    their error (they get no budget), runs whose training failed with ``"failed"``; when every
    run is refused, that is an error. Every reused or resumed run directory is checked before
    any training starts."""
    seeds = list(range(settings.seeds)) if seeds is None else list(seeds)
    check_overrides(settings, specs)
    planned = [(spec, seed, _refusal(settings, spec, seed)) for spec in specs for seed in seeds]
    n_ok = sum(not why for *_, why in planned)
    if not n_ok:
        raise ValueError(f"every run of experiment {settings.name} was refused: {planned[0][2]}")
    share = settings.budget_minutes * 60.0 / n_ok
    at_once = (f"; {settings.jobs} at once, each in its own process writing runs/*/{LOG}" if settings.jobs > 1
               else "")
    say(f"{settings.name}: {n_ok} training runs, {share:.4g} s of training each "
        f"({settings.budget_minutes:g} min budget, {settings.clock} clock{at_once}); evaluation is extra")
    results: list[RunResult | None] = []
    pending: list[_Pending] = []
    for i, (spec, seed, why) in enumerate(planned, 1):
        run = RunDir(settings.out / "runs" / f"{spec.slug}-seed{seed}")
        tag = f"[{i}/{len(planned)}] {spec.text} seed {seed}"
        if why:
            say(f"{tag}: refused ({why})")
            results.append(RunResult(spec, seed, run.path, "refused", why))
            continue
        cfg = run_config(settings, spec, seed, share)
        if run.is_finished():
            _same_setup(run, cfg)
            before = run.saved_config()["train"]
            changed = "".join(f", trained with train.{k}={before.get(k)!r}" for k in ("time_limit_s", "clock")
                              if before.get(k) != cfg.train[k])
            say(f"{tag}: finished before, reusing {run.path}{changed}")
            results.append(_finished(spec, seed, run, "reused", tag))
            continue
        resume = run.has_checkpoint()
        if resume:
            _same_setup(run, cfg)
        pending.append(_Pending(len(results), tag, spec, seed, run.path, cfg, resume))
        results.append(None)

    def finished(job: _Pending, error: str) -> None:
        if error:
            say(f"{job.tag}: failed: {error} (log: {RunDir(job.dir).log})")
            results[job.index] = RunResult(job.spec, job.seed, job.dir, "failed", error)
        else:
            status = "resumed" if job.resume else "trained"
            results[job.index] = _finished(job.spec, job.seed, RunDir(job.dir), status, job.tag)

    (_train_here if settings.jobs == 1 else _train_in_processes)(settings, pending, finished)
    return [r for r in results if r is not None]


def _finished(spec: RunSpec, seed: int, run: RunDir, status: str, tag: str) -> RunResult:
    """A finished run from its report (its test numbers, never recomputed)."""
    res = run.results()
    test = res["test"]
    say(f"{tag}: done, test bits/dim {test['bpd']:.4f} ± {test['bpd_stderr']:.4f} after {res['step']} steps "
        f"({res.get('train_seconds', float('nan')):.1f} s of training)")
    return RunResult(spec, seed, run.path, status, results=res)


def _train_here(settings: Settings, pending: Sequence[_Pending], finished: Callable[[_Pending, str], None]) -> None:
    """Train ``pending`` one after another in this process (its progress bars on stderr); a run
    that raises is ``finished`` with its error, its traceback written to the run's log."""
    from ..train import Trainer

    for job in pending:
        say(job.start_line)
        try:
            outcome = Trainer(job.cfg, job.dir, resume=job.resume, progress=settings.progress).run()
        except Exception as exc:
            job.dir.mkdir(parents=True, exist_ok=True)
            with open(RunDir(job.dir).log, "a") as log:
                log.write(traceback.format_exc())
            finished(job, " ".join(str(exc).split()) or type(exc).__name__)
            continue
        if "interrupted_at" in outcome:
            raise ExperimentInterrupted(
                f"run {job.dir} stopped at step {outcome['interrupted_at']}; rerun the same command to resume")
        finished(job, "")


def _train_in_processes(settings: Settings, pending: Sequence[_Pending],
                        finished: Callable[[_Pending, str], None]) -> None:
    """Train ``pending`` in ``attnflow train --config FILE`` processes, ``settings.jobs`` at once
    (:mod:`.parallel`): each run's configuration is written to ``DIR/configs/<run>.json`` and
    handed over whole; each process's output goes to its run's log."""
    from .parallel import ChildRun, run_children

    children = [ChildRun(["train", "--config", str(_write_run_config(settings, job)), "--out", str(job.dir),
                          "--quiet", *(["--resume"] * job.resume)], RunDir(job.dir).log) for job in pending]
    stopped = run_children(children, settings.jobs,
                           lambda i: say(f"{pending[i].start_line} (output: {children[i].log})"),
                           lambda i, error: finished(pending[i], error))
    if stopped:
        raise ExperimentInterrupted(
            f"stopped {len(stopped)} training runs at a step boundary "
            f"({', '.join(str(pending[i].dir) for i in stopped)}); "
            "rerun the same command to resume them")


def _write_run_config(settings: Settings, job: _Pending) -> Path:
    """The file of the configuration ``job`` trains with, for its ``attnflow train`` process."""
    path = settings.out / CONFIGS / f"{job.dir.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job.cfg.to_dict(), indent=2) + "\n")
    return path


def load_trained(run: RunResult | Path, settings: Settings) -> tuple[Flow, RunConfig]:
    """The trained (EMA when kept) model of a run directory on the evaluation device, and its config."""
    from ..train import load_run

    return load_run(run.dir if isinstance(run, RunResult) else run, device=settings.eval_device)


def refuse_conditional(what: Any, experiment: str) -> None:
    """An experiment on unconditional flows refuses a conditional run (a run directory, or a run
    specification before it is trained) in one line."""
    conditional = what.conditional() if isinstance(what, RunSpec) else RunDir(what).config()["data"].get(
        "condition", "none") != "none"
    if conditional:
        kind = "preset" if isinstance(what, RunSpec) else "run"
        raise ValueError(f"{getattr(what, 'text', what)} is a conditional {kind}: the {experiment} experiment works on "
                         f"unconditional runs (the samples experiment, `attnflow sample` and `attnflow eval` take "
                         f"conditional ones)")


def say(message: str) -> None:
    """A progress line on stdout (the trainings' tqdm bars go to stderr)."""
    print(message, flush=True)


def train_planned(settings: Settings, planned: Sequence[tuple[Any, ...]]) -> tuple[list[RunResult],
                                                                                  list[list[RunResult]]]:
    """Train the specification that ends each planned row (``(..., spec)``); every result, and
    each row's runs (one per seed)."""
    results = train_runs(settings, [row[-1] for row in planned])
    groups = group_by_spec(results)
    return results, [groups[row[-1].text] for row in planned]


def planned_specs(plan: Callable[[Settings], Sequence[tuple[Any, ...]]]) -> Callable[[Settings], list[RunSpec]]:
    """The :attr:`~.protocol.Experiment.plan` of an experiment whose ``plan`` gives rows ending
    with their specification."""
    return lambda settings: [row[-1] for row in plan(settings)]


def group_by_spec(results: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by specification text, in order, each with its seeds."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.spec.text, []).append(r)
    return groups
