"""Judging an inverse by what it returns: the reconstruction error of each image.

A fixed-point inverse can converge (a small residual ``|x + g(x) - y|``) to the wrong preimage
when ``x + g(x)`` is not injective (ACF's plain dot-product attention): the residual cannot see
it, the reconstruction error ``|decode(encode(x)) - x|`` can. The evaluation commands report
per image both failures: an inverse that did not converge, and one that converged elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import Flow
from ..flows.residual_block import InverseDidNotConverge

__all__ = ["DEFAULT_TOLERANCE", "Reconstruction", "max_error_per_image", "reconstruct"]

# Largest per-pixel error of a correct reconstruction: a quarter of a grey level at 8 bits, far
# above float32 round-off and fixed-point tolerances (~1e-5), far below a visible change.
DEFAULT_TOLERANCE = 1e-3


def max_error_per_image(a: Tensor, b: Tensor) -> Tensor:
    """``max |a - b|`` over each image, ``[B]`` (``inf`` where either holds a NaN)."""
    err = (a - b).abs().flatten(1).amax(1)
    return torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)


@dataclass
class Reconstruction:
    """``images = decode(encode(x))`` (zeros when the inverse did not converge), the per-image
    max error ``errors`` ``[B]`` (``inf`` then) and ``failure``, the non-convergence message."""

    images: Tensor
    errors: Tensor
    failure: str = ""

    @property
    def converged(self) -> bool:
        return not self.failure

    def wrong(self, tolerance: float = DEFAULT_TOLERANCE) -> list[int]:
        """Indices of the images off by more than ``tolerance`` (all of them if it did not converge)."""
        return [int(i) for i in torch.nonzero(self.errors > tolerance).flatten()]

    def status(self, tolerance: float = DEFAULT_TOLERANCE) -> str:
        """``"ok"``, ``"inverse wrong"`` (converged to another preimage) or ``"did not converge"``."""
        if not self.converged:
            return "did not converge"
        return "inverse wrong" if self.wrong(tolerance) else "ok"


@torch.no_grad()
def reconstruct(flow: Flow, x: Tensor, context: Tensor | None = None) -> Reconstruction:
    """Encode and decode ``x``; a fixed-point inverse that does not converge is recorded, not raised."""
    try:
        images = flow.decode(flow.encode(x, context), context)
    except InverseDidNotConverge as exc:
        return Reconstruction(torch.zeros_like(x), torch.full((len(x),), float("inf")), str(exc))
    return Reconstruction(images, max_error_per_image(images, x))
