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

from ..nets.glow_coupling_net import CouplingNetFactory, conv_coupling_net
from .coupling import MaskedCoupling
from .masks import Mask

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


class SplineCoupling(MaskedCoupling):
    """Rational-quadratic spline coupling (Neural Spline Flows, Durkan et al. 2019): a
    :class:`~attnflow.flows.coupling.MaskedCoupling` whose element-wise ``tau`` is
    :func:`rational_quadratic_spline` with ``bins`` bins on ``[-bound, bound]``, its ``3 bins - 1``
    parameters per transformed element (widths, heights, inner derivatives) computed from the kept
    elements (and the ``context``, if any) by a Glow coupling network of width ``hidden`` (or
    ``net_factory(in, out)``). ``mask`` as for :class:`~attnflow.flows.masks.Mask`.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str | Mask = "channel",
        bins: int = 8,
        bound: float = 3.0,
        net_factory: CouplingNetFactory | None = None,
        context_channels: int = 0,
    ) -> None:
        if bins < 1 or not bound > 0:
            raise ValueError(f"a spline needs bins >= 1 and bound > 0, got bins={bins}, bound={bound}")
        factory = net_factory or (lambda i, o: conv_coupling_net(i, o, hidden))
        super().__init__(channels, mask, 3 * bins - 1, factory, context_channels)
        self.bins, self.bound = bins, float(bound)

    def _spline(self, x_b: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k, theta = self.bins, theta.movedim(0, -1)  # [B, C_b, H, W, 3 bins - 1]
        return rational_quadratic_spline(x_b, theta[..., :k], theta[..., k : 2 * k], theta[..., 2 * k :], self.bound,
                                         inverse)

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x_b, theta, inverse=False)

    def inverse_transform(self, z_b: Tensor, theta: Tensor) -> Tensor:
        return self._spline(z_b, theta, inverse=True)[0]
