"""The end-of-run report: what a finished training leaves in its run directory besides the checkpoint.

In this order (:meth:`EndOfRun.write`): the evaluation weights (EMA when kept) as safetensors;
the test evaluation (bits/dim with its standard error over test images; a hybrid model's accuracy
from the same pass), logged as a metrics row too; 64 samples at temperature 1 drawn with a
generator seeded 0 (non-finite samples are dropped from the grid and counted); the certificates
of a contractive flow's blocks with the largest bound met in training; ``results.json``; the
sample grid (a conditional model: condition, outputs at three temperatures and ground truth) and
the curves of training and test bits/dim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import Flow, NonFiniteSamples
from ..data import ImageDataset
from ..data.pairs import condition_batch
from ..evaluate import evaluate_bits_per_dim, finite_samples, plot_metrics, save_image_grid
from ..evaluate.certificates import certificate_summary, certify, uncertified_message
from ..evaluate.classification import evaluate_hybrid
from ..evaluate.superres import save_comparison_grid, sr_scale
from ..rundir import RunDir
from ..sections import DataConfig
from .checkpoint import save_weights
from .contraction import ContractionMonitor
from .progress import note

__all__ = ["EndOfRun", "evaluate_test", "test_row"]

#: Samples in the grid of an unconditional model.
GRID_SAMPLES = 64


def evaluate_test(model: Flow, test_set: ImageDataset, levels: int, max_batches: int = 0,
                  progress: bool = False) -> dict[str, Any]:
    """Test bits/dim of ``model``; for a model with classes (a hybrid) also its accuracy, from the
    same pass."""
    if model.classes:
        return evaluate_hybrid(model, test_set.images, test_set.labels, levels, max_batches=max_batches,
                               progress=progress)
    return evaluate_bits_per_dim(model, test_set.images, levels, max_batches=max_batches, progress=progress,
                                 contexts=condition_batch(test_set))


def test_row(step: int, ev: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    """The metrics row of a test evaluation ``ev`` at ``step`` (with a hybrid model's accuracy)."""
    accuracy = {f"test_{k}": ev[k] for k in ("accuracy", "cross_entropy") if k in ev}
    return {"step": step, "test_bpd": ev["bpd"], "test_bpd_stderr": ev["bpd_stderr"], **accuracy,
            "train_s": round(train_seconds, 3)}


@dataclass(frozen=True)
class EndOfRun:
    """A training that has ended: its directory, how far it got, its test data and the
    certificates it kept (``data``: its ``[data]`` section)."""

    run: RunDir
    step: int
    train_seconds: float
    test_set: ImageDataset
    levels: int
    data: DataConfig
    contraction: ContractionMonitor

    def write(self, model: Flow, progress: bool = False) -> dict[str, Any]:
        """Write the report of ``model`` (the evaluation weights) and return ``results.json``'s contents."""
        save_weights(model, self.run.weights)
        ev = evaluate_test(model, self.test_set, self.levels, progress=progress)
        self.run.append_metrics(test_row(self.step, ev, self.train_seconds))
        samples, non_finite = self._samples(model)
        results = {"step": self.step, "train_seconds": round(self.train_seconds, 3), "test": ev,
                   "levels": self.levels, "dataset": self.data.name,
                   "non_finite_samples": non_finite.count if non_finite else 0}
        results.update(self._certificates(model))
        self.run.write_results(results)
        self._draw(model, samples)
        plot_metrics(self.run.metrics_path, self.run.curves)
        return results

    def _certificates(self, model: Flow) -> dict[str, Any]:
        """A contractive flow's ``certificates`` entry (of the evaluation weights, with the largest
        bound of training); empty for other flows. An uncertified block is named on stderr."""
        report = certify(model)
        if not report["blocks"]:
            return {}
        if message := uncertified_message(report):
            note(message)
        return {"certificates": {**certificate_summary(report), **self.contraction.summary()}}

    def _samples(self, model: Flow) -> tuple[Tensor | None, NonFiniteSamples | None]:
        """The finite ones of :data:`GRID_SAMPLES` samples and the error counting the others (each
        ``None`` for a conditional model, whose grid is drawn from test conditions instead)."""
        if model.context_shape is not None:
            return None, None
        gen = torch.Generator().manual_seed(0)
        samples, non_finite = finite_samples(model, GRID_SAMPLES, temperature=1.0, generator=gen)
        if non_finite:
            shown = (f"{self.run.samples.name} shows the {len(samples)} finite ones" if len(samples)
                     else "no sample grid")
            note(f"warning: {non_finite}; {shown}")
        return samples, non_finite

    def _draw(self, model: Flow, samples: Tensor | None) -> None:
        """The sample grid: a conditional model's comparison grid, else the finite samples (none
        written when no sample is finite)."""
        if samples is None:
            save_comparison_grid(model, self.test_set, self.run.samples, sr_scale(self.data))
        elif len(samples):
            save_image_grid(samples, self.run.samples)
