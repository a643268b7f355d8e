"""Glow's coupling network (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
Convolutions", 2018): the network inside :class:`~attnflow.flows.glow.AffineCoupling` and
SRFlow's affine injector (:class:`~attnflow.flows.conditional.ConditionalAffineInjector`), and the
factory type through which every coupling receives its network, and the zero initialisation of
a last convolution (:func:`zero_conv`) that makes a coupling or a learned prior start as the
identity or the standard normal."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["CouplingNetFactory", "conv_coupling_net", "zero_conv"]


def zero_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with its weight and bias set to zero (Glow, section 3.3): its output starts at 0."""
    for p in conv.parameters():
        nn.init.zeros_(p)
    return conv


def conv_coupling_net(in_channels: int, out_channels: int, hidden: int) -> nn.Module:
    """Glow's coupling network: conv3x3 - ReLU - conv1x1 - ReLU - zero-initialised conv3x3, so
    every coupling starts as the identity."""
    last = zero_conv(nn.Conv2d(hidden, out_channels, 3, padding=1))
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        last,
    )


CouplingNetFactory = Callable[[int, int], nn.Module]
