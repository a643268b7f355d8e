"""Shared plumbing of the experiments: run specifications, the training-time budget, training or
reusing the runs of an experiment directory, aggregation over seeds, and the outputs
(``report.md``, ``results.json``, figures).

A *run specification* is a preset name with optional overrides joined by ``+``, e.g.
``glow-digits-imap+model.positions=[2]``. Each specification is trained once per seed into
``DIR/runs/<slug>-seed<k>`` with :class:`attnflow.train.Trainer`.

Budget: an experiment's ``--budget`` minutes of training are split evenly across its runs; each
run gets ``train.time_limit_s`` = its share and ``train.steps`` large enough not to bind, so all
runs of an experiment get equal training time (counted by ``train.clock``: elapsed or CPU
seconds). Evaluation is not counted.

Resuming: a run directory holding ``results.json`` is finished and reused; one holding a
checkpoint is continued (``Trainer(..., resume=True)``), so an interrupted experiment rerun with
the same command picks up where it stopped.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..schema import ConfigError

__all__ = [
    "RunSpec", "Settings", "RunResult", "ExperimentInterrupted", "train_runs", "group_by_spec", "spread",
    "format_bpd", "markdown_table", "run_config", "write_outputs", "load_trained", "pyplot", "TRAIN_STEPS",
]

#: ``train.steps`` of every experiment run: the time limit ends training long before.
TRAIN_STEPS = 10**8
#: Keys the experiment sets itself (from ``--budget``, ``--clock``, ``--seeds``); ``--set`` may not.
_OWN_KEYS = ("train.time_limit_s", "train.steps", "train.clock", "train.seed")
_SPLIT = re.compile(r"\+(?=(?:model|data|train)\.)")


class ExperimentInterrupted(RuntimeError):
    """A training run of the experiment was stopped by SIGINT / SIGTERM (its checkpoint is kept)."""


@dataclass(frozen=True)
class RunSpec:
    """A preset and overrides (``section.key=value``) applied to it, written ``PRESET+key=value+...``."""

    preset: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        preset, *overrides = _SPLIT.split(text.strip())
        if not preset:
            raise ValueError(f"run specification {text!r} has no preset name; write PRESET[+section.key=value...]")
        return cls(preset, tuple(overrides))

    def plus(self, *overrides: str) -> RunSpec:
        return replace(self, overrides=(*self.overrides, *overrides))

    def family(self) -> str:
        """The preset's ``model.family``."""
        from ..config import load_preset

        return load_preset(self.preset)["model"]["family"]

    @property
    def text(self) -> str:
        return "+".join((self.preset, *self.overrides))

    @property
    def slug(self) -> str:
        """A directory name: the preset, then each override as ``key-value``."""
        parts = [self.preset] + [o.split(".", 1)[-1] for o in self.overrides]
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
    overrides: tuple[str, ...] = ()  # --set, applied to every run whose family uses the key
    heads: tuple[int, ...] | None = None
    runs: tuple[Path, ...] = ()  # --run: existing run directories instead of training
    command: str = ""
    progress: bool = True

    @property
    def eval_device(self) -> Any:
        from ..device import resolve_device

        return resolve_device(self.device or "auto", fallback_hint="pass --device cpu")


