"""Flow++'s mixture-of-logistics CDF coupling (Ho et al., "Flow++: Improving Flow-Based Generative
Models with Variational Dequantization and Architecture Design", ICML 2019, Sec. 3.2) and the step
built on it; its coupling network is :mod:`attnflow.nets.flowpp_coupling_net`, its variational
dequantization :mod:`attnflow.flows.variational_dequantization`. mARFlow (Bhattacharyya et al.
2020) and AttnFlow's image models use the same coupling (AttnFlow, Table 1 "mixture affine
coupling").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Context
from ..nets.flowpp_coupling_net import GatedAttentionNet
from ..nets.glow_coupling_net import CouplingNetFactory
from .coupling import MaskedCoupling
from .glow import AttentionFactory, GlowStep
from .masks import Mask

__all__ = [
    "mixture_logistic_logit_cdf",
    "bisect_increasing",
    "MixtureCoupling",
    "MixtureStep",
]


def mixture_logistic_logit_cdf(x: Tensor, logits: Tensor, mu: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor]:
    """``(logit F(x), log |d logit F(x) / dx|)`` for the logistic mixture CDF
    ``F(x) = sum_k pi_k sigmoid((x - mu_k) exp(-log_s_k))``, ``pi = softmax(logits)``.

    Component parameters have a leading ``K`` dimension, ``x`` broadcasts against them. Computed
    in log space: ``log F = logsumexp_k(log pi_k + log sigmoid(u_k))``,
    ``log(1 - F) = logsumexp_k(log pi_k + log sigmoid(-u_k))`` and
    ``log F' = logsumexp_k(log pi_k + log sigmoid(u_k) + log sigmoid(-u_k) - log_s_k)``, so
    ``log |d logit F / dx| = log F' - log F - log(1 - F)``.
    """
    log_pi = torch.log_softmax(logits, dim=0)
    u = (x - mu) * torch.exp(-log_s)
    log_sig, log_sig_neg = F.logsigmoid(u), F.logsigmoid(-u)
    log_cdf = torch.logsumexp(log_pi + log_sig, dim=0)
    log_sf = torch.logsumexp(log_pi + log_sig_neg, dim=0)
    log_pdf = torch.logsumexp(log_pi + log_sig + log_sig_neg - log_s, dim=0)
    return log_cdf - log_sf, log_pdf - log_cdf - log_sf


def bisect_increasing(
    fn: Callable[[Tensor], Tensor],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> Tensor:
    """Solve ``fn(x) = target`` elementwise for an increasing ``fn`` on the bracket
    ``fn(lo) <= target <= fn(hi)`` by vectorised bisection.

    Stops when every interval is shorter than ``tol + 4 eps |x|`` (``eps`` of the dtype, so
    float32 gets a reachable tolerance); raises ``RuntimeError`` if that does not happen within
    ``max_iter`` halvings.
    """
    eps = torch.finfo(target.dtype).eps
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if bool(((hi - lo) <= tol + 4 * eps * mid.abs()).all()):
            return mid
        below = fn(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    width = float((hi - lo).max())
    raise RuntimeError(
        f"bisection did not converge in {max_iter} iterations (largest interval {width:.3g}, "
        f"tolerance {tol:.3g}); raise max_iter or check the latent for extreme values"
    )


class MixtureCoupling(MaskedCoupling):
    """Mixture-of-logistics CDF coupling (Flow++, Sec. 3.2; AttnFlow Table 1), a
    :class:`~attnflow.flows.coupling.MaskedCoupling` with ``theta = (a, b, pi, mu, log_s)`` and::

        tau(x_b) = sigma^{-1}( sum_k pi_k sigma((x_b - mu_k) exp(-log_s_k)) ) * exp(a) + b
        log|d tau / d x_b| = log F'(x_b) - log F(x_b) - log(1 - F(x_b)) + a

    with ``F`` the mixture CDF, ``pi = softmax`` over ``components`` and ``a = tanh(.)`` (Flow++
    bounds the scale this way; bounded away from 0 and infinity, so the inverse is well
    conditioned). The inverse solves ``logit F(x_b) = (z_b - b) exp(-a)`` by bisection on the
    exact bracket ``[min_k, max_k] (mu_k + exp(log_s_k) y)`` (every component CDF is below /
    above ``sigma(y)`` at its ends); it is not differentiable with respect to the parameters.

    Masks and context work as in every masked coupling. ``net_factory(in_channels, out_channels)``
    builds the network; the default is :class:`GatedAttentionNet` (``hidden``, ``blocks``,
    ``heads``; ``heads=0`` has no self-attention). The component means get fixed offsets
    ``linspace(-1, 1, K)`` so the ``K`` components start distinct (with a zero-initialised network
    they would otherwise receive identical gradients forever).
    """

    mu_offset: Tensor  # buffer

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str | Mask = "channel",
        components: int = 4,
        net_factory: CouplingNetFactory | None = None,
        context_channels: int = 0,
        blocks: int = 1,
        heads: int = 1,
        bisection_tol: float = 1e-12,
        bisection_max_iter: int = 200,
    ) -> None:
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        factory = net_factory or (lambda i, o: GatedAttentionNet(i, o, hidden, blocks, heads))
        super().__init__(channels, mask, 2 + 3 * components, factory, context_channels)
        self.components = components
        self.register_buffer("mu_offset", torch.linspace(-1.0, 1.0, components).view(-1, 1, 1, 1, 1))
        self.bisection_tol = bisection_tol
        self.bisection_max_iter = bisection_max_iter

    def _mixture(self, theta: Tensor) -> tuple[Tensor, ...]:
        """``(scale_log, shift, logits, mu, log_s)``; the mixture parameters ``[K, B, C_b, H, W]``."""
        k = self.components
        logits, mu, log_s = theta[2 : 2 + k], theta[2 + k : 2 + 2 * k] + self.mu_offset, theta[2 + 2 * k :]
        return torch.tanh(theta[0]), theta[1], logits, mu, log_s

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        scale_log, shift, logits, mu, log_s = self._mixture(theta)
        y, log_dy = mixture_logistic_logit_cdf(x_b, logits, mu, log_s)
        return y * scale_log.exp() + shift, log_dy + scale_log

    def inverse_transform(self, z_b: Tensor, theta: Tensor) -> Tensor:
        scale_log, shift, logits, mu, log_s = self._mixture(theta)
        with torch.no_grad():
            target = (z_b - shift) * torch.exp(-scale_log)
            ends = mu + torch.exp(log_s) * target
            return bisect_increasing(
                lambda v: mixture_logistic_logit_cdf(v, logits, mu, log_s)[0],
                target,
                ends.amin(0),
                ends.amax(0),
                self.bisection_tol,
                self.bisection_max_iter,
            )

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        if not torch.isfinite(z).all():
            raise ValueError("latent contains NaN or infinite values; the mixture coupling cannot invert it")
        return super().inverse(z, context)


class MixtureStep(GlowStep):
    """A Flow++ / mARFlow step ``ActNorm -> InvertibleConv1x1 -> MixtureCoupling`` with AttnFlow's
    invertible attention at ``positions`` (1 before ActNorm, 2 after ActNorm, 3 after the 1x1
    convolution, 4 after the coupling), exactly as :class:`~attnflow.flows.glow.GlowStep`.

    A :class:`GlowStep` (its position validation and layer order) with a :class:`MixtureCoupling`
    as its coupling; ``coupling_kwargs`` go to :class:`MixtureCoupling`.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str | Mask = "channel",
        attention: AttentionFactory | None = None,
        positions: Sequence[int] = (),
        context_channels: int = 0,
        **coupling_kwargs: Any,  # MixtureCoupling's keywords, passed on
    ) -> None:
        coupling = MixtureCoupling(channels, hidden, mask, context_channels=context_channels, **coupling_kwargs)
        super().__init__(channels, hidden, mask, attention, positions, context_channels=context_channels,
                         coupling=coupling)
