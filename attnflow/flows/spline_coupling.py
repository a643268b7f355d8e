"""Rational-quadratic spline coupling (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline
Flows", NeurIPS 2019, Sec. 3).

The transformed half of a coupling goes through an elementwise monotone rational-quadratic
spline whose ``K`` bins, knot heights and interior derivatives are computed from the other half.
On ``[-B, B]`` the spline has knots ``(x_k, y_k)``, ``k = 0..K`` (``x_0 = y_0 = -B``,
``x_K = y_K = B``), positive derivatives ``d_k`` at the knots, and ``d_0 = d_K = 1``, so that it
joins the identity outside ``[-B, B]`` (the linear tails) with a continuous derivative. In bin
``k`` with width ``w_k``, height ``h_k``, slope ``s_k = h_k / w_k`` and ``xi = (x - x_k) / w_k``
(paper eq. 4-5)::

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]

    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2  > 0,

and the log-det is the sum of ``log dy/dx`` over the transformed elements (exact). The inverse
solves the quadratic ``a xi^2 + b xi + c = 0`` for ``xi`` in [0, 1] (paper eq. 6-8, Appendix A)::

    a = h_k (s_k - d_k) + (y - y_k)(d_{k+1} + d_k - 2 s_k)
    b = h_k d_k - (y - y_k)(d_{k+1} + d_k - 2 s_k)
    c = -s_k (y - y_k)
    xi = 2c / (-b - sqrt(b^2 - 4ac)),

the numerically stable root. Widths and heights are a softmax of the network's outputs (each at
least ``MIN_BIN`` of the interval), the interior derivatives ``MIN_DERIVATIVE + softplus``
shifted so that zero outputs give ``d_k = 1``: with uniform bins the spline is then the
identity, and a zero-initialised network makes every coupling start as the identity, as Glow's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Bijection
from ..nets.glow_coupling_net import CouplingNetFactory, conv_coupling_net
from ..precision import inner_network
from .multiscale import checkerboard_mask

__all__ = ["MIN_BIN", "MIN_DERIVATIVE", "SplineCoupling", "rational_quadratic_spline"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # softplus(shift) + MIN_DERIVATIVE = 1


def _knots(raw: Tensor, bound: float) -> Tensor:
    """``K + 1`` increasing knots from ``-bound`` to ``bound`` from ``K`` unnormalised bin sizes."""
    bins = raw.shape[-1]
    sizes = MIN_BIN + (1.0 - MIN_BIN * bins) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0)) * (2 * bound) - bound
    ends = torch.ones_like(knots[..., :1]) * bound  # exactly -bound and bound, whatever the rounding
    return torch.cat([-ends, knots[..., 1:-1], ends], -1)


def _in_bin(values: Tensor, index: Tensor) -> Tensor:
    return values.gather(-1, index).squeeze(-1)


def rational_quadratic_spline(
    inputs: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The spline of the module docstring applied elementwise: ``(outputs, log|d outputs / d inputs|)``.

    ``widths`` and ``heights`` are ``[..., K]`` unnormalised bin sizes and ``derivatives``
    ``[..., K - 1]`` unconstrained interior derivatives, for ``inputs`` of shape ``[...]``;
    ``inverse=True`` applies the inverse spline (and returns the inverse's log-derivative).
    Outside ``[-bound, bound]`` the map is the identity with log-derivative 0.
    """
    if widths.shape[-1] != heights.shape[-1] or derivatives.shape[-1] != widths.shape[-1] - 1:
        raise ValueError(f"a spline of K bins needs K widths, K heights and K - 1 derivatives, got "
                         f"{widths.shape[-1]}, {heights.shape[-1]} and {derivatives.shape[-1]}")
    xk, yk = _knots(widths, bound), _knots(heights, bound)
    ones = derivatives.new_ones(*derivatives.shape[:-1], 1)
    dk = torch.cat([ones, MIN_DERIVATIVE + F.softplus(derivatives + _DERIVATIVE_SHIFT), ones], dim=-1)
    inside = (inputs >= -bound) & (inputs <= bound)
    clamped = inputs.clamp(-bound, bound)
    search = (yk if inverse else xk)[..., 1:-1].contiguous()
    index = torch.searchsorted(search, clamped.unsqueeze(-1).contiguous(), right=True)
    x0, y0 = _in_bin(xk, index), _in_bin(yk, index)
    w, h = _in_bin(xk, index + 1) - x0, _in_bin(yk, index + 1) - y0
    d0, d1 = _in_bin(dk, index), _in_bin(dk, index + 1)
    s = h / w
    curvature = d1 + d0 - 2 * s
    if inverse:
        dy = clamped - y0
        a = h * (s - d0) + dy * curvature
        b = h * d0 - dy * curvature
        c = -s * dy
        xi = (2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp(min=0.0)))).clamp(0.0, 1.0)
        outputs = x0 + xi * w
    else:
        xi = (clamped - x0) / w
        outputs = y0 + h * (s * xi**2 + d0 * xi * (1 - xi)) / (s + curvature * xi * (1 - xi))
    log_derivative = (2 * torch.log(s) + torch.log(d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
                      - 2 * torch.log(s + curvature * xi * (1 - xi)))
    log_derivative = -log_derivative if inverse else log_derivative
    return torch.where(inside, outputs, inputs), torch.where(inside, log_derivative, torch.zeros_like(inputs))


class SplineCoupling(Bijection):
    """Rational-quadratic spline coupling: the elements where the ``mask`` is 0 go through
    :func:`rational_quadratic_spline` with ``bins`` bins on ``[-bound, bound]``, its ``3 bins - 1``
    parameters per element computed from the other elements (and the ``context``, if any) by a
    Glow coupling network of width ``hidden`` (or ``net_factory(in, out)``).

    ``mask``: ``"channel"`` keeps the first ``C // 2`` channels and transforms the rest,
    ``"checkerboard"`` keeps the even squares of every channel; ``-inv`` swaps the roles. The
    network sees the image with the transformed elements zeroed and gives the parameters of the
    transformed channels (all channels for a checkerboard, whose kept squares ignore theirs).
    """

    MASKS = ("channel", "channel-inv", "checkerboard", "checkerboard-inv")

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str = "channel",
        bins: int = 8,
        bound: float = 3.0,
        net_factory: CouplingNetFactory | None = None,
        context_channels: int = 0,
    ) -> None:
        super().__init__()
        if mask not in self.MASKS:
            raise ValueError(f"unknown coupling mask {mask!r}; valid masks: {', '.join(self.MASKS)}")
        if mask.startswith("channel") and channels < 2:
            raise ValueError(f"a channel mask needs at least 2 channels, got {channels}; "
                             "use a checkerboard mask")
        if bins < 1 or not bound > 0:
            raise ValueError(f"a spline needs bins >= 1 and bound > 0, got bins={bins}, bound={bound}")
        self.channels, self.mask, self.bins, self.bound = channels, mask, bins, float(bound)
        self.context_channels = context_channels
        channel_mask = mask.startswith("channel")
        kept = [channel_mask and (c < channels // 2) != mask.endswith("inv") for c in range(channels)]
        self._kept_channels = tuple(float(k) for k in kept)
        self.transformed = [c for c in range(channels) if not kept[c]]  # the channels the spline acts on
        factory = net_factory or (lambda i, o: conv_coupling_net(i, o, hidden))
        self.net = factory(channels + context_channels, len(self.transformed) * (3 * bins - 1))

    def _kept(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The conditioning elements (1) of ``x`` and of its transformed channels, broadcastable."""
        if self.mask.startswith("channel"):
            return x.new_tensor(self._kept_channels).view(1, -1, 1, 1), x.new_zeros(())
        board = checkerboard_mask(x.shape[-2], x.shape[-1], invert=self.mask.endswith("inv"), like=x)
        return board, board

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        """The coupling's output and log-det (of the direction applied)."""
        if x.shape[1] != self.channels:
            raise ValueError(f"coupling expects {self.channels} channels, got {x.shape[1]}")
        kept, kept_in_transformed = self._kept(x)
        a = x * kept
        if self.context_channels:
            if context is None:
                raise ValueError("this coupling is conditional: pass a context")
            a = torch.cat([a, context], 1)
        b, _, height, width = x.shape
        k = self.bins
        params = inner_network(self.net, a).view(b, len(self.transformed), 3 * k - 1, height, width)
        params = params.permute(0, 1, 3, 4, 2)
        index = torch.tensor(self.transformed, device=x.device)
        part = x.index_select(1, index)
        y, log_derivative = rational_quadratic_spline(part, params[..., :k], params[..., k : 2 * k],
                                                      params[..., 2 * k :], self.bound, inverse)
        y = part * kept_in_transformed + y * (1 - kept_in_transformed)
        logdet = (log_derivative * (1 - kept_in_transformed)).flatten(1).sum(1)
        return x.index_copy(1, index, y), logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self._couple(z, context, inverse=True)[0]
