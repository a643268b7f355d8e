"""Hybrid modelling with and without attention (ACF Table 3): a contractive Residual Flow with a
classifier head on its latent (``model.classes = 10``), trained jointly on the likelihood and the
labels as in Residual Flows (:mod:`attnflow.models.hybrid`); test accuracy and test bits/dim.

With ``--data fashion-mnist`` it trains on both the bundled digits and Fashion-MNIST; with
``--data digits`` on the digits only.
"""
from __future__ import annotations

from typing import Any

from ..rundir import RunDir
from .plumbing import Settings, group_by_spec, train_runs
from .protocol import Defaults, Experiment
from .report import format_bpd, markdown_table, spread, write_outputs

NAME = "classification"
DESCRIPTION = ("ACF Table 3: test accuracy and bits/dim of the hybrid Residual Flow (classifier head on the "
               "latent), with and without L2 attention, on digits and Fashion-MNIST")


def run(settings: Settings) -> None:
    results = train_runs(settings, settings.specs)
    rows = []
    numbers: dict[str, Any] = {"models": {}}
    for text, runs in group_by_spec(results).items():
        ok = [r for r in runs if r.ok]
        entry: dict[str, Any] = {"spec": text}
        if ok:
            missing = [r.dir for r in ok if "accuracy" not in r.results["test"]]
            if missing:
                raise ValueError(f"{RunDir(missing[0]).results_path} has no test accuracy: {text} is not a hybrid "
                                 "model; give presets with model.classes > 0")
            first = ok[0].results
            entry.update(dataset=first["dataset"], test_bpd=spread([r.results["test"]["bpd"] for r in ok]),
                         test_accuracy=spread([r.results["test"]["accuracy"] for r in ok]),
                         steps=spread([r.results["step"] for r in ok]))
            acc = entry["test_accuracy"]
            shown = (f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} sd ({acc['n']} seeds)" if acc["n"] > 1 else
                     f"{100 * acc['mean']:.2f} ± {100 * first['test'].get('accuracy_stderr', float('nan')):.2f} s.e.")
            rows.append([first["dataset"], text, shown, format_bpd(runs), f"{entry['steps']['mean']:.0f}"])
        else:
            entry["error"] = runs[0].problem
            rows.append(["-", text, runs[0].problem, "-", "-"])
        numbers["models"][text] = entry
    section = "\n".join([
        "## Test accuracy and bits/dim", "",
        markdown_table(["data", "model", "test accuracy (%)", "test bits/dim", "steps"], rows), "",
        "Accuracy: the classifier head's most likely class on the test images of the bits/dim; `± s.e.` is its "
        "standard error over test images (one seed), `± sd` the standard deviation over seeds. Equal training time "
        "per run.",
    ])
    write_outputs(settings, "Hybrid classification (ACF Table 3)", DESCRIPTION + ".", [section], numbers, results)


# ACF Table 3: the hybrid model with and without attention; Fashion-MNIST runs digits too
DEFAULTS = Defaults(40, digits=("resflow-digits-hybrid", "acf-resflow-l2-digits-hybrid"),
                    fashion=("resflow-digits-hybrid", "acf-resflow-l2-digits-hybrid",
                             "resflow-fmnist-tiny-hybrid", "acf-resflow-l2-fmnist-tiny-hybrid"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, defaults=DEFAULTS)
