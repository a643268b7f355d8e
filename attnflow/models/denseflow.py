"""DenseFlow (Grcić, Grubišić & Šegvić, NeurIPS 2021): a multi-scale flow whose stages are
densely connected through cross-unit noise augmentation, with DenseNet + Nyström coupling
networks inside each invertible unit (intra-unit coupling).

Architecture (``S = len(units)`` scales)::

    preprocess -> [squeeze -> stage_s -> factor-out half (learned prior)] x (S-1)
               -> squeeze -> stage_S -> flatten

Stage ``s`` (:class:`~attnflow.flows.noise_augmentation.CrossUnitStage`) holds ``units[s]`` invertible units of
``modules[s]`` Glow-like modules (ActNorm, 1x1 convolution, affine coupling with
:class:`~attnflow.nets.denseflow_coupling_net.DenseFlowCouplingNet`), and widens the latent by ``growth`` noise
channels before every unit but the first. The paper's DenseFlow-74-10 has
``units = (6, 4, 1)``, ``modules = (5, 6, 20)`` (6*5 + 4*6 + 1*20 = 74 Glow-like modules) and
``growth = 10`` noise channels per cross-unit coupling; coupling networks of width 48 with a
7-layer dense block of growth 64 (reference code, README and ``affine_coupling.py``).

``log_prob`` is the one-sample evidence lower bound (``DenseFlowModel.log_prob_is_bound``); use
:mod:`attnflow.evaluate.importance` for the tighter importance-weighted estimate.

Deviations from the paper: uniform instead of variational dequantization (the library's data
pipeline); Glow's sigmoid coupling scale (:class:`~attnflow.flows.glow.AffineCoupling`) instead of
``exp(2 tanh(s/2))``; factor-out with a learned conditional prior where the reference code uses a
standard normal; no BatchNorm in the coupling network (see :mod:`attnflow.nets.denseflow_coupling_net`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from ..core import Bijection, Chain, Flow
from ..flows.denseflow_unit import invertible_unit
from ..flows.multiscale import FactorOut, Flatten, Squeeze
from ..flows.noise_augmentation import CrossUnitStage
from ..flows.preprocess import build_preprocess
from ..nets.denseflow_coupling_net import dense_net_factory
from ..schema import Key
from .keys import Alpha, Hidden, LearnedPrior, Preprocess, Shape
from .registry import register_family

__all__ = ["DenseFlowModel", "denseflow"]


class DenseFlowModel(Flow):
    """A :class:`~attnflow.core.Flow` with noise augmentation: ``latent_dim`` counts the noise
    dimensions, ``encode`` is stochastic, ``decode`` drops the noise, and ``log_prob`` is a
    one-sample lower bound of ``log p(x)`` (bits/dim are reported as an upper bound)."""

    log_prob_is_bound = True


@register_family("denseflow", tiny={"units": (1, 1), "modules": (1, 1)})
def denseflow(
    shape: Shape = (1, 8, 8),
    units: Annotated[Sequence[int], Key("invertible units per scale", lo=1, hi=64, min_length=1)] = (2, 2),
    modules: Annotated[Sequence[int], Key("Glow-like modules per unit, per scale", lo=1, hi=256,
                                          min_length=1)] = (2, 2),
    growth: Annotated[int, Key("noise channels per cross-unit coupling", lo=0, hi=4096)] = 4,
    hidden: Hidden = 16,
    depth: Annotated[int, Key("dense-block depth of the coupling networks", lo=1, hi=64)] = 2,
    dense_growth: Annotated[int, Key("dense-block growth of the coupling networks", lo=1, hi=4096)] = 8,
    heads: Annotated[int, Key("Nyström attention heads in the coupling networks; 0 = no attention", lo=0,
                              hi=256)] = 1,
    landmarks: Annotated[int, Key("Nyström attention landmarks", lo=1, hi=4096)] = 4,
    noise_depth: Annotated[int, Key("dense-block depth of the noise network", lo=1, hi=64)] = 1,
    noise_growth: Annotated[int, Key("dense-block growth of the noise network", lo=1, hi=4096)] = 8,
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    learned_prior: LearnedPrior = True,
) -> DenseFlowModel:
    """Build a DenseFlow for images of ``shape = (C, H, W)``.

    Args:
        units: invertible units per scale (the number of scales is ``len(units)``).
        modules: Glow-like modules per invertible unit, per scale (same length as ``units``).
        growth: noise channels added by each cross-unit coupling (the "10" of DenseFlow-74-10).
        hidden, depth, dense_growth: coupling network width, dense-block depth and growth rate.
        heads, landmarks: Nyström self-attention heads (at most ``hidden``; 0 = coupling
            networks without attention, the attention-free baseline) and landmarks.
        noise_depth, noise_growth: the dense block computing the noise ``(mu, sigma)``.
        preprocess, alpha: ``"shift"`` or ``"logit"`` (with ``alpha``) pre-processing.
        learned_prior: learned conditional prior at each factor-out.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {list(shape)}")
    units, modules = [int(u) for u in units], [int(m) for m in modules]
    if not units or len(units) != len(modules):
        raise ValueError(
            f"units and modules must be non-empty lists of the same length (one entry per scale), "
            f"got units={units} and modules={modules}"
        )
    if min(units) < 1 or min(modules) < 1:
        raise ValueError(f"every scale needs >= 1 unit of >= 1 module, got units={units}, modules={modules}")
    if any(u > 1 for u in units) and growth < 1:
        raise ValueError(f"growth must be >= 1 when a scale has several units, got {growth}")
    c, h, w = shape
    factor = 2 ** len(units)
    if h % factor or w % factor:
        raise ValueError(
            f"{len(units)} scales squeeze the image {len(units)} times, so H and W must be multiples of "
            f"{factor}; got {h}x{w}: use fewer scales or pad the images"
        )
    if not 0 <= heads <= hidden:
        raise ValueError(f"heads={heads} must be in 0..hidden={hidden} (0 = no Nyström attention)")
    net_factory = dense_net_factory(hidden, depth, dense_growth, heads, landmarks)

    def scale(chw: tuple[int, int, int], s: int) -> tuple[Bijection, int]:
        """The transform of scale ``s`` onwards and its flat latent dimension."""
        c, h, w = 4 * chw[0], chw[1] // 2, chw[2] // 2
        stage = CrossUnitStage(
            c, units[s], growth, lambda ch: invertible_unit(ch, modules[s], net_factory), noise_depth, noise_growth
        )
        out = stage.out_channels
        if s == len(units) - 1:
            return Chain([Squeeze(), stage, Flatten((out, h, w))]), out * h * w
        keep = out // 2
        inner, inner_dim = scale((keep, h, w), s + 1)
        factor_out = FactorOut(inner, (out, h, w), keep, learned_prior)
        return Chain([Squeeze(), stage, factor_out]), (out - keep) * h * w + inner_dim

    body, latent_dim = scale(shape, 0)
    transform = Chain([build_preprocess(preprocess, alpha), body])
    return DenseFlowModel(transform, shape, latent_dim=latent_dim)
