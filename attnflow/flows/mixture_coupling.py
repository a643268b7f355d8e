"""Flow++'s mixture-of-logistics CDF coupling (Ho et al., "Flow++: Improving Flow-Based Generative
Models with Variational Dequantization and Architecture Design", ICML 2019, Sec. 3.2) and the step
built on it; its coupling network is :mod:`attnflow.nets.flowpp_coupling_net`, its variational
dequantization :mod:`attnflow.flows.variational_dequantization`. mARFlow (Bhattacharyya et al.
2020) and AttnFlow's image models use the same coupling (AttnFlow, Table 1 "mixture affine
coupling").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nets.flowpp_coupling_net import GatedAttentionNet
from ..nets.glow_coupling_net import CouplingNetFactory
from ..precision import inner_network
from .glow import AffineCoupling, AttentionFactory, GlowStep
from .multiscale import checkerboard_mask

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


class MixtureCoupling(AffineCoupling):
    """Mixture-of-logistics CDF coupling (Flow++, Sec. 3.2; AttnFlow Table 1)::

        (a, b, pi, mu, log_s) = NN(x_a [, context])
        z_b = sigma^{-1}( sum_k pi_k sigma((x_b - mu_k) exp(-log_s_k)) ) * exp(a) + b
        log|det| = sum_b [ log F'(x_b) - log F(x_b) - log(1 - F(x_b)) + a ]

    with ``F`` the mixture CDF, ``pi = softmax`` over ``components`` and ``a = tanh(.)`` (Flow++
    bounds the scale this way; bounded away from 0 and infinity, so the inverse is well
    conditioned). The inverse solves ``logit F(x_b) = (z_b - b) exp(-a)`` by bisection on the
    exact bracket ``[min_k, max_k] (mu_k + exp(log_s_k) y)`` (every component CDF is below /
    above ``sigma(y)`` at its ends); it is not differentiable with respect to the parameters.

    Masks and context work as in :class:`~attnflow.flows.glow.AffineCoupling` (this class reuses
    its split and merge). ``net_factory(in_channels, out_channels)`` builds the network; the
    default is :class:`GatedAttentionNet` (``hidden``, ``blocks``, ``heads``; ``heads=0``
    has no self-attention). The component means get fixed offsets ``linspace(-1, 1, K)`` so the ``K``
    components start distinct (with a zero-initialised network they would otherwise receive
    identical gradients forever).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str = "channel",
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
        base = net_factory or (lambda i, o: GatedAttentionNet(i, o, hidden, blocks, heads))
        per_element = 2 + 3 * components
        # AffineCoupling asks for 2 outputs per transformed channel; we need 2 + 3K.
        super().__init__(channels, hidden, mask, lambda i, o: base(i, o // 2 * per_element), context_channels)
        self.params_per_element = per_element
        self.components = components
        self.register_buffer("mu_offset", torch.linspace(-1.0, 1.0, components).view(-1, 1, 1, 1, 1))
        self.bisection_tol = bisection_tol
        self.bisection_max_iter = bisection_max_iter

    def _params(self, a: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        """``(scale_log, shift, logits, mu, log_s, keep)``; mixture parameters ``[K, B, C_b, H, W]``
        and ``keep`` the 0/1 weight of the transformed elements (all ones for channel masks)."""
        if self.context_channels:
            if context is None:
                raise ValueError("this coupling is conditional: pass a context")
            a = torch.cat([a, context], 1)
        out = inner_network(self.net, a)
        k = self.components
        out = out.view(out.shape[0], self.params_per_element, -1, *out.shape[2:]).movedim(1, 0)
        scale_log, shift = torch.tanh(out[0]), out[1]
        logits, mu, log_s = out[2 : 2 + k], out[2 + k : 2 + 2 * k] + self.mu_offset, out[2 + 2 * k :]
        if self.mask.startswith("channel"):
            keep = torch.ones_like(shift)
        else:
            keep = 1 - checkerboard_mask(a.shape[-2], a.shape[-1], invert=self.mask.endswith("inv"), like=shift)
        return scale_log, shift, logits, mu, log_s, keep

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[1] != self.channels:
            raise ValueError(f"coupling expects {self.channels} channels, got {x.shape[1]}")
        a, b = self._split(x)
        scale_log, shift, logits, mu, log_s, keep = self._params(a, context)
        y, log_dy = mixture_logistic_logit_cdf(b, logits, mu, log_s)
        z_b = keep * (y * scale_log.exp() + shift)
        logdet = (keep * (log_dy + scale_log)).flatten(1).sum(1)
        return self._merge(a, z_b), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        if not torch.isfinite(z).all():
            raise ValueError("latent contains NaN or infinite values; the mixture coupling cannot invert it")
        a, z_b = self._split(z)
        scale_log, shift, logits, mu, log_s, keep = self._params(a, context)
        with torch.no_grad():
            target = (z_b - shift) * torch.exp(-scale_log)
            ends = mu + torch.exp(log_s) * target
            x_b = bisect_increasing(
                lambda v: mixture_logistic_logit_cdf(v, logits, mu, log_s)[0],
                target,
                ends.amin(0),
                ends.amax(0),
                self.bisection_tol,
                self.bisection_max_iter,
            )
        return self._merge(a, keep * x_b)


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
        mask: str = "channel",
        attention: AttentionFactory | None = None,
        positions: Sequence[int] = (),
        context_channels: int = 0,
        **coupling_kwargs: object,
    ) -> None:
        coupling = MixtureCoupling(channels, hidden, mask, context_channels=context_channels, **coupling_kwargs)  # type: ignore[arg-type]
        super().__init__(channels, hidden, mask, attention, positions, context_channels=context_channels, coupling=coupling)
