"""Test bits/dim against the number of attention heads (ACF Table 2: Residual Flow + L2
attention with 1, 4 and 16 heads; AttnFlow Fig. 14: iSDP with 1, 3, 5 and 7 heads).

Each base specification is trained with ``model.heads`` set to every count of its family's list
(:data:`DEFAULT_HEADS`, or ``--heads`` for all). Counts that do not divide the width are
trained with uneven (iSDP) or padded (Lipschitz attention) head groups; a count the model refuses
(more heads than the width it splits) is recorded as a refused row with the model's message, not
an error. iMap has no heads (its attention is a per-element map), so the Glow row uses iSDP as the
paper's figure does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plumbing import RunSpec, Settings, planned_specs, train_planned
from .protocol import Defaults, Experiment
from .report import markdown_table, pyplot, row_numbers, save_figure, write_outputs

NAME = "heads"
DESCRIPTION = ("ACF Table 2 / AttnFlow Fig. 14: final test bits/dim against the number of heads "
               "(Residual Flow + L2 attention; Glow + iSDP); refused head counts are recorded")


#: head counts per family: ACF Table 2 (Residual Flow + L2: 1, 4, 16); AttnFlow Fig. 14 (iSDP: 1, 3, 5, 7)
DEFAULT_HEADS: tuple[tuple[str, tuple[int, ...]], ...] = (("residual", (1, 4, 16)), ("glow", (1, 3, 5, 7)))


@dataclass(frozen=True)
class HeadsOptions:
    """The heads experiment's own option: ``heads``, the head counts of every base preset
    (``--heads``; ``None``: :data:`DEFAULT_HEADS` of each base's family)."""

    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.heads is not None and (not self.heads or min(self.heads) < 1):
            raise ValueError(f"--heads must be head counts >= 1, got {list(self.heads)}")


def head_counts(settings: Settings, base: RunSpec) -> tuple[int, ...]:
    """``--heads`` when given, else the default counts of the base's family (1, 2, 4 otherwise)."""
    return settings.option(HeadsOptions).heads or dict(DEFAULT_HEADS).get(base.family(), (1, 2, 4))


def plan(settings: Settings) -> list[tuple[RunSpec, int, RunSpec]]:
    """``(base, heads, specification)`` of every run: each base at each of its head counts."""
    from ..config import Override

    return [(base, h, base.plus(Override("model", "heads", h))) for base in settings.specs
            for h in head_counts(settings, base)]


def run(settings: Settings) -> None:
    runs_plan = plan(settings)
    results, row_runs = train_planned(settings, runs_plan)
    rows = []
    numbers: dict[str, Any] = {"bases": {}}
    for (base, h, spec), runs in zip(runs_plan, row_runs):
        entry, cells = row_numbers(settings, runs)
        numbers["bases"].setdefault(base.text, []).append({"heads": h, "spec": spec.text, **entry})
        rows.append([base.text, h, *cells])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for base, entries in numbers["bases"].items():
        done = [e for e in entries if "test_bpd" in e]
        if done:
            ax.errorbar([e["heads"] for e in done], [e["test_bpd"]["mean"] for e in done],
                        yerr=[e["test_bpd"]["std"] for e in done], marker="o", capsize=3, label=base)
    ax.set_xlabel("attention heads")
    ax.set_ylabel("test bits/dim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, settings.out / "heads.png")
    section = "\n".join([
        "## Test bits/dim by number of heads", "",
        markdown_table(["base", "heads", "test bits/dim", "steps", f"s/step ({settings.clock})"], rows), "",
        "![bits/dim against heads](heads.png)", "",
        "Every run had the same training time, so runs with slower steps took fewer steps. Error bars: "
        "standard deviation over seeds (none with one seed). A refused count is one the model does not accept.",
    ])
    write_outputs(settings, "Bits/dim against attention heads (ACF Table 2, AttnFlow Fig. 14)", DESCRIPTION + ".",
                  [section], numbers, results)


# ACF Table 2 (Residual Flow + L2: 1, 4, 16 heads); AttnFlow Fig. 14 (iSDP: 1, 3, 5, 7 heads)
DEFAULTS = Defaults(45, digits=("acf-resflow-l2-digits", "glow-digits-isdp"),
                    fashion=("acf-resflow-l2-fmnist-tiny", "glow-fmnist-tiny-isdp"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, plan=planned_specs(plan), options=HeadsOptions, defaults=DEFAULTS)
