"""The results table: every model family with and without its attention, one model per
specification trained for the same time, evaluated on the whole test set (``--test-images N``: the
first N; the report's header names the images).

Columns: family, specification, attention (from the run's model configuration), parameter count
(of the model built from the run's saved configuration), steps and seconds of training, test
bits/dim with its standard error over test images (the run's results), and for rows whose bits/dim
are an upper bound (``upper_bound`` in the results: DenseFlow's noise augmentation, Flow++ with
variational dequantization) the importance-weighted estimate of Burda et al. (2016) with ``K``
noise draws (:func:`attnflow.evaluate.importance.importance_weighted_bits_per_dim`; DenseFlow,
Grcić et al. 2021, evaluates this way). The last column is the difference to the family's
no-attention row, ``delta = bpd - bpd_none``, with the standard error
``sqrt(se^2 + se_none^2)`` (the two errors taken as independent; both are over the same test
images, so this overstates the error of a difference of positively correlated figures).

Importance-weighted estimates are stored in the experiment's ``results.json`` with the run's step,
test bits/dim, ``K`` and image count; a rerun into the same ``--out`` reuses an estimate when all
of those match.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..rundir import RunDir
from .plumbing import RESULTS, RunResult, Settings, say, train_runs
from .protocol import Defaults, Experiment
from .report import markdown_table, pyplot, save_figure, write_outputs

if TYPE_CHECKING:
    from ..config import ModelConfig

NAME = "table"
DESCRIPTION = ("the results table: every family with and without its attention at equal training time; "
               "parameters, steps, test bits/dim ± s.e., importance-weighted where it is a bound, difference to "
               "the no-attention row")
FAMILY_NAMES = {"glow": "Glow", "flowpp": "Flow++", "marflow": "mARFlow", "residual": "Residual Flow",
                "denseflow": "DenseFlow"}
#: Images per batch and noise draws per call of the importance-weighted evaluation.
IW_BATCH, IW_CHUNK = 64, 4


@dataclass(frozen=True)
class TableOptions:
    """The table experiment's own options: ``importance_samples``, the noise draws K of the
    importance-weighted bits/dim of rows whose bits/dim are a bound (0: none), on the first
    ``importance_images`` test images (0: the whole test set)."""

    importance_samples: int = 16
    importance_images: int = 0

    def __post_init__(self) -> None:
        if self.importance_samples < 0 or self.importance_images < 0:
            raise ValueError(f"--importance-samples and --importance-images must be >= 0 (0: none / the whole test "
                             f"set), got {self.importance_samples} and {self.importance_images}")


def attention_of(model: Mapping[str, Any]) -> str:
    """The attention of a resolved ``[model]`` section in words (``none`` without any): invertible
    attention between flow steps (``attention`` at ``positions``; a residual flow's attention in
    its branches), self-attention in coupling networks (``coupling_heads``), DenseFlow's Nyström
    attention (``heads``)."""
    parts = []
    kind = model.get("attention", "none")
    if kind != "none":
        where = f" at pos-{','.join(map(str, model['positions']))}" if model.get("positions") else ""
        parts.append(f"{kind}{where}, {_heads(model.get('heads', 1))}")
    if model.get("coupling_heads", 0):
        parts.append(f"coupling self-attention, {_heads(model['coupling_heads'])}")
    if model["family"] == "denseflow" and model.get("heads", 0):
        parts.append(f"Nyström, {_heads(model['heads'])}")
    return " + ".join(parts) or "none"


def _heads(n: int) -> str:
    return f"{n} head{'s' * (n != 1)}"


def parameter_count(model: ModelConfig) -> int:
    """The number of parameters of the model a ``[model]`` section builds."""
    return sum(p.numel() for p in model.build().parameters())


def _previous(out: Path) -> dict[str, dict[str, Any]]:
    """Importance-weighted estimates of an earlier ``results.json`` in ``out``, by run directory."""
    path = out / RESULTS
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    return {r["dir"]: r["importance_weighted"] for r in rows if r.get("importance_weighted")}


def _importance(run: RunResult, settings: Settings, cached: dict[str, Any] | None) -> dict[str, Any]:
    """The importance-weighted test bits/dim of a finished run (``cached`` when it was computed
    for the same run state, ``K`` and image count)."""
    from ..data import load_configured
    from ..evaluate.importance import importance_weighted_bits_per_dim
    from ..heartbeat import heartbeat
    from .plumbing import load_trained

    opts = settings.option(TableOptions)
    key = {"k": opts.importance_samples, "images": opts.importance_images, "run_step": run.results["step"],
           "run_test_bpd": run.results["test"]["bpd"]}
    if cached and all(cached.get(k) == v for k, v in key.items()):
        say(f"{run.spec.text}: reusing its importance-weighted estimate (K = {key['k']})")
        return cached
    model, cfg = load_trained(run, settings)
    data = load_configured(cfg.data, "test")
    images = data.images[: opts.importance_images or None]
    say(f"{run.spec.text}: importance-weighted bits/dim, K = {key['k']} on {len(images)} test images")
    start = time.process_time()
    with heartbeat(f"{run.spec.text}: importance-weighted bits/dim", settings.progress):
        iw = importance_weighted_bits_per_dim(model, images, data.levels, key["k"], batch_size=IW_BATCH,
                                              chunk=IW_CHUNK)
    return {**iw, **key, "cpu_seconds": time.process_time() - start}


def _row(run: RunResult, settings: Settings, previous: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one table row."""
    summary = run.summary(settings.out)
    rundir = RunDir(run.dir)
    if not run.ok or not rundir.is_run():
        return {**summary, "family": run.spec.family(), "attention": "-"}
    cfg = rundir.config()
    row = {**summary, "family": cfg.model.family, "attention": attention_of(cfg.model),
           "parameters": parameter_count(cfg.model), "ema_decay": cfg.train.ema_decay}
    if summary["upper_bound"] and settings.option(TableOptions).importance_samples:
        row["importance_weighted"] = _importance(run, settings, previous.get(summary["dir"]))
    return row


