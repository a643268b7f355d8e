"""Full-Glow (Sorkhei et al., 2021) image-to-image translation and AttnFlow's cAttnFlow variant
(Sukthanker et al., supplementary E): a flow on the target image ``x_b`` (a photo) conditioned,
at every step, on the activation of the matching step of a flow on the source image ``x_a`` (a
label map). It reports the conditional bits/dim ``-log2 p(x_b | x_a) / D``.

Each target step is AttnFlow's conditional step (ActNorm, 1x1 convolution, affine injector,
conditional coupling) with the source activation as its condition; iMap or iSDP go after each
level's steps (position 0) or into every step (1-5), as in :func:`~attnflow.models.srflow.srflow`.
(The AttnFlow supplement cites Full-Glow as [6], which is SRFlow; Full-Glow is its [33].)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from ..core import Bijection, Chain, Flow
from ..flows.conditional import ConditionedTransform
from ..flows.invertible_attention import ISDP_DEFAULT_INIT, invertible_attention_factory
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess
from ..flows.source_flow import SourceFlowEncoder
from ..schema import Key
from .keys import Alpha, Attention, Heads, Hidden, IsdpInit, LearnedPrior, Patches, Preprocess, Shape, Steps
from .registry import register_family
from .srflow import ConditionalPositions, Levels, conditional_level, level_sizes

__all__ = ["fullglow"]


@register_family("fullglow", tiny={"steps": 1, "hidden": 8, "source_hidden": 8})
def fullglow(
    shape: Shape = (1, 8, 8),
    source_shape: Annotated[Sequence[int], Key("channels, height and width of the source images", length=3,
                                                lo=1, hi=4096)] = (1, 8, 8),
    levels: Levels = 2,
    steps: Steps = 4,
    hidden: Hidden = 64,
    source_hidden: Annotated[int, Key("width of the source flow's coupling networks", lo=1, hi=4096)] = 32,
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    learned_prior: LearnedPrior = True,
    attention: Attention = "none",
    positions: ConditionalPositions = (),
    heads: Heads = 1,
    patches: Patches = 4,
    isdp_init: IsdpInit = ISDP_DEFAULT_INIT,
) -> Flow:
    """The translation model of ``x_b`` (``shape``) given ``x_a`` (``source_shape``, same height
    and width, any number of channels)."""
    if tuple(shape[1:]) != tuple(source_shape[1:]):
        raise ValueError(
            f"source and target images must have the same height and width, got source {list(source_shape)} "
            f"and target {list(shape)}; resize one of them"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sizes = level_sizes(shape, levels)
    attention_layer = invertible_attention_factory(attention, positions, heads, patches, isdp_init)
    encoder = SourceFlowEncoder(source_shape, levels, steps, source_hidden)

    def level(channels: int, index: int) -> list[Bijection]:
        first = index * steps  # step k of this level is conditioned on source activation first + k
        ctx = encoder.step_channels[first : first + steps]
        return conditional_level(channels, sizes[index], ctx, range(first, first + steps), hidden, attention_layer,
                                 positions)

    flow = Chain([build_preprocess(preprocess, alpha), multiscale_transform(shape, levels, level, learned_prior)])
    return Flow(ConditionedTransform(encoder, flow), shape, context_shape=tuple(int(v) for v in source_shape))
