"""Multi-scale plumbing (RealNVP, Dinh et al. 2017; Glow): squeeze, factor-out with a learned
conditional prior and flatten (the coupling masks are in :mod:`attnflow.flows.masks`)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..core import Bijection, Chain, Context
from ..nets.glow_coupling_net import zero_conv

__all__ = ["Squeeze", "FactorOut", "Flatten", "multiscale_transform"]


class Squeeze(Bijection):
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (each 2x2 patch becomes 4 channels).
    Volume preserving (log-det 0); ``H`` and ``W`` must be even."""

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs even height and width, got {h}x{w}; pad or crop the images")
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(b)

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        b, c, h, w = z.shape
        return z.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


class Flatten(Bijection):
    """``[B, *shape] -> [B, prod(shape)]``; the last layer of every transform."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)


class FactorOut(Bijection):
    """Multi-scale factor-out: split ``x = [x_keep, x_out]`` along channels, pass ``x_keep``
    through the ``inner`` transform (which ends in a flat latent) and standardise ``x_out`` with a
    learned conditional Gaussian prior ``N(mu(x_keep), exp(log_sigma(x_keep))^2)``:

        e = (x_out - mu) * exp(-log_sigma),   log|det| = -sum log_sigma,
        z = [flatten(e), inner(x_keep)].

    The prior is thus part of the transform and ``z`` is standard normal under the model
    (the contract of :mod:`attnflow.core`). With ``learned_prior=False``, ``e = x_out`` (RealNVP's
    fixed prior).
    The prior network is a zero-initialised 3x3 convolution, so training starts from N(0, I).
    """

    def __init__(
        self,
        inner: Bijection,
        shape: Sequence[int],
        keep: int | None = None,
        learned_prior: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.keep = c // 2 if keep is None else keep
        if not 0 < self.keep < c:
            raise ValueError(f"factor-out must keep between 1 and {c - 1} of {c} channels, got {self.keep}")
        self.inner = inner
        self.out_shape = (c - self.keep, h, w)
        self.prior = None
        if learned_prior:
            self.prior = zero_conv(nn.Conv2d(self.keep, 2 * (c - self.keep), 3, padding=1))

    def _prior(self, x_keep: Tensor) -> tuple[Tensor, Tensor]:
        if self.prior is None:
            zero = x_keep.new_zeros(())
            return zero, zero
        mu, log_sigma = self.prior(x_keep).chunk(2, dim=1)
        return mu, log_sigma

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        x_keep, x_out = x[:, : self.keep], x[:, self.keep :]
        mu, log_sigma = self._prior(x_keep)
        e = (x_out - mu) * torch.exp(-log_sigma)
        logdet = -(log_sigma.expand_as(x_out)).flatten(1).sum(1)
        z_inner, ld_inner = self.inner(x_keep, context)
        return torch.cat([e.flatten(1), z_inner], dim=1), logdet + ld_inner

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        n_out = math.prod(self.out_shape)
        e = z[:, :n_out].reshape(z.shape[0], *self.out_shape)
        x_keep = self.inner.inverse(z[:, n_out:], context)
        mu, log_sigma = self._prior(x_keep)
        return torch.cat([x_keep, e * torch.exp(log_sigma) + mu], dim=1)


StepFactory = Callable[[int, int], Sequence[Bijection]]


def multiscale_transform(
    shape: Sequence[int],
    scales: int,
    steps: StepFactory,
    learned_prior: bool = True,
    squeeze_first: bool = True,
    factor_out: bool = True,
) -> Chain:
    """The multi-scale architecture of RealNVP/Glow, ending in a flat latent.

    At each scale ``i`` (0-based): squeeze (except at scale 0 when ``squeeze_first`` is False),
    the layers ``steps(channels, i)``, then — except at the last scale — factor out half of the
    channels (:class:`FactorOut`, learned prior) and recurse on the kept half, or, when
    ``factor_out`` is False, recurse on all channels (Residual Flows' MNIST architecture). The last
    scale ends in :class:`Flatten`. Sizes that cannot be squeezed raise a clear error.
    """
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    c, h, w = shape
    squeezes = scales - 1 + int(squeeze_first)
    if h % 2**squeezes or w % 2**squeezes:
        halvings = min((h & -h).bit_length(), (w & -w).bit_length()) - 1  # times both sides can be halved
        fix = (f"use scales <= {halvings + 1 - int(squeeze_first)}" if halvings >= int(squeeze_first)
               else "use even image sizes")
        raise ValueError(
            f"{scales} scales squeeze the {h}x{w} input {squeezes} times, so its height and width must be "
            f"multiples of {2**squeezes}: {fix}"
        )
    if squeeze_first:
        c, h, w = 4 * c, h // 2, w // 2
    layers: list[Bijection] = [Squeeze()] if squeeze_first else []
    layers += list(steps(c, 0))
    if scales == 1:
        layers.append(Flatten((c, h, w)))
    elif not factor_out:
        layers.append(multiscale_transform((c, h, w), scales - 1, lambda ch, i: steps(ch, i + 1), learned_prior,
                                           True, False))
    else:
        keep = c // 2
        if keep < 1:
            raise ValueError(f"cannot factor out channels of a {c}-channel tensor; use fewer scales")
        inner = multiscale_transform((keep, h, w), scales - 1, lambda ch, i: steps(ch, i + 1), learned_prior, True)
        layers.append(FactorOut(inner, (c, h, w), keep, learned_prior))
    return Chain(layers)
