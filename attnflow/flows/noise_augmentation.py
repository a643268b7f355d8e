"""DenseFlow's cross-unit coupling (Grcić, Grubišić & Šegvić 2021, Sec. 3.2): incremental
augmentation of intermediate latents with noise conditioned on all earlier latents.

Between invertible units ``f_i`` of a stage, the latent ``z_i`` is widened with ``e_i ~ N(0, I)``:

    z_i^aug = [z_i, sigma * e_i + mu],     (mu, log sigma) = g_i([z_0, z_1, ..., z_{i-1}]),

where ``g_i`` is a densely connected network (:class:`~attnflow.nets.denseflow_coupling_net.DenseBlock`) on the
concatenation of the stage input and all earlier unit outputs (dense connectivity across units).
The noise ``eta = sigma * e + mu`` has density ``q(eta | x) = N(e; 0, I) / prod(sigma)``, so

    log p(x) >= E_e[ log p(z_final) + sum(bijection log-dets) - log q(eta | x) ],
    -log q(eta | x) = -log N(e; 0, I) + sum log sigma.

The layer therefore adds ``sum log sigma - log N(e)`` to the running "log-det": then
``log N(z_final) + logdet`` is a one-sample estimate of this evidence lower bound (the paper's
bound ``ln p(z_i^aug) - ln p*(e_i) + ln|det diag(sigma)|``). For a fixed ``e`` the map
``[z_i, e] -> z_i^aug`` is a bijection with Jacobian ``[[I, 0], [*, diag(sigma)]]``; its inverse
simply drops the noise channels. ``log sigma = 2 tanh(u / 2)`` keeps the scale in
``[e^-2, e^2]`` (as in the reference code), and ``g_i`` starts at zero (``mu = 0, sigma = 1``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from ..core import Bijection, Context, standard_normal_log_prob
from ..nets.denseflow_coupling_net import DenseBlock
from ..precision import inner_network
from ..sharding import per_sample_draw

__all__ = ["CrossUnitCoupling", "CrossUnitStage"]


class CrossUnitCoupling(nn.Module):
    """One noise augmentation ``z -> [z, sigma * e + mu]`` with ``(mu, sigma)`` from the
    ``history`` (earlier latents concatenated along channels); see the module docstring.

    ``forward(z, history) -> (z_aug, bound_term)`` draws ``e`` (or uses ``fixed_noise`` when it is
    set, a ``[B, noise_channels, H, W]`` tensor, for tests and reproducible encodings) and returns
    ``bound_term = sum log sigma - log N(e; 0, I)`` of shape ``[B]``. ``inverse(z_aug)`` drops
    the noise channels.
    """

    def __init__(self, history_channels: int, noise_channels: int, depth: int = 2, growth: int = 16) -> None:
        super().__init__()
        if noise_channels < 1:
            raise ValueError(f"cross-unit coupling needs noise_channels >= 1, got {noise_channels}")
        self.noise_channels = noise_channels
        self.net = DenseBlock(history_channels, 2 * noise_channels, depth, growth, zero_init=True)
        self.fixed_noise: Tensor | None = None

    def noise_parameters(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_sigma)``, each ``[B, noise_channels, H, W]``."""
        mu, u = inner_network(self.net, history).chunk(2, dim=1)
        return mu, 2.0 * torch.tanh(u / 2.0)

    def _noise(self, z: Tensor) -> Tensor:
        shape = (z.shape[0], self.noise_channels, *z.shape[2:])
        if self.fixed_noise is None:
            return per_sample_draw(z, lambda s: torch.randn((*s[:1], *shape[1:]), dtype=z.dtype, device=z.device))
        if tuple(self.fixed_noise.shape) != shape:
            raise ValueError(f"fixed_noise must have shape {list(shape)}, got {list(self.fixed_noise.shape)}")
        return self.fixed_noise

    def forward(self, z: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        e = self._noise(z)
        mu, log_sigma = self.noise_parameters(history)
        bound = log_sigma.flatten(1).sum(1) - standard_normal_log_prob(e)
        return torch.cat([z, log_sigma.exp() * e + mu], dim=1), bound

    def inverse(self, z_aug: Tensor) -> Tensor:
        return z_aug[:, : z_aug.shape[1] - self.noise_channels]


class CrossUnitStage(Bijection):
    """A DenseFlow stage: ``units`` invertible units with a cross-unit coupling before every unit
    but the first. Unit ``i`` works on ``channels + i * growth`` channels; the output has
    ``out_channels = channels + (units - 1) * growth`` channels.

    ``unit_factory(channels) -> Bijection`` builds one unit. The noise of unit ``i`` is
    conditioned on ``[z_0, ..., z_{i-1}]``: the stage input and the outputs of units
    ``0 .. i-2`` (before their own augmentation). ``forward`` returns the lower-bound "log-det"
    (bijection log-dets plus the cross-unit bound terms); ``inverse`` is exact: it inverts each
    unit and drops the noise channels.
    """

    def __init__(
        self,
        channels: int,
        units: int,
        growth: int,
        unit_factory: Callable[[int], Bijection],
        noise_depth: int = 2,
        noise_growth: int = 16,
    ) -> None:
        super().__init__()
        if units < 1:
            raise ValueError(f"a stage needs at least 1 invertible unit, got {units}")
        if units > 1 and growth < 1:
            raise ValueError(f"growth (noise channels per cross-unit coupling) must be >= 1, got {growth}")
        widths = [channels + i * growth for i in range(units)]
        self.channels = channels
        self.out_channels = widths[-1]
        self.units = nn.ModuleList(unit_factory(c) for c in widths)
        # history of unit i (i >= 1): z_0 (channels) and z_1..z_{i-1} (widths[0..i-2])
        self.couplings = nn.ModuleList(
            CrossUnitCoupling(channels + sum(widths[: i - 1]), growth, noise_depth, noise_growth)
            for i in range(1, units)
        )

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        if x.shape[1] != self.channels:
            raise ValueError(f"stage expects {self.channels} channels, got {x.shape[1]}")
        history = [x]
        z, logdet = self.units[0](x, context)
        for unit, coupling in zip(self.units[1:], self.couplings):
            z_aug, bound = coupling(z, torch.cat(history, dim=1))
            history.append(z)
            z, ld = unit(z_aug, context)
            logdet = logdet + bound + ld
        return z, logdet

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        units = cast(list[Bijection], list(self.units))
        couplings = cast(list[CrossUnitCoupling], list(self.couplings))
        for unit, coupling in zip(reversed(units[1:]), reversed(couplings)):
            z = coupling.inverse(unit.inverse(z, context))
        return units[0].inverse(z, context)
