"""Bijections (``forward -> (z, logdet)``, ``inverse``; see :class:`attnflow.core.Bijection`) and
their log-det machinery. The networks inside them, which are never inverted, are in
:mod:`attnflow.nets`.

=============================  ============================================  ==================================
file                           holds                                         paper
=============================  ============================================  ==================================
masks.py                       Mask (channel halves or checkerboard, and     RealNVP (Dinh et al. 2017); Glow
                               the inverse: split / merge), COUPLING_MASKS,
                               alternating_masks, checkerboard_mask
coupling.py                    MaskedCoupling: the coupling base (mask +     RealNVP; Glow; Flow++ (Ho et al.
                               conditioner network; subclasses give the      2019)
                               element-wise transform), per_element
glow.py                        ActNorm, InvertibleConv1x1 (LU),              Glow (Kingma & Dhariwal 2018);
                               AffineCoupling (a MaskedCoupling),            RealNVP
                               sigmoid_affine, GlowStep (invertible
                               attention at positions 1-4)
invertible_attention.py        IMap, ISDP, build_invertible_attention        AttnFlow (Sukthanker et al. 2022)
mixture_coupling.py            MixtureCoupling (a MaskedCoupling;            Flow++ (Ho et al. 2019)
                               mixture-of-logistics CDF), MixtureStep
spline_coupling.py             SplineCoupling, rational_quadratic_spline     Neural Spline Flows (Durkan et
                               (monotone, linear tails, closed-form inverse) al. 2019)
variational_dequantization.py  VariationalDequantizer                        Flow++ (Ho et al. 2019)
autoregressive_prior.py        ChannelAutoregressive,                        mARFlow (Bhattacharyya et al.
                               AutoregressiveFactorOut                       2020)
multiscale.py                  Squeeze, FactorOut, Flatten,                  RealNVP (Dinh et al. 2017); Glow
                               multiscale_transform
preprocess.py                  Shift, Logit, build_preprocess                Glow; RealNVP
residual_block.py              ResidualBlock x + g(x) with fixed-point       i-ResNet (Behrmann et al. 2019);
                               inverse, InverseDidNotConverge, full_float32  Residual Flows (Chen et al. 2019)
residual_logdet.py             LogDetConfig, estimate_logdet: exact, power   i-ResNet; Residual Flows
                               series, Russian roulette, Neumann-series
                               gradient
noise_augmentation.py          CrossUnitCoupling, CrossUnitStage             DenseFlow (Grcić et al. 2021)
                               (cross-unit coupling)
denseflow_unit.py              invertible_unit (intra-unit coupling)         DenseFlow (Grcić et al. 2021)
conditional.py                 ConditionalAffineInjector, PickCondition,     SRFlow (Lugmayr et al. 2020);
                               ConditionedTransform (the conditional         AttnFlow's cAttnFlow
                               coupling is AffineCoupling with a context)
source_flow.py                 SourceFlowEncoder (a Glow run forward as an   Full-Glow (Sorkhei et al. 2021)
                               encoder)
=============================  ============================================  ==================================
"""
from .autoregressive_prior import AutoregressiveFactorOut, ChannelAutoregressive
from .conditional import ConditionalAffineInjector, ConditionedTransform, PickCondition
from .coupling import MaskedCoupling
from .denseflow_unit import invertible_unit
from .glow import ActNorm, AffineCoupling, GlowStep, InvertibleConv1x1
from .invertible_attention import ISDP, IMap, build_invertible_attention
from .masks import COUPLING_MASKS, Mask, alternating_masks, checkerboard_mask
from .mixture_coupling import MixtureCoupling, MixtureStep
from .multiscale import FactorOut, Flatten, Squeeze, multiscale_transform
from .noise_augmentation import CrossUnitCoupling, CrossUnitStage
from .preprocess import Logit, Shift, build_preprocess
from .residual_block import InverseDidNotConverge, ResidualBlock
from .residual_logdet import LogDetConfig, estimate_logdet
from .source_flow import SourceFlowEncoder
from .spline_coupling import SplineCoupling, rational_quadratic_spline
from .variational_dequantization import VariationalDequantizer

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "AutoregressiveFactorOut",
    "COUPLING_MASKS",
    "ChannelAutoregressive",
    "ConditionalAffineInjector",
    "ConditionedTransform",
    "CrossUnitCoupling",
    "CrossUnitStage",
    "FactorOut",
    "Flatten",
    "GlowStep",
    "IMap",
    "ISDP",
    "InverseDidNotConverge",
    "InvertibleConv1x1",
    "LogDetConfig",
    "Logit",
    "Mask",
    "MaskedCoupling",
    "MixtureCoupling",
    "MixtureStep",
    "PickCondition",
    "ResidualBlock",
    "Shift",
    "SourceFlowEncoder",
    "SplineCoupling",
    "Squeeze",
    "VariationalDequantizer",
    "alternating_masks",
    "build_invertible_attention",
    "build_preprocess",
    "checkerboard_mask",
    "estimate_logdet",
    "invertible_unit",
    "multiscale_transform",
    "rational_quadratic_spline",
]
