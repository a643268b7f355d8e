"""Flow++ (Ho et al. 2019), optionally with AttnFlow's invertible attention in its steps."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor

from ..core import Bijection, Chain, Flow, check_images, standard_normal_log_prob
from ..flows.invertible_attention import ISDP_DEFAULT_INIT, invertible_attention_factory
from ..flows.masks import alternating_masks
from ..flows.mixture_coupling import MixtureStep
from ..flows.multiscale import Flatten, Squeeze
from ..flows.preprocess import build_preprocess
from ..flows.variational_dequantization import VariationalDequantizer
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
    Patches,
    Positions,
    Preprocess,
    Scales,
    Shape,
    Steps,
)
from .registry import register_family

__all__ = ["flowpp", "VariationallyDequantizedFlow"]

DEQUANTIZATIONS = ("uniform", "variational")


class VariationallyDequantizedFlow(Flow):
    """A :class:`Flow` trained with Flow++'s variational dequantization (see
    :class:`~attnflow.flows.variational_dequantization.VariationalDequantizer` for the ELBO).

    :meth:`log_prob` takes images in [0, 1] as the rest of the library does (the trainer's
    uniformly dequantized ``x = (k + u0) / L``), recovers the integer levels
    ``k = floor(L x)``, draws ``u ~ q(u | k)`` and returns the single-sample bound
    ``log p((k + u) / L) - log q(u | k)``; with the library's bits/dim formula
    (``+ D log L``) this is the negative ELBO, an upper bound, hence ``log_prob_is_bound``.
    The uniform noise ``u0`` is discarded. ``encode``, ``decode`` and ``sample`` act on the
    continuous model ``p`` as usual.
    """

    log_prob_is_bound = True

    def __init__(self, transform: Bijection, shape: Sequence[int], dequantizer: VariationalDequantizer) -> None:
        super().__init__(transform, shape)
        self.dequantizer = dequantizer
        self.data_levels = dequantizer.levels  # the grey levels of the data this model's bound is valid for

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        check_images(x, self.shape, self.dtype)
        levels = self.dequantizer.levels
        k = torch.floor(x * levels).clamp_(0, levels - 1)
        self._check_context(context, x.shape[0])
        u, log_q = self.dequantizer(k)
        z, logdet = self.transform((k + u) / levels, context)
        return standard_normal_log_prob(z) + logdet - log_q


@register_family("flowpp", tiny={"steps": 1, "hidden": 8, "components": 2})
def flowpp(
    shape: Shape = (1, 8, 8),
    scales: Scales = 2,
    steps: Steps = 4,
    hidden: Hidden = 32,
    blocks: GatedBlocks = 1,
    components: Components = 4,
    coupling_heads: CouplingHeads = 1,
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    attention: Attention = "none",
    positions: Positions = (),
    heads: Heads = 1,
    patches: Patches = 4,
    isdp_init: IsdpInit = ISDP_DEFAULT_INIT,
    dequantization: Annotated[str, Key("dequantization", choices=DEQUANTIZATIONS)] = "uniform",
    levels: Annotated[int, Key("grey levels of the data, for the variational dequantizer", lo=2,
                               hi=256)] = 256,
    deq_steps: Annotated[int, Key("couplings of the variational dequantizer", lo=1, hi=64)] = 2,
    deq_hidden: Annotated[int, Key("width of the variational dequantizer", lo=1, hi=4096)] = 16,
) -> Flow:
    """Flow++: ``preprocess -> [squeeze -> steps x (ActNorm, 1x1 conv, mixture coupling)] x scales
    -> flatten``, without factor-out (Flow++ keeps every dimension to the end).

    Scale 0 is not squeezed and alternates checkerboard masks; later scales squeeze and alternate
    channel masks. The coupling network is :class:`~attnflow.nets.flowpp_coupling_net.GatedAttentionNet` of
    width ``hidden`` with ``blocks`` blocks and ``coupling_heads`` attention heads
    (``coupling_heads=0``: gated convolutions without self-attention, the baseline); the mixture
    has ``components`` logistics. ``attention``/``positions``/``heads``/``patches`` add AttnFlow's
    invertible attention as in the glow builder. ``dequantization="variational"`` returns a
    :class:`VariationallyDequantizedFlow` for data with ``levels`` grey levels (its dequantizer
    has ``deq_steps`` conditional couplings of width ``deq_hidden``).
    """
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantization {dequantization!r}; valid: {', '.join(DEQUANTIZATIONS)}")
    if steps < 1 or scales < 1:
        raise ValueError(f"steps and scales must be >= 1, got steps={steps}, scales={scales}")
    attention_layer = invertible_attention_factory(attention, positions, heads, patches, isdp_init)
    c, h, w = shape
    layers: list[Bijection] = [build_preprocess(preprocess, alpha)]
    for scale in range(scales):
        if scale:
            if h % 2 or w % 2:
                raise ValueError(f"scale {scale} cannot squeeze a {h}x{w} tensor; use fewer scales or even sizes")
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2

        def attend(ch: int, h: int = h, w: int = w) -> Bijection:  # this scale's size
            return attention_layer(ch, h, w)

        for m in alternating_masks("checkerboard" if scale == 0 else "channel", steps):
            layers.append(
                MixtureStep(
                    c,
                    hidden,
                    m,
                    attend,
                    positions,
                    components=components,
                    blocks=blocks,
                    heads=coupling_heads,
                )
            )
    layers.append(Flatten((c, h, w)))
    transform = Chain(layers)
    if dequantization == "uniform":
        return Flow(transform, shape)
    dequantizer = VariationalDequantizer(shape[0], levels, deq_steps, deq_hidden, components, coupling_heads)
    return VariationallyDequantizedFlow(transform, shape, dequantizer)
