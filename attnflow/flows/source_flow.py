"""Full-Glow's source flow (Sorkhei et al. 2021): the conditioning encoder of its target flow, a
multi-scale Glow on the source image whose activation after every step conditions the matching
step of the target flow. Being invertible, it passes all of the source's information on. Like
SRFlow's encoder (:class:`attnflow.nets.rrdb_encoder.RRDBEncoder`) it maps the raw condition to
the list of feature tensors that the steps of a conditional transform receive (see
:class:`attnflow.flows.conditional.ConditionedTransform`); it is only run forward.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn

from .glow import GlowStep
from .masks import alternating_masks
from .multiscale import Squeeze

__all__ = ["SourceFlowEncoder"]


class SourceFlowEncoder(nn.Module):
    """Full-Glow's source flow, used as the conditioning encoder of the target flow.

    ``x_a - 1/2 -> [squeeze -> steps x GlowStep -> keep half of the channels] x levels``; the
    activation after every step is returned, so step ``k`` of level ``l`` of the target flow is
    conditioned on the source's step ``k`` of level ``l`` (same spatial size). ``step_channels``
    lists the channels of those activations.

    Full-Glow also trains the source flow as a density model of ``x_a`` (joint likelihood); here
    it is trained through the conditional likelihood ``log p(x_b | x_a)`` only, the figure the
    papers report. The half of the channels dropped at each level is still seen by the target
    through the activations of that level.
    """

    def __init__(self, shape: Sequence[int], levels: int, steps: int, hidden: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        if h % (1 << levels) or w % (1 << levels):
            raise ValueError(f"a {levels}-level source flow needs H and W divisible by {1 << levels}, got {h}x{w}")
        self.squeeze = Squeeze()
        self.levels = nn.ModuleList()
        self.step_channels: list[int] = []
        self.keep: list[int] = []
        for _ in range(levels):
            c = 4 * c
            masks = alternating_masks("channel", steps)
            self.levels.append(nn.ModuleList(GlowStep(c, hidden, m) for m in masks))
            self.step_channels += [c] * steps
            self.keep.append(c // 2)
            c = c // 2

    def forward(self, source: Tensor) -> list[Tensor]:
        h = source - 0.5
        activations = []
        for steps, keep in zip(self.levels, self.keep):
            h, _ = self.squeeze(h)
            for step in cast(nn.ModuleList, steps):
                h, _ = step(h)
                activations.append(h)
            h = h[:, :keep]
        return activations
