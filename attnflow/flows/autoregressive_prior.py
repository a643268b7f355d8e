"""Multi-scale autoregressive priors of mARFlow (Bhattacharyya, Mahajan et al., "Normalizing Flows
with Multi-Scale Autoregressive Priors", CVPR 2020), as bijections.

mARFlow models each factored-out latent ``x_out [B, C, H, W]`` with a channel-wise
autoregressive Gaussian: channel group ``g`` (``group`` channels) has mean and log-scale computed
by a convolutional LSTM (:class:`~attnflow.nets.conv_lstm.ConvLSTMCell`) that has read the groups
``< g`` and an embedding of the kept half ``x_keep``. Written as a bijection that standardises ``x_out``::

    (mu_g, log_sigma_g) = out(h_g),   (h_g, c_g) = ConvLSTM([x_{g-1}, embed(x_keep)], (h_{g-1}, c_{g-1}))
    e_g = (x_g - mu_g) * exp(-log_sigma_g),         x_{-1} = 0,  h_{-1} = c_{-1} = 0
    log|det de/dx| = -sum_g sum log_sigma_g          (block-triangular Jacobian)

so ``e`` is standard normal exactly when ``x_out`` follows the autoregressive prior (learned priors
live inside the transform: :mod:`attnflow.core`). The inverse runs group by group:
``x_g = e_g exp(log_sigma_g) + mu_g``, then feeds ``x_g`` to the next LSTM step.
The output convolution is zero-initialised, so training starts from ``N(0, I)`` like
:class:`~attnflow.flows.multiscale.FactorOut`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Bijection, Context, tensor_context
from ..nets.conv_lstm import ConvLSTMCell
from ..nets.glow_coupling_net import zero_conv
from .multiscale import FactorOut

__all__ = ["ChannelAutoregressive", "AutoregressiveFactorOut"]


class ChannelAutoregressive(Bijection):
    """Channel-group autoregressive Gaussian standardisation (module docstring), conditioned on
    an optional image-shaped ``context`` with ``context_channels`` channels (the kept half of a
    factor-out; ``0`` for the unconditional prior of the last scale).

    Args:
        channels: channels ``C`` of the standardised tensor.
        group: channels per autoregressive step; must divide ``C`` (mARFlow uses 1).
        hidden: ConvLSTM state channels (and context embedding channels).
        context_channels: channels of the conditioning tensor, 0 for none.
        kernel_size: ConvLSTM kernel size (odd).
    """

    def __init__(
        self, channels: int, group: int = 1, hidden: int = 16, context_channels: int = 0, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if group < 1 or channels % group:
            raise ValueError(
                f"group={group} must be a positive divisor of the {channels} channels of the prior "
                f"(e.g. group=1)"
            )
        self.channels, self.group, self.hidden = channels, group, hidden
        self.context_channels = context_channels
        self.embed = (
            nn.Conv2d(context_channels, hidden, 3, padding=1) if context_channels else None
        )
        self.cell = ConvLSTMCell(group + (hidden if context_channels else 0), hidden, kernel_size)
        self.out = zero_conv(nn.Conv2d(hidden, 2 * group, 3, padding=1))

    def _check(self, x: Tensor, context: Context) -> Tensor | None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected [B, {self.channels}, H, W], got shape {list(x.shape)}")
        if self.embed is None:  # unconditional (context_channels 0)
            return None
        context = tensor_context(context, "a conditional autoregressive prior")
        if context is None or context.shape[1] != self.context_channels or context.shape[2:] != x.shape[2:]:
            got = None if context is None else list(context.shape)
            raise ValueError(
                f"this prior is conditioned on a [B, {self.context_channels}, H, W] context of the "
                f"input's spatial size; got {got}"
            )
        return self.embed(context)

    def _steps(self, x: Tensor, context: Context, inverse: bool) -> tuple[Tensor, Tensor]:
        """Run the LSTM over the groups; returns ``(output, sum log_sigma per sample)``. Forward
        feeds the known ``x_{g-1}``, inverse feeds each newly recovered group."""
        emb = self._check(x, context)
        b, _, h, w = x.shape
        state = (x.new_zeros(b, self.hidden, h, w), x.new_zeros(b, self.hidden, h, w))
        prev = x.new_zeros(b, self.group, h, w)
        outs, log_sigma_sum = [], x.new_zeros(b)
        for g in range(self.channels // self.group):
            inp = prev if emb is None else torch.cat([prev, emb], 1)
            state = self.cell(inp, state)
            mu, log_sigma = self.out(state[0]).chunk(2, dim=1)
            xg = x[:, g * self.group : (g + 1) * self.group]
            if inverse:
                prev = xg * torch.exp(log_sigma) + mu
                outs.append(prev)
            else:
                outs.append((xg - mu) * torch.exp(-log_sigma))
                prev = xg
            log_sigma_sum = log_sigma_sum + log_sigma.flatten(1).sum(1)
        return torch.cat(outs, 1), log_sigma_sum

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        e, log_sigma_sum = self._steps(x, context, inverse=False)
        return e, -log_sigma_sum

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return self._steps(z, context, inverse=True)[0]


class AutoregressiveFactorOut(FactorOut):
    """mARFlow's factor-out: :class:`~attnflow.flows.multiscale.FactorOut` whose conditional prior on
    the factored-out half is the channel-autoregressive :class:`ChannelAutoregressive`
    conditioned on the kept half, instead of a factorised Gaussian::

        e = AR_standardise(x_out | x_keep),   z = [flatten(e), inner(x_keep)],
        log|det| = -sum log_sigma + log|det inner|.

    Same constructor arguments as ``FactorOut`` (minus ``learned_prior``) plus the prior's
    ``group``, ``hidden`` and ``kernel_size``.
    """

    def __init__(
        self,
        inner: Bijection,
        shape: Sequence[int],
        keep: int | None = None,
        group: int = 1,
        hidden: int = 16,
        kernel_size: int = 3,
    ) -> None:
        super().__init__(inner, shape, keep, learned_prior=False)
        self.autoregressive = ChannelAutoregressive(self.out_shape[0], group, hidden, self.keep, kernel_size)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        x_keep, x_out = x[:, : self.keep], x[:, self.keep :]
        e, logdet = self.autoregressive(x_out, x_keep)
        z_inner, ld_inner = self.inner(x_keep, context)
        return torch.cat([e.flatten(1), z_inner], dim=1), logdet + ld_inner

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        n_out = math.prod(self.out_shape)
        x_keep = self.inner.inverse(z[:, n_out:], context)
        e = z[:, :n_out].reshape(z.shape[0], *self.out_shape)
        return torch.cat([x_keep, self.autoregressive.inverse(e, x_keep)], dim=1)
