"""Test bits/dim and step time of invertible attention at each position of a flow step
(AttnFlow Fig. 13): pos-1 before ActNorm, pos-2 after it, pos-3 after the 1x1 convolution,
pos-4 after the coupling.

Each specification whose ``model.attention`` is not ``none`` is trained at ``model.positions =
[k]`` for k = 1..4; a specification without attention is trained once, as the baseline.
"""
from __future__ import annotations

from typing import Any

from .plumbing import RunSpec, Settings, planned_specs, run_config, train_planned
from .protocol import Defaults, Experiment
from .report import markdown_table, pyplot, row_numbers, save_figure, write_outputs

NAME = "positions"
DESCRIPTION = ("AttnFlow Fig. 13: test bits/dim and step time of iMap and iSDP at pos-1..4 of a Glow step, "
               "and the no-attention baseline")
POSITIONS = (1, 2, 3, 4)


def _attention(spec: RunSpec, settings: Settings) -> str:
    return str(run_config(settings, spec, 0, 1.0).model.get("attention", "none"))


def plan(settings: Settings) -> list[tuple[str, int | None, RunSpec]]:
    """``(label, position, specification)`` of every run: each attention specification at
    pos-1..4, each one without attention once (position ``None``)."""
    from ..config import Override

    rows: list[tuple[str, int | None, RunSpec]] = []
    for base in settings.specs:
        kind = _attention(base, settings)
        if kind == "none":
            rows.append((f"{base.text} (no attention)", None, base))
        else:
            rows += [(f"{base.text}: {kind}", k, base.plus(Override("model", "positions", [k]))) for k in POSITIONS]
    return rows


def run(settings: Settings) -> None:
    runs_plan = plan(settings)
    results, row_runs = train_planned(settings, runs_plan)
    rows = []
    numbers: dict[str, Any] = {"rows": []}
    for (label, k, spec), runs in zip(runs_plan, row_runs):
        entry, cells = row_numbers(settings, runs)
        numbers["rows"].append({"label": label, "position": k, "spec": spec.text, **entry})
        rows.append([label, "-" if k is None else f"pos-{k}", *cells])
    _plot(numbers["rows"], settings)
    section = "\n".join([
        "## Test bits/dim and step time by attention position", "",
        markdown_table(["model", "position", "test bits/dim", "steps", f"s/step ({settings.clock})"], rows), "",
        "![bits/dim and step time by position](positions.png)", "",
        "Equal training time per run: a slower position trains fewer steps. Dashed lines: runs without attention.",
    ])
    write_outputs(settings, "Attention positions (AttnFlow Fig. 13)", DESCRIPTION + ".", [section], numbers, results)


def _plot(entries: list[dict[str, Any]], settings: Settings) -> None:
    plt = pyplot()
    fig, (ax_bpd, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(e["label"] for e in entries if e["position"] is not None):
        done = [e for e in entries if e["label"] == label and "test_bpd" in e]
        if done:
            ks = [e["position"] for e in done]
            ax_bpd.errorbar(ks, [e["test_bpd"]["mean"] for e in done], yerr=[e["test_bpd"]["std"] for e in done],
                            marker="o", capsize=3, label=label)
            ax_time.plot(ks, [e["seconds_per_step"]["mean"] for e in done], marker="o", label=label)
    for e in entries:
        if e["position"] is None and "test_bpd" in e:
            ax_bpd.axhline(e["test_bpd"]["mean"], linestyle="--", color="grey", label=e["label"])
            ax_time.axhline(e["seconds_per_step"]["mean"], linestyle="--", color="grey", label=e["label"])
    for ax, ylabel in ((ax_bpd, "test bits/dim"), (ax_time, f"seconds per step ({settings.clock} clock)")):
        ax.set_xticks(POSITIONS, [f"pos-{k}" for k in POSITIONS])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_bpd.legend(fontsize=8)
    save_figure(fig, settings.out / "positions.png")


# AttnFlow Fig. 13: the no-attention baseline, then iMap and iSDP at pos-1..4
DEFAULTS = Defaults(45, test_images=0, digits=("glow-digits", "glow-digits-imap", "glow-digits-isdp"),
                    fashion=("glow-fmnist-tiny", "glow-fmnist-tiny-imap", "glow-fmnist-tiny-isdp"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, plan=planned_specs(plan), defaults=DEFAULTS)
