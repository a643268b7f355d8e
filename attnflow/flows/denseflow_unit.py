"""DenseFlow's invertible unit (Grcić, Grubišić & Šegvić 2021, "Densely connected normalizing
flows", Sec. 3.3): a chain of Glow-like modules.

*Intra-unit coupling* (the slides' "second level of skip connections"): the affine couplings of
the Glow-like modules inside each invertible unit use DenseFlow's coupling network
(:class:`~attnflow.nets.denseflow_coupling_net.DenseFlowCouplingNet`), so the transformed half of
the latent is coupled to the conditioning half through densely connected (concatenative skip)
paths plus global attention. The first level is the cross-unit coupling of
:mod:`attnflow.flows.noise_augmentation`, which connects the units themselves.
"""
from __future__ import annotations

from ..core import Chain
from ..nets.glow_coupling_net import CouplingNetFactory
from .glow import GlowStep
from .masks import alternating_masks

__all__ = ["invertible_unit"]


def invertible_unit(channels: int, modules: int, net_factory: CouplingNetFactory) -> Chain:
    """One DenseFlow invertible unit: ``modules`` Glow-like modules (ActNorm, invertible 1x1
    convolution, affine coupling whose network comes from ``net_factory``), the coupling masks
    alternating between the two channel halves. With
    :func:`~attnflow.nets.denseflow_coupling_net.dense_net_factory` these are the
    intra-unit couplings."""
    if modules < 1:
        raise ValueError(f"an invertible unit needs at least 1 module, got {modules}")
    masks = alternating_masks("channel", modules)
    return Chain([GlowStep(channels, mask=m, net_factory=net_factory) for m in masks])
