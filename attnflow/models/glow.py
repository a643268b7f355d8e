"""Glow (Kingma & Dhariwal, 2018), optionally with AttnFlow's invertible attention in its steps."""
from __future__ import annotations

from ..core import Chain, Flow
from ..flows.glow import GlowStep
from ..flows.invertible_attention import ISDP_DEFAULT_INIT, invertible_attention_factory
from ..flows.masks import COUPLING_MASKS, alternating_masks
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess
from .keys import (
    Alpha,
    Attention,
    Heads,
    Hidden,
    IsdpInit,
    LearnedPrior,
    Mask,
    Patches,
    Positions,
    Preprocess,
    Scales,
    Shape,
    Steps,
)
from .registry import register_family

__all__ = ["glow"]


@register_family("glow", tiny={"steps": 1, "hidden": 8})
def glow(
    shape: Shape = (1, 8, 8),
    scales: Scales = 2,
    steps: Steps = 4,
    hidden: Hidden = 64,
    mask: Mask = "channel",
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    learned_prior: LearnedPrior = True,
    attention: Attention = "none",
    positions: Positions = (),
    heads: Heads = 1,
    patches: Patches = 4,
    isdp_init: IsdpInit = ISDP_DEFAULT_INIT,
) -> Flow:
    """A multi-scale Glow: ``preprocess -> [squeeze -> steps x (ActNorm, 1x1 conv, affine
    coupling) -> factor-out] x scales``. ``mask`` is the coupling mask; ``"checkerboard"``
    alternates the checkerboard and its inverse, ``"channel"`` alternates the channel halves.

    ``attention`` in {"none", "imap", "isdp"} puts AttnFlow's invertible attention at each of the
    step ``positions`` (1: before ActNorm, 2: after ActNorm, 3: after the 1x1 convolution, 4:
    after the coupling); ``heads``, ``patches`` and ``isdp_init`` (``"paper"`` or ``"gated"``, see
    :class:`~attnflow.flows.invertible_attention.ISDP`) configure iSDP."""
    if mask not in COUPLING_MASKS:
        raise ValueError(f"unknown mask {mask!r}; valid: {', '.join(COUPLING_MASKS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    attention_layer = invertible_attention_factory(attention, positions, heads, patches, isdp_init)
    _, height, width = shape

    def scale_steps(channels: int, scale: int) -> list[GlowStep]:
        masks = alternating_masks(mask, steps)
        size = (height >> (scale + 1), width >> (scale + 1))
        attend = lambda ch: attention_layer(ch, *size)  # noqa: E731
        return [GlowStep(channels, hidden, m, attend, positions) for m in masks]

    transform = Chain([build_preprocess(preprocess, alpha),
                       multiscale_transform(shape, scales, scale_steps, learned_prior)])
    return Flow(transform, shape)
