"""Contractive residual flows — i-ResNet, Residual Flow, i-DenseNet — with ACF's Lipschitz
attention inside their residual branches (ACF: Mukherjee, Patro & Namboodiri, "Attentive
Contractive Flow with Lipschitz Constrained Self-Attention"; Behrmann et al. 2019; Chen et al.
2019; Perugachi-Diaz et al. 2021)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..core import Bijection, Chain, Flow
from ..flows.glow import ActNorm
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess
from ..flows.residual_block import ResidualBlock
from ..flows.residual_logdet import LogDetConfig
from ..nets.lipschitz_attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from ..nets.residual_branches import BRANCH_KINDS, build_branch
from .hybrid import HybridFlow, latent_pieces

__all__ = ["residual_flow", "ATTENTION_KINDS", "lipschitz_attention"]

ATTENTION_KINDS: dict[str, Callable[[int, int], nn.Module] | None] = {
    "none": None,
    "l2": L2MultiheadSelfAttention,  # normalised by Kim et al.'s bound: 1-Lipschitz
    "lipnorm": LipNormSelfAttention,  # normalised by its bound: 1-Lipschitz
    "dot": DotProductSelfAttention,  # not Lipschitz: the ablation that breaks invertibility
}


def lipschitz_attention(kind: str, heads: int) -> Callable[[int], nn.Module] | None:
    """Factory ``channels -> attention module`` of ``kind`` in {none, l2, lipnorm, dot}."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention {kind!r}; valid: {', '.join(ATTENTION_KINDS)}")
    cls = ATTENTION_KINDS[kind]
    return None if cls is None else (lambda channels: cls(channels, heads))


def residual_flow(
    shape: Sequence[int] = (1, 8, 8),
    scales: int = 2,
    blocks: int = 2,
    branch: str = "residual_flow",
    hidden: int = 64,
    kernels: Sequence[int] = (3, 1, 3),
    growth: int = 32,
    depth: int = 3,
    coeff: float = 0.97,
    attention: str = "none",
    heads: int = 1,
    attention_scales: Sequence[int] = (),
    mix_init: float = 0.1,
    actnorm: bool = True,
    squeeze_first: bool = False,
    factor_out: bool = False,
    learned_prior: bool = True,
    preprocess: str = "logit",
    alpha: float = 1e-5,
    estimator: str = "russian_roulette",
    n_exact: int = 2,
    geom_p: float = 0.5,
    n_terms: int = 10,
    neumann_grad: bool = True,
    eval_n_exact: int = 20,
    inverse_atol: float = 1e-6,
    inverse_max_iter: int = 1000,
    classes: int = 0,
    classifier_hidden: int = 256,
) -> Flow:
    """A multi-scale contractive residual flow.

    Each scale is ``blocks`` x ``[ActNorm, ResidualBlock(g)]`` where ``g`` is the ``branch``
    (``"iresnet"``, ``"residual_flow"`` or ``"idensenet"``) with spectral-norm coefficient
    ``coeff``, each divided by a certified bound of its norm for the weights in use
    (:class:`attnflow.nets.lipschitz_layers.SpectralNormConv2d`); scales are separated by squeeze (and factor-out when ``factor_out``), ending in a
    flat latent. ``attention`` in {none, l2, lipnorm, dot} puts ACF's attention inside the
    branches of the scales listed in ``attention_scales`` (empty = every scale), mixed in by the
    contractive :class:`attnflow.nets.residual_branches.AttentionMix`; ``heads`` is at most the branch's
    hidden width (heads that do not divide it pad the attention's inner width, see
    :mod:`attnflow.nets.lipschitz_attention`).

    Log-det: ``estimator`` (``russian_roulette`` with ``n_exact`` exact terms and geometric
    ``geom_p``, or ``power_series`` with ``n_terms``; ``exact`` for tiny inputs) with the
    Neumann-series gradient in training, and roulette with ``eval_n_exact`` exact terms in
    evaluation.

    Hybrid model: ``classes`` > 0 returns a :class:`attnflow.models.hybrid.HybridFlow`, the same
    flow with Residual Flows' classifier head (width ``classifier_hidden``) on its latent.
    """
    if branch not in BRANCH_KINDS:
        raise ValueError(f"unknown branch {branch!r}; valid: {', '.join(sorted(BRANCH_KINDS))}")
    attention_factory = lipschitz_attention(attention, heads)  # heads vs width: checked by the module
    bad_scales = [s for s in attention_scales if not 0 <= s < scales]
    if bad_scales:
        raise ValueError(f"attention_scales {bad_scales} outside 0..{scales - 1}")
    train_logdet = LogDetConfig(estimator, n_terms=n_terms, n_exact=n_exact, geom_p=geom_p,
                                neumann_grad=neumann_grad and estimator != "exact")
    eval_logdet = (LogDetConfig("exact") if estimator == "exact"
                   else LogDetConfig("russian_roulette", n_exact=eval_n_exact, geom_p=geom_p))
    size_kwargs = {"hidden": hidden, "kernel_sizes": tuple(kernels)} if branch != "idensenet" else {"growth": growth, "depth": depth}

    def scale_blocks(channels: int, scale: int) -> list[Bijection]:
        use_attention = attention_factory is not None and (not attention_scales or scale in attention_scales)
        factor = 2 ** (scale + int(squeeze_first))
        input_size = (shape[1] // factor, shape[2] // factor)
        layers: list[Bijection] = []
        for _ in range(blocks):
            if actnorm:
                layers.append(ActNorm(channels))
            g = build_branch(branch, channels, coeff=coeff, input_size=input_size,
                             attention=attention_factory if use_attention else None, mix_init=mix_init, **size_kwargs)
            layers.append(ResidualBlock(g, train_logdet, eval_logdet, atol=inverse_atol, rtol=0.0, max_iter=inverse_max_iter))
        return layers

    body = multiscale_transform(shape, scales, scale_blocks, learned_prior, squeeze_first, factor_out)
    transform = Chain([build_preprocess(preprocess, alpha), body])
    if not classes:
        return Flow(transform, shape)
    pieces = latent_pieces(shape, scales, squeeze_first, factor_out)
    return HybridFlow(transform, shape, pieces, classes, classifier_hidden)