def _deltas(rows: list[dict[str, Any]]) -> None:
    """Add each row's difference to the first no-attention row of its family (test bits/dim, and
    the importance-weighted estimates where both rows have one)."""
    base: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["attention"] == "none" and "test_bpd" in r:
            base.setdefault(r["family"], r)
    for r in rows:
        b = base.get(r["family"])
        if b is None or "test_bpd" not in r:
            continue
        r["baseline"] = b["spec"]
        r["delta_bpd"] = r["test_bpd"] - b["test_bpd"]
        r["delta_bpd_stderr"] = math.hypot(r["test_bpd_stderr"], b["test_bpd_stderr"])
        if "importance_weighted" in r and "importance_weighted" in b:
            mine, theirs = r["importance_weighted"], b["importance_weighted"]
            r["delta_iw_bpd"] = mine["bpd"] - theirs["bpd"]
            r["delta_iw_bpd_stderr"] = math.hypot(mine["bpd_stderr"], theirs["bpd_stderr"])


def _delta_cell(r: dict[str, Any]) -> str:
    """``+d ± se (verdict)`` on the importance-weighted estimates when both rows have one, else on
    the test bits/dim; the verdict compares ``|d|`` with two standard errors."""
    if "baseline" not in r:
        return "-"
    if r["baseline"] == r["spec"]:
        return "baseline"
    iw = "delta_iw_bpd" in r
    d, se = (r["delta_iw_bpd"], r["delta_iw_bpd_stderr"]) if iw else (r["delta_bpd"], r["delta_bpd_stderr"])
    verdict = "better" if d < -2 * se else "worse" if d > 2 * se else "within 2 s.e."
    return f"{d:+.4f} ± {se:.4f} ({verdict}{', IW' if iw else ''})"


def _bpd_cell(value: dict[str, Any] | None, bound: bool) -> str:
    if not value:
        return "-"
    return f"{'≤ ' * bound}{value['bpd']:.4f} ± {value['bpd_stderr']:.4f}"


def _table(rows: list[dict[str, Any]], settings: Settings) -> str:
    k = settings.option(TableOptions).importance_samples
    lines = []
    for r in rows:
        family = FAMILY_NAMES.get(r["family"], r["family"])
        if "test_bpd" not in r:
            lines.append([family, f"`{r['spec']}`", r["attention"], "-", "-", "-", f"{r['status']}: {r['error']}", "-",
                          "-"])
            continue
        test = {"bpd": r["test_bpd"], "bpd_stderr": r["test_bpd_stderr"]}
        secs = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.4g}"
        lines.append([family, f"`{r['spec']}`", r["attention"], f"{r['parameters']:,}", r["steps"], secs,
                      _bpd_cell(test, r["upper_bound"]), _bpd_cell(r.get("importance_weighted"), True),
                      _delta_cell(r)])
    return markdown_table(["family", "preset", "attention", "parameters", "steps", f"train s ({settings.clock})",
                           "test bits/dim ± s.e.", f"importance-weighted, K = {k}", "Δ vs no attention"], lines)


def _ema_note(rows: list[dict[str, Any]]) -> str:
    kept = [r["spec"] for r in rows if r.get("ema_decay")]
    if not kept:
        return ("No run keeps an exponential moving average of its weights (`train.ema_decay = 0`; the residual "
                "presets' EMA is switched off by the specification): every row is evaluated on its trained weights.")
    return (f"Evaluated on their EMA weights (`train.ema_decay > 0`): {', '.join(kept)}; the others on their "
            "trained weights.")


