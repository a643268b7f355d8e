"""Contractive residual flows — i-ResNet, Residual Flow, i-DenseNet — with ACF's Lipschitz
attention inside their residual branches (ACF: Mukherjee, Patro & Namboodiri, "Attentive
Contractive Flow with Lipschitz Constrained Self-Attention"; Behrmann et al. 2019; Chen et al.
2019; Perugachi-Diaz et al. 2021)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

from torch import nn

from ..core import Bijection, Chain, Flow
from ..flows.glow import ActNorm
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess
from ..flows.residual_block import ResidualBlock
from ..flows.residual_logdet import ESTIMATORS, LogDetConfig
from ..nets.lipschitz_attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from ..nets.residual_branches import BRANCH_KINDS, build_branch
from ..schema import Key
from .hybrid import HybridFlow, latent_pieces
from .keys import Alpha, Heads, Hidden, LearnedPrior, Preprocess, Scales, Shape
from .registry import register_family

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


@register_family("residual", tiny={"blocks": 1, "hidden": 8, "estimator": "exact"})
def residual_flow(
    shape: Shape = (1, 8, 8),
    scales: Scales = 2,
    blocks: Annotated[int, Key("residual blocks per scale", lo=1, hi=256)] = 2,
    branch: Annotated[str, Key("residual branch", choices=tuple(BRANCH_KINDS))] = "residual_flow",
    hidden: Hidden = 64,
    kernels: Annotated[Sequence[int], Key("kernel sizes of the branch convolutions", lo=1, hi=15,
                                          min_length=1, odd=True)] = (3, 1, 3),
    growth: Annotated[int, Key("i-DenseNet growth (channels per dense layer)", lo=1, hi=4096)] = 32,
    depth: Annotated[int, Key("i-DenseNet dense layers", lo=1, hi=64)] = 3,
    coeff: Annotated[float, Key("spectral-norm coefficient (Lipschitz bound of each layer)", lo=0.0, hi=1.0,
                                lo_open=True, hi_open=True)] = 0.97,
    attention: Annotated[str, Key("Lipschitz attention in the branches",
                                  choices=tuple(ATTENTION_KINDS))] = "none",
    heads: Heads = 1,
    attention_scales: Annotated[Sequence[int], Key("scales with attention; empty = all", lo=0, hi=9,
                                                   unique=True)] = (),
    mix_init: Annotated[float, Key("initial attention weight", lo=0.0, hi=1.0, lo_open=True,
                                   hi_open=True)] = 0.1,
    actnorm: Annotated[bool, Key("ActNorm before each block")] = True,
    squeeze_first: Annotated[bool, Key("squeeze before the first scale")] = False,
    factor_out: Annotated[bool, Key("factor out half of the channels between scales")] = False,
    learned_prior: LearnedPrior = True,
    preprocess: Preprocess = "logit",
    alpha: Alpha = 1e-5,
    estimator: Annotated[str, Key("log-det estimator in training", choices=ESTIMATORS)] = "russian_roulette",
    n_exact: Annotated[int, Key("exact terms of the Russian-roulette estimator", lo=0, hi=1000)] = 2,
    geom_p: Annotated[float, Key("Russian-roulette geometric parameter", lo=0.0, hi=1.0, lo_open=True,
                                 hi_open=True)] = 0.5,
    n_terms: Annotated[int, Key("power-series terms", lo=1, hi=1000)] = 10,
    neumann_grad: Annotated[bool, Key("Neumann-series gradient")] = True,
    eval_n_exact: Annotated[int, Key("exact terms of the evaluation estimator", lo=0, hi=1000)] = 20,
    inverse_atol: Annotated[float, Key("tolerance of the fixed-point inverse", lo=0.0, hi=1.0,
                                       lo_open=True)] = 1e-6,
    inverse_max_iter: Annotated[int, Key("iterations of the fixed-point inverse", lo=1, hi=10**6)] = 1000,
    classes: Annotated[int, Key("classes of the classifier head on the latent (hybrid model); 0 = no head",
                                lo=0, hi=100_000)] = 0,
    classifier_hidden: Annotated[int, Key("width of the classifier head's convolutions", lo=1,
                                          hi=4096)] = 256,
    likelihood_weight: Annotated[float, Key(
        "hybrid model: weight of bits/dim against the cross-entropy in bits, lambda*D in E[lambda log p(x) + "
        "log p(y|x)] (1 = Residual Flows' lambda 1/D, 0 = classifier only)", lo=0.0, hi=1e9)] = 1.0,
) -> Flow:
    """A multi-scale contractive residual flow.

    Each scale is ``blocks`` x ``[ActNorm, ResidualBlock(g)]`` where ``g`` is the ``branch``
    (``"iresnet"``, ``"residual_flow"`` or ``"idensenet"``) with spectral-norm coefficient
    ``coeff``, each divided by a certified bound of its norm for the weights in use
    (:class:`attnflow.nets.lipschitz_layers.SpectralNormConv2d`); scales are separated by squeeze
    (and factor-out when ``factor_out``), ending in a flat latent. ``attention`` in
    {none, l2, lipnorm, dot} puts ACF's attention inside the branches of the scales listed in
    ``attention_scales`` (empty = every scale), mixed in by the contractive
    :class:`attnflow.nets.residual_branches.AttentionMix`; ``heads`` is at most the branch's
    hidden width (heads that do not divide it pad the attention's inner width, see
    :mod:`attnflow.nets.lipschitz_attention`).

    Log-det: ``estimator`` (``russian_roulette`` with ``n_exact`` exact terms and geometric
    ``geom_p``, or ``power_series`` with ``n_terms``; ``exact`` for tiny inputs) with the
    Neumann-series gradient in training, and roulette with ``eval_n_exact`` exact terms in
    evaluation.

    Hybrid model: ``classes`` > 0 returns a :class:`attnflow.models.hybrid.HybridFlow`, the same
    flow with Residual Flows' classifier head (width ``classifier_hidden``) on its latent, trained on
    the hybrid objective with weight ``likelihood_weight`` (:mod:`attnflow.models.hybrid`).
    """
    if not classes and likelihood_weight != 1.0:
        raise ValueError("model.likelihood_weight (train.likelihood_weight in version 0.1) weighs a hybrid "
                         "model's likelihood; set model.classes > 0 or leave it at 1")
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
    size_kwargs = ({"hidden": hidden, "kernel_sizes": tuple(kernels)} if branch != "idensenet"
                   else {"growth": growth, "depth": depth})

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
            layers.append(ResidualBlock(g, train_logdet, eval_logdet, atol=inverse_atol, rtol=0.0,
                                        max_iter=inverse_max_iter))
        return layers

    body = multiscale_transform(shape, scales, scale_blocks, learned_prior, squeeze_first, factor_out)
    transform = Chain([build_preprocess(preprocess, alpha), body])
    if not classes:
        return Flow(transform, shape)
    pieces = latent_pieces(shape, scales, squeeze_first, factor_out)
    return HybridFlow(transform, shape, pieces, classes, classifier_hidden, likelihood_weight)
