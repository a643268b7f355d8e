"""Pre-processing bijections applied to data in [0, 1] before the flow; their log-det is part of
the model's likelihood, so bits/dim are always measured on the [0, 1] data."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Bijection, Context

__all__ = ["Shift", "Logit", "PREPROCESS_KINDS", "build_preprocess"]


class Shift(Bijection):
    """``y = x - 0.5`` (Glow's centring); volume preserving."""

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return z + 0.5


class Logit(Bijection):
    """``y = logit(alpha + (1 - 2 alpha) x)`` (RealNVP, Residual Flows); maps [0, 1] to R.

    ``log|dy/dx| = log(1 - 2 alpha) - log p - log(1 - p)`` per element with
    ``p = alpha + (1 - 2 alpha) x``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, logdet

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


#: the pre-processing bijections :func:`build_preprocess` builds
PREPROCESS_KINDS = ("logit", "shift")


def build_preprocess(kind: str, alpha: float = 0.05) -> Bijection:
    """``"shift"`` or ``"logit"`` (with ``alpha``)."""
    if kind == "shift":
        return Shift()
    if kind == "logit":
        return Logit(alpha)
    raise ValueError(f"unknown preprocess {kind!r}; valid: {', '.join(PREPROCESS_KINDS)}")
