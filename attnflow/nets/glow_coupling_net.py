"""Glow's coupling network (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
Convolutions", 2018): the network inside :class:`~attnflow.flows.glow.AffineCoupling` and
SRFlow's affine injector (:class:`~attnflow.flows.conditional.ConditionalAffineInjector`), and the
factory type through which every coupling receives its network."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["CouplingNetFactory", "conv_coupling_net"]


def conv_coupling_net(in_channels: int, out_channels: int, hidden: int) -> nn.Module:
    """Glow's coupling network: conv3x3 - ReLU - conv1x1 - ReLU - zero-initialised conv3x3, so
    every coupling starts as the identity."""
    last = nn.Conv2d(hidden, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        last,
    )


CouplingNetFactory = Callable[[int, int], nn.Module]
