"""Neural Spline Flow (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS
2019): Glow's multi-scale architecture with rational-quadratic spline couplings (the paper's
RQ-NSF (C) image model) in place of the affine ones."""
from __future__ import annotations

from typing import Annotated

from ..core import Chain, Flow
from ..flows.glow import GlowStep
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess
from ..flows.spline_coupling import SplineCoupling
from ..schema import Key
from .keys import Alpha, Hidden, LearnedPrior, Mask, Preprocess, Scales, Shape, Steps
from .registry import register_family

__all__ = ["nsf"]


@register_family("nsf", tiny={"steps": 1, "hidden": 8, "bins": 4})
def nsf(
    shape: Shape = (1, 8, 8),
    scales: Scales = 2,
    steps: Steps = 4,
    hidden: Hidden = 64,
    mask: Mask = "channel",
    bins: Annotated[int, Key("bins K of each rational-quadratic spline", lo=1, hi=128)] = 8,
    bound: Annotated[float, Key("the splines act on [-bound, bound] and are the identity outside", lo=0.0,
                                lo_open=True, hi=100.0)] = 3.0,
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    learned_prior: LearnedPrior = True,
) -> Flow:
    """A multi-scale NSF: ``preprocess -> [squeeze -> steps x (ActNorm, 1x1 conv, spline
    coupling) -> factor-out] x scales``. Each :class:`~attnflow.flows.spline_coupling.SplineCoupling`
    has ``bins`` bins on ``[-bound, bound]`` and a Glow coupling network of width ``hidden``;
    ``mask`` alternates with its inverse from step to step, as in :func:`~attnflow.models.glow.glow`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def scale_steps(channels: int, scale: int) -> list[GlowStep]:
        masks = [mask if k % 2 == 0 else f"{mask}-inv" for k in range(steps)]
        return [GlowStep(channels, coupling=SplineCoupling(channels, hidden, m, bins, bound)) for m in masks]

    transform = multiscale_transform(shape, scales, scale_steps, learned_prior)
    return Flow(Chain([build_preprocess(preprocess, alpha), transform]), shape)
