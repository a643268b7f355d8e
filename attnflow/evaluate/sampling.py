"""Samples for image grids: the finite ones, and how many were not."""
from __future__ import annotations

import torch
from torch import Tensor

from ..core import Flow, NonFiniteSamples

__all__ = ["finite_samples"]


def finite_samples(
    flow: Flow, n: int, temperature: float = 1.0, generator: torch.Generator | None = None, batch_size: int = 256
) -> tuple[Tensor, NonFiniteSamples | None]:
    """``flow.sample(n, ...)`` split into the finite samples (in [0, 1]) and the
    :class:`~attnflow.core.NonFiniteSamples` error that counts the others (``None`` when all are
    finite), so a caller can report the count and still show the good samples."""
    try:
        return flow.sample(n, temperature=temperature, generator=generator, batch_size=batch_size), None
    except NonFiniteSamples as exc:
        return exc.samples[exc.finite], exc
