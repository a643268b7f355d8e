"""mARFlow (Bhattacharyya, Mahajan et al., "Normalizing Flows with Multi-Scale Autoregressive
Priors", CVPR 2020): AttnFlow's image backbone (AttnFlow Sec. 5, Tables 2-3), optionally with
iMap / iSDP invertible attention in its steps."""
from __future__ import annotations

from typing import Annotated

from ..core import Bijection, Chain, Flow
from ..flows.autoregressive_prior import AutoregressiveFactorOut, ChannelAutoregressive
from ..flows.glow import GlowStep
from ..flows.invertible_attention import ISDP_DEFAULT_INIT, invertible_attention_factory
from ..flows.masks import COUPLING_MASKS, alternating_masks
from ..flows.mixture_coupling import MixtureStep
from ..flows.multiscale import FactorOut, Flatten, multiscale_transform
from ..flows.preprocess import build_preprocess
from ..nets.flowpp_coupling_net import GatedAttentionNet
from ..schema import Key
from .keys import (
    Alpha,
    Attention,
    Components,
    CouplingHeads,
    GatedBlocks,
    Heads,
    Hidden,
    IsdpInit,
    Mask,
    Patches,
    Positions,
    Preprocess,
    Scales,
    Shape,
    Steps,
)
from .registry import register_family

__all__ = ["marflow"]

COUPLINGS = ("mixture", "affine")


def _with_autoregressive_priors(transform: Bijection, group: int, hidden: int) -> Chain:
    """Turn a :func:`~attnflow.flows.multiscale.multiscale_transform` (built with
    ``learned_prior=False``) into mARFlow's: every :class:`FactorOut` becomes an
    :class:`AutoregressiveFactorOut` over the same inner transform, and the last scale gets an
    unconditional :class:`ChannelAutoregressive` prior before its final ``Flatten``."""
    assert isinstance(transform, Chain)  # a multiscale_transform, and so is every FactorOut's inner one
    layers = list(transform)
    last = layers[-1]
    if isinstance(last, FactorOut):
        inner = _with_autoregressive_priors(last.inner, group, hidden)
        shape = (last.keep + last.out_shape[0], *last.out_shape[1:])
        layers[-1] = AutoregressiveFactorOut(inner, shape, last.keep, group, hidden)
    else:
        assert isinstance(last, Flatten)  # the last scale of a multiscale_transform
        layers.insert(-1, ChannelAutoregressive(last.shape[0], group, hidden))
    return Chain(layers)


@register_family("marflow", tiny={"steps": 1, "hidden": 8, "prior_hidden": 4})
def marflow(
    shape: Shape = (1, 8, 8),
    scales: Scales = 2,
    steps: Steps = 4,
    hidden: Hidden = 32,
    blocks: GatedBlocks = 1,
    components: Components = 4,
    coupling_heads: CouplingHeads = 1,
    coupling: Annotated[str, Key("coupling layer", choices=COUPLINGS)] = "mixture",
    mask: Mask = "channel",
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    prior_group: Annotated[int, Key("channels per autoregressive prior group", lo=1, hi=4096)] = 1,
    prior_hidden: Annotated[int, Key("ConvLSTM state channels of the priors", lo=1, hi=4096)] = 16,
    attention: Attention = "none",
    positions: Positions = (),
    heads: Heads = 1,
    patches: Patches = 4,
    isdp_init: IsdpInit = ISDP_DEFAULT_INIT,
) -> Flow:
    """mARFlow: ``preprocess -> [squeeze -> steps x (ActNorm, 1x1 conv, coupling) ->
    autoregressive factor-out] x scales``, the last scale ending in an unconditional channel
    autoregressive prior.

    ``coupling="mixture"`` (mARFlow, Flow++'s mixture-of-logistics coupling with ``components``
    logistics) or ``"affine"`` (Glow's affine coupling); both use Flow++'s gated convolution +
    self-attention network (width ``hidden``, ``blocks`` blocks, ``coupling_heads`` heads;
    ``coupling_heads=0`` drops the self-attention, the attention-free baseline).
    ``mask`` alternates ``"channel"`` halves or checkerboards. The priors are ConvLSTMs over
    groups of ``prior_group`` channels with ``prior_hidden`` state channels.
    ``attention`` in {"none", "imap", "isdp"} puts AttnFlow's invertible attention at each of the
    step ``positions`` (1: before ActNorm, 2: after ActNorm, 3: after the 1x1 convolution, 4:
    after the coupling); ``heads``, ``patches`` and ``isdp_init`` (``"paper"`` or ``"gated"``, see
    :class:`~attnflow.flows.invertible_attention.ISDP`) configure iSDP.
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; valid: {', '.join(COUPLINGS)}")
    if mask not in COUPLING_MASKS:
        raise ValueError(f"unknown mask {mask!r}; valid: {', '.join(COUPLING_MASKS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    attention_layer = invertible_attention_factory(attention, positions, heads, patches, isdp_init)
    _, height, width = shape

    def scale_steps(channels: int, scale: int) -> list[Bijection]:
        size = (height >> (scale + 1), width >> (scale + 1))
        attend = lambda ch: attention_layer(ch, *size)  # noqa: E731
        masks = alternating_masks(mask, steps)
        if coupling == "affine":
            net = lambda i, o: GatedAttentionNet(i, o, hidden, blocks, coupling_heads)  # noqa: E731
            return [GlowStep(channels, hidden, m, attend, positions, net) for m in masks]
        return [
            MixtureStep(channels, hidden, m, attend, positions, components=components, blocks=blocks,
                        heads=coupling_heads)
            for m in masks
        ]

    transform = multiscale_transform(shape, scales, scale_steps, learned_prior=False)
    transform = _with_autoregressive_priors(transform, prior_group, prior_hidden)
    return Flow(Chain([build_preprocess(preprocess, alpha), transform]), shape)
