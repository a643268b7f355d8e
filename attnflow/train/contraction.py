"""The contraction check of every training step.

A contractive residual block ``x + g(x)`` is a bijection, and its log-det series, Russian-roulette
estimator and fixed-point inverse are valid, only while ``Lip(g) < 1``. Every spectral-normalised
layer divides by a certified bound of its norm, so the certified ``Lip(g)`` of a block *as the
step used it* is the product of numbers the forward pass has just computed
(:meth:`attnflow.nets.lipschitz_layers.SpectralNormConv2d.lipschitz_bound` reads the divisor of
that pass): reading it costs no extra operator-norm computation. :class:`ContractionMonitor`
reads it after every training forward pass and before the update:

* a block whose finite bound reaches 1 refuses the step, as a non-finite loss does (the trainer
  skips it, and rolls back after ``train.max_bad_steps`` such steps), naming the block and step;
* a block without a finite bound (plain dot-product attention, the ACF ablation that is not
  certified by design) is named once, at the first step, and trained as asked;
* the largest finite bound seen, with its step and block, goes into ``results.json``
  (``certificates.max_block_bound_in_training``) and into the checkpoint, so that it survives a
  resume.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..flows.residual_block import ResidualBlock

__all__ = ["ContractionMonitor"]


class ContractionMonitor:
    """Certified ``Lip(g)`` of every :class:`ResidualBlock` of ``model`` at every training step."""

    def __init__(self, model: nn.Module) -> None:
        self.blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, ResidualBlock)]
        self.worst: dict[str, Any] | None = None  # {"bound", "step", "block"} of the largest finite bound
        self.announced = False

    def check(self, step: int) -> tuple[str | None, str | None]:
        """``(refusal, note)`` for the step about to be taken, whose forward pass has run: a refusal
        message when a block's finite certified bound is not below 1 (the step must not update the
        weights), and a one-time note naming blocks without a finite bound."""
        refusal = note = None
        uncertifiable = []
        for name, block in self.blocks:
            bound = block.lipschitz_bound()
            if not math.isfinite(bound):
                uncertifiable.append(name)
                continue
            if self.worst is None or bound > self.worst["bound"]:
                self.worst = {"bound": bound, "step": step, "block": name}
            if bound >= 1.0 and refusal is None:
                refusal = (f"step {step}: block {name} has certified Lip(g) = {bound:.6g} >= 1, so it is not a "
                           "contraction; step refused")
        if uncertifiable and not self.announced:
            self.announced = True
            note = (f"warning: {len(uncertifiable)} residual blocks have no finite Lipschitz bound (plain dot-product "
                    f"attention, the ACF ablation) and train uncertified: {', '.join(uncertifiable[:4])}"
                    + (" ..." if len(uncertifiable) > 4 else ""))
        return refusal, note

    def state_dict(self) -> dict[str, Any]:
        return {"worst": self.worst}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.worst = state.get("worst")

    def summary(self) -> dict[str, Any]:
        """``results.json`` fields: the largest finite certified block bound of any step."""
        if self.worst is None:
            return {}
        return {"max_block_bound_in_training": self.worst["bound"], "max_block_bound_step": self.worst["step"],
                "max_block_bound_block": self.worst["block"]}
