"""Flow++ building blocks (Ho et al., "Flow++: Improving Flow-Based Generative Models with
Variational Dequantization and Architecture Design", ICML 2019): the mixture-of-logistics CDF
coupling, its gated-convolution + self-attention coupling network, and variational
dequantization. mARFlow (Bhattacharyya et al. 2020) and AttnFlow's image models use the same
coupling (AttnFlow, Table 1 "mixture affine coupling").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Chain, standard_normal_log_prob
from ..precision import inner_network
from ..sharding import per_sample_draw
from .attention import DotProductSelfAttention
from .glow import AffineCoupling, AttentionFactory, CouplingNetFactory, GlowStep
from .multiscale import checkerboard_mask

__all__ = [
    "mixture_logistic_logit_cdf",
    "bisect_increasing",
    "GatedAttentionNet",
    "MixtureCoupling",
    "MixtureStep",
    "VariationalDequantizer",
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


class _GatedResidual(nn.Module):
    """``h + a * sigmoid(g)`` with ``(a, g) = branch(h)`` (Flow++'s gated residual connection)."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, h: Tensor) -> Tensor:
        a, g = self.branch(h).chunk(2, dim=1)
        return h + a * torch.sigmoid(g)


class GatedAttentionNet(nn.Module):
    """Flow++ coupling network (Ho et al. 2019, Sec. 3.3): a 3x3 input convolution, ``blocks``
    blocks of

        h <- norm(h + gate(conv3x3(elu(conv3x3(elu(h))))))          (gated convolution)
        h <- norm(h + gate(W [MHSA(h)]))                              (gated self-attention)

    with ``gate(a, g) = a * sigmoid(g)``, then a zero-initialised 3x3 output convolution. The
    attention is plain multi-head scaled dot-product attention over the ``H*W`` positions
    (:class:`~attnflow.nn.attention.DotProductSelfAttention`); it needs no invertibility since
    it only parametrises the coupling. ``heads=0`` drops the attention sub-blocks (the
    gated-convolution network alone: the attention-free baseline). Differences from Flow++: group
    normalisation over each sample instead of per-position layer norm, no positional encoding
    and no dropout.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 1, heads: int = 1) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        if heads < 0:
            raise ValueError(f"coupling heads must be >= 0 (0 = no self-attention), got {heads}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
        for _ in range(blocks):
            conv = nn.Sequential(
                nn.ELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU(), nn.Conv2d(hidden, 2 * hidden, 3, padding=1)
            )
            layers += [_GatedResidual(conv), nn.GroupNorm(1, hidden)]
            if heads:
                attn = nn.Sequential(DotProductSelfAttention(hidden, heads), nn.Conv2d(hidden, 2 * hidden, 1))
                layers += [_GatedResidual(attn), nn.GroupNorm(1, hidden)]
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, nn.ELU(), last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


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

    Masks and context work as in :class:`~attnflow.nn.glow.AffineCoupling` (this class reuses
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
    convolution, 4 after the coupling), exactly as :class:`~attnflow.nn.glow.GlowStep`.

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
        masks = ["checkerboard" if i % 2 == 0 else "checkerboard-inv" for i in range(steps)]
        self.flow = Chain(
            [MixtureCoupling(channels, hidden, m, components, context_channels=hidden, heads=heads) for m in masks]
        )

    def context(self, k: Tensor) -> Tensor:
        """Embedding of the integer image that conditions every coupling."""
        return self.embed(k / self.levels - 0.5)

    def forward(self, k: Tensor) -> tuple[Tensor, Tensor]:
        eps = per_sample_draw(k, lambda s: torch.randn(s, dtype=k.dtype, device=k.device))
        y, logdet = self.flow(eps, self.context(k))
        u = torch.sigmoid(y)
        log_sigmoid_grad = (F.logsigmoid(y) + F.logsigmoid(-y)).flatten(1).sum(1)
        return u, standard_normal_log_prob(eps) - logdet - log_sigmoid_grad
