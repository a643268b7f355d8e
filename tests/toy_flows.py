"""Small flows with a known failure, built to test how the library reports it."""
import torch
from torch import nn

from attnflow.core import Bijection, Chain, Flow
from attnflow.flows.multiscale import Flatten
from attnflow.flows.residual_block import ResidualBlock


class OverflowingInverse(Bijection):
    """Identity forward; the inverse computes ``z e^{10 z^2} - (z e^{10 z^2} - z)``, equal to ``z``
    in exact arithmetic but ``inf - inf = NaN`` in float32 once ``e^{10 z^2}`` overflows
    (``|z| > 2.97``): a model whose inverse overflows for large latents."""

    def forward(self, x, context=None):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z, context=None):
        big = z * torch.exp(10 * z * z)
        return big - (big - z)


class Fold(Bijection):
    """``y = (x - 1/2)^2``, not injective on [0, 1]; the inverse returns the preimage
    ``1/2 - sqrt(y)``, which is the wrong one for ``x > 1/2`` (as a fixed point of a non-contractive
    ``x + g(x)`` can converge to the wrong preimage, with a tiny residual)."""

    def forward(self, x, context=None):
        return (x - 0.5) ** 2, torch.log(2 * (x - 0.5).abs()).flatten(1).sum(1)

    def inverse(self, z, context=None):
        return 0.5 - z.sqrt()


class Expanding(nn.Module):
    """``g(x) = -2x``: Lipschitz 2, so the fixed-point inverse of ``x + g(x)`` diverges."""

    def forward(self, x):
        return -2 * x

    def lipschitz_bound(self):
        return 2.0


def flow_of(layer, shape=(1, 8, 8)):
    return Flow(Chain([layer, Flatten(shape)]), shape)


def overflowing_flow(shape=(1, 8, 8)):
    return flow_of(OverflowingInverse(), shape)


def folding_flow(shape=(1, 8, 8)):
    return flow_of(Fold(), shape)


def non_converging_flow(shape=(1, 8, 8)):
    return flow_of(ResidualBlock(Expanding(), max_iter=20), shape)