@dataclass
class RunResult:
    """One trained (or refused) run: its specification, seed, directory and ``results.json``."""

    spec: RunSpec
    seed: int
    dir: Path
    status: str  # "trained", "resumed", "reused" or "refused"
    error: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "refused"

    def metrics(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if self.ok else []

    def summary(self, root: Path) -> dict[str, Any]:
        """The numbers of this run for tables and ``results.json``."""
        row: dict[str, Any] = {"spec": self.spec.text, "seed": self.seed, "status": self.status,
                               "dir": str(self.dir.relative_to(root)) if self.dir.is_relative_to(root) else str(self.dir)}
        if not self.ok:
            return {**row, "error": self.error}
        test, steps, secs = self.results["test"], self.results["step"], self.results.get("train_seconds")
        row.update({"test_bpd": test["bpd"], "test_bpd_stderr": test["bpd_stderr"], "upper_bound": test["upper_bound"],
                    "steps": steps, "train_seconds": secs,
                    "seconds_per_step": secs / steps if secs is not None and steps else None})
        if "accuracy" in test:
            row["test_accuracy"] = test["accuracy"]
        return row


def run_config(settings: Settings, spec: RunSpec, seed: int, time_limit_s: float) -> dict[str, Any]:
    """The configuration of one run: preset, the specification's overrides, the ``--set``
    overrides whose key the run's family uses, then the budget's keys."""
    from ..config import resolve_config
    from ..schema import model_fields

    valid = model_fields(spec.family())
    used = [o for o in settings.overrides if not o.startswith("model.") or o.split("=", 1)[0][6:] in valid]
    own = [f"train.time_limit_s={time_limit_s!r}", f"train.steps={TRAIN_STEPS}", f"train.clock={settings.clock!r}",
           f"train.seed={seed}"] + ([f"train.device={settings.device!r}"] if settings.device else [])
    return resolve_config(spec.preset, [*spec.overrides, *used, *own])


def check_overrides(settings: Settings, specs: Iterable[RunSpec]) -> None:
    """Refuse ``--set`` keys the experiment sets itself, and model keys no run's family uses."""
    from ..config import parse_override
    from ..schema import model_fields

    families = {s.family() for s in specs}  # an unknown preset fails here
    for text in settings.overrides:
        section, key, _ = parse_override(text)
        if f"{section}.{key}" in _OWN_KEYS:
            raise ConfigError(f"--set {text}: {section}.{key} is set by the experiment (--budget, --clock, --seeds); "
                              "drop it")
        if section == "model" and not any(key in model_fields(f) for f in families):
            raise ConfigError(f"--set {text}: no run of this experiment (families {', '.join(sorted(families))}) "
                              f"has the key model.{key}")


def _refusal(settings: Settings, spec: RunSpec, seed: int) -> str:
    """Why a run's configuration cannot be trained (an unknown key, a head count the model
    refuses, ...), or ``""``; the model is built once on the CPU to find out before training."""
    from ..models import build_from_config

    try:
        build_from_config(run_config(settings, spec, seed, 1.0)["model"])
    except (ValueError, TypeError) as exc:
        return " ".join(str(exc).split())
    return ""


def _same_setup(run_dir: Path, cfg: dict[str, Any]) -> None:
    """A run directory being reused or resumed must hold the same model and data configuration."""
    saved = json.loads((run_dir / "config.json").read_text())
    changed = [s for s in ("model", "data") if saved.get(s) != cfg[s]]
    if changed:
        raise ValueError(f"{run_dir} holds a run with a different {' and '.join(changed)} configuration than this "
                         "experiment asks for; choose a new --out or delete that run directory")


def train_runs(settings: Settings, specs: Sequence[RunSpec], seeds: Sequence[int] | None = None) -> list[RunResult]:
    """Train each specification once per seed (default ``range(settings.seeds)``) with an equal
    share of the budget; finished runs are reused, interrupted ones resumed. Runs whose
    configuration is refused are returned with status ``"refused"`` and their error (they get
    no budget); when every run is refused, that is an error."""
    from ..train import Trainer

    seeds = list(range(settings.seeds)) if seeds is None else list(seeds)
    check_overrides(settings, specs)
    planned = [(spec, seed, _refusal(settings, spec, seed)) for spec in specs for seed in seeds]
    n_ok = sum(not why for *_, why in planned)
    if not n_ok:
        raise ValueError(f"every run of experiment {settings.name} was refused: {planned[0][2]}")
    share = settings.budget_minutes * 60.0 / n_ok
    say(f"{settings.name}: {n_ok} training runs, {share:.4g} s of training each "
        f"({settings.budget_minutes:g} min budget, {settings.clock} clock); evaluation is extra")
    results = []
    for i, (spec, seed, why) in enumerate(planned, 1):
        run_dir = settings.out / "runs" / f"{spec.slug}-seed{seed}"
        tag = f"[{i}/{len(planned)}] {spec.text} seed {seed}"
        if why:
            say(f"{tag}: refused ({why})")
            results.append(RunResult(spec, seed, run_dir, "refused", why))
            continue
        cfg = run_config(settings, spec, seed, share)
        if (run_dir / "results.json").is_file():
            _same_setup(run_dir, cfg)
            status = "reused"
            before = json.loads((run_dir / "config.json").read_text())["train"]
            changed = "".join(f", trained with train.{k}={before.get(k)!r}" for k in ("time_limit_s", "clock")
                              if before.get(k) != cfg["train"][k])
            say(f"{tag}: finished before, reusing {run_dir}{changed}")
        else:
            resume = (run_dir / "checkpoint.pt").is_file()
            if resume:
                _same_setup(run_dir, cfg)
            status = "resumed" if resume else "trained"
            say(f"{tag}: {'resuming' if resume else 'training'} into {run_dir}")
            outcome = Trainer(cfg, run_dir, resume=resume, progress=settings.progress).run()
            if "interrupted_at" in outcome:
                raise ExperimentInterrupted(
                    f"run {run_dir} stopped at step {outcome['interrupted_at']}; rerun the same command to resume")
        res = json.loads((run_dir / "results.json").read_text())
        results.append(RunResult(spec, seed, run_dir, status, results=res))
        test = res["test"]
        say(f"{tag}: done, test bits/dim {test['bpd']:.4f} ± {test['bpd_stderr']:.4f} after {res['step']} steps "
            f"({res.get('train_seconds', float('nan')):.1f} s of training)")
    return results


def load_trained(run: RunResult | Path, settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The trained (EMA when kept) model of a run directory on the evaluation device, and its config."""
    from ..train import load_run

    return load_run(run.dir if isinstance(run, RunResult) else run, device=settings.eval_device)


def say(message: str) -> None:
    """A progress line on stdout (the trainings' tqdm bars go to stderr)."""
    print(message, flush=True)


# -- aggregation and formatting ------------------------------------------------------------------
def group_by_spec(results: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by specification text, in order, each with its seeds."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.spec.text, []).append(r)
    return groups


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value), min, max and count of ``values``."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def format_bpd(runs: Sequence[RunResult]) -> str:
    """Test bits/dim of a specification's runs: ``mean ± std (n seeds)`` over several seeds,
    ``value ± s.e.`` (standard error over test images) for one; ``refused`` otherwise."""
    ok = [r for r in runs if r.ok]
    if not ok:
        return "refused"
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
            rows.append([s["dir"], s["spec"], r.seed, "refused: " + r.error, "-", "-", "-"])
            continue
        secs = "-" if s["train_seconds"] is None else f"{s['train_seconds']:.1f}"
        rows.append([s["dir"], s["spec"], r.seed, r.status, s["steps"], secs, format_bpd([r])])
    return ("## Training runs\n\n" + markdown_table(
        ["run", "preset + overrides", "seed", "status", "steps", f"train s ({settings.clock})", "test bits/dim"], rows))


def write_outputs(settings: Settings, title: str, description: str, sections: Sequence[str],
                  numbers: dict[str, Any], results: Sequence[RunResult] = ()) -> None:
    """Write ``report.md`` (header, the experiment's sections, the table of training runs) and
    ``results.json`` (settings, every run's numbers and the experiment's ``numbers``)."""
    trained = [r for r in results if r.ok]
    budget = (f"{settings.budget_minutes:g} min of training ({settings.clock} clock) split evenly over "
              f"{len(trained)} runs, {settings.budget_minutes * 60 / len(trained):.4g} s each; evaluation extra"
              if trained else "no training (existing runs)")
    header = [
        f"# {title}", "", description, "",
        f"- command: `{settings.command}`",
        f"- data: {settings.data}",
        f"- training budget: {budget}",
        f"- bits/dim: test set of the run's data; `± s.e.` is the standard error over test images (one run), "
        "`± sd` the standard deviation over seeds; `≤` marks upper bounds (noise-augmented DenseFlow)",
    ]
    if settings.overrides:
        header.append(f"- overrides applied to every run that uses the key: `{' '.join(settings.overrides)}`")
    parts = ["\n".join(header), *sections] + ([_runs_section(settings, results)] if results else [])
    (settings.out / "report.md").write_text("\n\n".join(parts) + "\n")
    payload = {
        "experiment": settings.name, "command": settings.command, "data": settings.data,
        "budget_minutes": settings.budget_minutes, "clock": settings.clock, "seeds": settings.seeds,
        "overrides": list(settings.overrides), "runs": [r.summary(settings.out) for r in results], **numbers,
    }
    (settings.out / "results.json").write_text(json.dumps(_finite(payload), indent=2) + "\n")
    say(f"wrote {settings.out / 'report.md'} and {settings.out / 'results.json'}")


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg (file-only) backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def command_line(argv: Sequence[str]) -> str:
    """The shell command that reproduces an ``attnflow`` invocation."""
    return "attnflow " + shlex.join(argv)