def run(settings: Settings) -> None:
    opts = settings.option(TableOptions)
    results = train_runs(settings, settings.specs)
    previous = _previous(settings.out)
    rows = [_row(r, settings, previous) for r in results]
    _deltas(rows)
    _plot(rows, settings)
    iw_images = [r["importance_weighted"]["n"] for r in rows if "importance_weighted" in r]
    trained = sum(r.status != "refused" for r in results)
    section = "\n".join([
        "## Test bits/dim of every family with and without its attention", "",
        _table(rows, settings), "",
        "```bash", settings.command, "```", "",
        f"One model per preset, {settings.budget_minutes * 60 / max(1, trained):.4g} s of training each "
        f"({settings.clock} clock, `train.time_limit_s`); test bits/dim on the test images named above, with "
        "the standard error over those images. `≤`: an upper bound (the one-sample variational bound of noise "
        "augmentation or variational dequantization); its importance-weighted estimate uses "
        f"K = {opts.importance_samples} noise draws per image"
        + (f" on the first {iw_images[0]} test images" if opts.importance_images and iw_images else
           " on the whole test set")
        + " (still an upper bound, tighter as K grows). Δ: bits/dim minus the family's no-attention row "
        "(importance-weighted where both rows have the estimate, marked IW), ± sqrt(se² + se_none²); `better` / "
        "`worse` when |Δ| exceeds two standard errors, else `within 2 s.e.`: attention made no measurable "
        "difference at this size and budget.", "",
        _ema_note(rows), "",
        "![test bits/dim per family](table.png)",
    ])
    write_outputs(settings, "Results table: every family with and without attention", DESCRIPTION + ".", [section],
                  {"importance_samples": opts.importance_samples, "importance_images": opts.importance_images,
                   "rows": rows}, results)


def _plot(rows: list[dict[str, Any]], settings: Settings) -> None:
    """One panel per family: a bar per row (grey without attention) with its standard error, the
    importance-weighted estimate as a black diamond."""
    plt = pyplot()
    families = list(dict.fromkeys(r["family"] for r in rows if "test_bpd" in r))
    fig, axes = plt.subplots(1, max(1, len(families)), figsize=(3.2 * max(1, len(families)), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        mine = [r for r in rows if r["family"] == family and "test_bpd" in r]
        xs = range(len(mine))
        ax.bar(xs, [r["test_bpd"] for r in mine], yerr=[r["test_bpd_stderr"] for r in mine], capsize=4,
               color=["lightgrey" if r["attention"] == "none" else f"C{i}" for i, r in enumerate(mine)])
        iw = [(x, r["importance_weighted"]) for x, r in zip(xs, mine) if "importance_weighted" in r]
        if iw:
            ax.errorbar([x for x, _ in iw], [e["bpd"] for _, e in iw], yerr=[e["bpd_stderr"] for _, e in iw],
                        fmt="D", color="black", capsize=3,
                        label=f"importance-weighted, K = {settings.option(TableOptions).importance_samples}")
            ax.legend(fontsize=7)
        values = [r["test_bpd"] for r in mine] + [e["bpd"] for _, e in iw]
        pad = max(0.05, 0.6 * (max(values) - min(values)))
        ax.set_ylim(min(values) - pad, max(values) + pad)
        ax.set_xticks(list(xs), [r["attention"].split(",")[0] for r in mine], rotation=30, ha="right", fontsize=8)
        ax.set_title(FAMILY_NAMES.get(family, family))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test bits/dim (± s.e.; y axis not from 0)")
    save_figure(fig, settings.out / "table.png")


# the results table: each family without, then with its attention(s), 10 minutes per run on Fashion-MNIST;
# residual flows without EMA (train.ema_decay=0) so every row is evaluated on its trained weights
DEFAULTS = Defaults(130, seeds=None, test_images=0, digits=(
    "glow-digits", "glow-digits-imap", "glow-digits-isdp", "flowpp-digits-noattn", "flowpp-digits",
    "marflow-digits+model.coupling_heads=0", "marflow-digits", "marflow-digits-imap",
    "resflow-digits+train.ema_decay=0", "acf-resflow-l2-digits+train.ema_decay=0",
    "acf-resflow-lipnorm-digits+train.ema_decay=0", "denseflow-digits-noattn", "denseflow-digits"), fashion=(
    "glow-fmnist-tiny", "glow-fmnist-tiny-imap", "glow-fmnist-tiny-isdp", "flowpp-fmnist-tiny-noattn",
    "flowpp-fmnist-tiny", "marflow-fmnist-tiny-noattn", "marflow-fmnist-tiny", "marflow-fmnist-tiny-imap",
    "resflow-fmnist-tiny+train.ema_decay=0", "acf-resflow-l2-fmnist-tiny+train.ema_decay=0",
    "acf-resflow-lipnorm-fmnist-tiny+train.ema_decay=0", "denseflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, options=TableOptions, defaults=DEFAULTS)
