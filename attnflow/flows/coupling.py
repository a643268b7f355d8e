"""The masked coupling layer (RealNVP, Dinh et al. 2017, Sec. 3.3-3.4; Glow, Kingma & Dhariwal 2018,
Sec. 3.3; Flow++, Ho et al. 2019, Sec. 3.2): the base of Glow's affine coupling
(:class:`~attnflow.flows.glow.AffineCoupling`) and Flow++'s mixture coupling
(:class:`~attnflow.flows.mixture_coupling.MixtureCoupling`), conditional or not.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..core import Bijection, Context, tensor_context
from ..nets.glow_coupling_net import CouplingNetFactory
from ..precision import inner_network
from .masks import MASK_NAMES, Mask

__all__ = ["MaskedCoupling", "per_element"]


def per_element(out: Tensor, count: int) -> Tensor:
    """A network output ``[B, count * C, ...]`` as ``[count, B, C, ...]``: entry ``k`` is parameter
    ``k`` of every element (channels ``k C .. (k + 1) C - 1`` of the output; a view)."""
    return out.view(out.shape[0], count, -1, *out.shape[2:]).movedim(1, 0)


class MaskedCoupling(Bijection):
    """A coupling layer: the :class:`~attnflow.flows.masks.Mask` ``mask`` splits ``x`` into the kept
    part ``x_a`` and the transformed part ``x_b``, and (RealNVP eq. 4-8; Glow Table 1)::

        theta = NN(x_a [, c]),   z_a = x_a,   z_b = tau(x_b; theta),
        log|det dz/dx| = sum_b log |d tau(x_b; theta) / d x_b|,
        x_b = tau^{-1}(z_b; NN(z_a [, c])),

    with ``tau`` an element-wise bijection of ``x_b`` for every ``theta``. The Jacobian is block
    triangular with an identity and a diagonal block, hence the log-det; ``NN`` is never inverted.

    Subclasses give ``tau`` by :meth:`transform` (``z_b`` and the element-wise log-derivative) and
    :meth:`inverse_transform`; the base builds ``NN = net_factory(in, out)`` with ``in`` the kept
    channels plus ``context_channels`` and ``out = params_per_element`` times the transformed
    channels, runs it (under :func:`~attnflow.precision.inner_network`) and hands the subclass its
    output as ``theta [params_per_element, B, C_b, ...]`` (:func:`per_element`). With
    ``context_channels > 0`` the coupling is conditional (SRFlow's and Full-Glow's conditional
    coupling, AttnFlow Table 1): the context, an image-shaped ``[B, context_channels, H, W]``
    tensor, is concatenated to ``x_a``. For a checkerboard mask ``x_b`` has the full shape with
    zeros on the kept positions; the base ignores ``tau``'s values there.
    """

    MASKS = MASK_NAMES

    def __init__(
        self,
        channels: int,
        mask: str | Mask,
        params_per_element: int,
        net_factory: CouplingNetFactory,
        context_channels: int = 0,
    ) -> None:
        super().__init__()
        self.mask = Mask.parse(mask)
        if self.mask.kept_channels(channels) < 1 or self.mask.transformed_channels(channels) < 1:
            raise ValueError(
                f"a channel mask needs at least 2 channels, got {channels}; use a checkerboard mask"
            )
        self.channels = channels
        self.context_channels = context_channels
        self.params_per_element = params_per_element
        self.net = net_factory(
            self.mask.kept_channels(channels) + context_channels,
            params_per_element * self.mask.transformed_channels(channels),
        )

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(tau(x_b; theta), log |d tau / d x_b|)``, both shaped like ``x_b``."""
        raise NotImplementedError

    def inverse_transform(self, z_b: Tensor, theta: Tensor) -> Tensor:
        """``tau^{-1}(z_b; theta)``."""
        raise NotImplementedError

    def _theta(self, x_a: Tensor, context: Context) -> Tensor:
        if self.context_channels:
            c = tensor_context(context, "a conditional coupling")
            if c is None:
                raise ValueError("this coupling is conditional: pass a context")
            x_a = torch.cat([x_a, c], 1)
        return per_element(inner_network(self.net, x_a), self.params_per_element)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[1] != self.channels:
            raise ValueError(f"coupling expects {self.channels} channels, got {x.shape[1]}")
        return self.mask.split(x)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = self._split(x)
        z_b, log_derivative = self.transform(x_b, self._theta(x_a, context))
        return self.mask.merge(x_a, z_b), self.mask.sum_transformed(log_derivative)

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        z_a, z_b = self._split(z)
        return self.mask.merge(z_a, self.inverse_transform(z_b, self._theta(z_a, context)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mask={self.mask.name}, context_channels={self.context_channels}"
