"""Test accuracy of a hybrid model (a flow with a classifier head on its latent; Residual Flows'
hybrid modelling, ACF Table 3), measured in the same pass as its bits/dim.

Accuracy is the fraction of images whose most probable class ``argmax_y p(y | x)`` is the label,
with the binomial standard error ``sqrt(a (1 - a) / n)``; the cross-entropy is
``-mean log p(y | x)`` in nats. Images are dequantized exactly as for bits/dim
(:func:`attnflow.evaluate.likelihood.evaluate_bits_per_dim`, same seed), as the model saw them in
training.
"""
from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Flow
from ..models.hybrid import HybridFlow
from .likelihood import evaluate_bits_per_dim

__all__ = ["evaluate_hybrid", "accuracy_summary"]


def accuracy_summary(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """``accuracy``, its standard error ``accuracy_stderr`` and ``cross_entropy`` (nats) of
    ``logits [N, K]`` against integer ``labels [N]``."""
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} logits for {len(labels)} labels; expected one label per image")
    n = len(labels)
    labels = labels.to(logits.device)
    acc = float((logits.argmax(1) == labels).double().mean())
    return {
        "accuracy": acc,
        "accuracy_stderr": math.sqrt(acc * (1.0 - acc) / n) if n > 0 else float("nan"),
        "cross_entropy": float(F.cross_entropy(logits.double(), labels)),
    }


def evaluate_hybrid(
    model: Flow,
    images: Tensor,
    labels: Tensor | None,
    levels: int,
    batch_size: int = 256,
    seed: int = 0,
    max_batches: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Bits/dim (the dictionary of :func:`evaluate_bits_per_dim`, same arguments) of a hybrid
    model (``model.classes`` > 0, a :class:`~attnflow.models.hybrid.HybridFlow`) over uint8
    ``images``, plus the test ``accuracy``, ``accuracy_stderr`` and ``cross_entropy`` against
    ``labels``, from one pass through the flow."""
    if not model.classes:
        raise ValueError("accuracy needs a hybrid model with a classifier head; train one with model.classes > 0")
    hybrid = cast(HybridFlow, model)  # a model with classes is a HybridFlow
    if labels is None:
        raise ValueError("the dataset has no class labels, so accuracy cannot be measured; use a labelled dataset")
    batches: list[Tensor] = []

    def log_prob(x: Tensor) -> Tensor:
        lp, logits = hybrid.log_prob_and_logits(x)
        batches.append(logits.double().cpu())
        return lp

    ev = evaluate_bits_per_dim(model, images, levels, batch_size=batch_size, seed=seed, max_batches=max_batches,
                               progress=progress, log_prob=log_prob)
    logits = torch.cat(batches)
    return ev | accuracy_summary(logits, labels[: len(logits)])
