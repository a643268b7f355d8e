"""Glow (Kingma & Dhariwal, 2018), optionally with AttnFlow's invertible attention in its steps."""
from __future__ import annotations

from collections.abc import Sequence

from ..core import Chain, Flow
from ..flows.glow import GlowStep
from ..flows.invertible_attention import ISDP_DEFAULT_INIT, invertible_attention_factory
from ..flows.masks import COUPLING_MASKS, alternating_masks
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess

__all__ = ["glow"]


def glow(
    shape: Sequence[int] = (1, 8, 8),
    scales: int = 2,
    steps: int = 4,
    hidden: int = 64,
    mask: str = "channel",
    preprocess: str = "logit",
    alpha: float = 0.05,
    learned_prior: bool = True,
    attention: str = "none",
    positions: Sequence[int] = (),
    heads: int = 1,
    patches: int = 4,
    isdp_init: str = ISDP_DEFAULT_INIT,
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

    transform = Chain([build_preprocess(preprocess, alpha), multiscale_transform(shape, scales, scale_steps, learned_prior)])
    return Flow(transform, shape)
