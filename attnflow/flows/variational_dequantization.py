"""Variational dequantization of Flow++ (Ho et al., "Flow++: Improving Flow-Based Generative
Models with Variational Dequantization and Architecture Design", ICML 2019, Sec. 3.1): a
conditional flow of mixture-of-logistics couplings on the dequantization noise."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Chain, standard_normal_log_prob
from ..sharding import per_sample_draw
from .masks import alternating_masks
from .mixture_coupling import MixtureCoupling

__all__ = ["VariationalDequantizer"]


class VariationalDequantizer(nn.Module):
    """Variational dequantization (Flow++, Sec. 3.1): a conditional flow ``q(u | k)`` on the
    dequantization noise ``u in (0, 1)^D`` of integer images ``k``.

    With ``L`` levels, data ``x = (k + u) / L`` in [0, 1] and the model density ``p`` on [0, 1]^D,
    the discrete likelihood satisfies (Jensen)::

        log P(k) = log E_{u ~ q}[ p((k + u) / L) L^{-D} / q(u | k) ]
                 >= E_{u ~ q}[ log p((k + u) / L) - log q(u | k) ] - D log L,

    the ELBO; uniform dequantization is ``q = 1``. Sampling: ``eps ~ N(0, I)``,
    ``y = g(eps; k)`` a chain of conditional :class:`MixtureCoupling` layers (alternating
    checkerboards) whose context is a convolutional embedding of ``k / L - 1/2``, and
    ``u = sigmoid(y)``, so ``log q(u | k) = log N(eps) - log|det dy/deps| - sum log sigmoid'(y)``.

    :meth:`forward` takes the integer levels as a float tensor ``[B, C, H, W]`` and returns
    ``(u, log q(u | k))``.
    """

    def __init__(
        self, channels: int, levels: int, steps: int = 2, hidden: int = 16, components: int = 4, heads: int = 1
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        if steps < 1:
            raise ValueError(f"dequantizer steps must be >= 1, got {steps}")
        self.levels = levels
        self.embed = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ELU(), nn.Conv2d(hidden, hidden, 3, padding=1)
        )
        self.flow = Chain([
            MixtureCoupling(channels, hidden, m, components, context_channels=hidden, heads=heads)
            for m in alternating_masks("checkerboard", steps)
        ])

    def context(self, k: Tensor) -> Tensor:
        """Embedding of the integer image that conditions every coupling."""
        return self.embed(k / self.levels - 0.5)

    def forward(self, k: Tensor) -> tuple[Tensor, Tensor]:
        eps = per_sample_draw(k, lambda s: torch.randn(s, dtype=k.dtype, device=k.device))
        y, logdet = self.flow(eps, self.context(k))
        u = torch.sigmoid(y)
        log_sigmoid_grad = (F.logsigmoid(y) + F.logsigmoid(-y)).flatten(1).sum(1)
        return u, standard_normal_log_prob(eps) - logdet - log_sigmoid_grad
