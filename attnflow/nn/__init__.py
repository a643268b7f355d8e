"""Building blocks: bijections (Glow, Flow++ and mARFlow steps, invertible attention, residual
blocks, DenseFlow units, multi-scale) and the Lipschitz-constrained layers and attention modules
that go inside residual branches and coupling networks."""
from .attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from .augment import CrossUnitCoupling, CrossUnitStage
from .autoregressive import AutoregressiveFactorOut, ChannelAutoregressive
from .branches import AttentionMix, build_branch
from .conditional import ConditionalAffineInjector, ConditionedTransform, PickCondition
from .dense import DenseFlowCouplingNet
from .encoders import RRDBEncoder, SourceFlowEncoder
from .glow import ActNorm, AffineCoupling, GlowStep, InvertibleConv1x1
from .invattn import IMap, ISDP, build_invertible_attention
from .lipschitz import CLipSwish, LipSwish, SpectralNormConv2d, SpectralNormLinear
from .logdet import LogDetConfig, estimate_logdet
from .mixture import GatedAttentionNet, MixtureCoupling, MixtureStep, VariationalDequantizer
from .multiscale import FactorOut, Flatten, Squeeze, checkerboard_mask, multiscale_transform
from .nystrom import NystromAttention
from .preprocess import Logit, Shift, build_preprocess
from .residual import InverseDidNotConverge, ResidualBlock

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "AttentionMix",
    "AutoregressiveFactorOut",
    "CLipSwish",
    "ChannelAutoregressive",
    "ConditionalAffineInjector",
    "ConditionedTransform",
    "CrossUnitCoupling",
    "CrossUnitStage",
    "DenseFlowCouplingNet",
    "DotProductSelfAttention",
    "FactorOut",
    "Flatten",
    "GatedAttentionNet",
    "GlowStep",
    "IMap",
    "ISDP",
    "InverseDidNotConverge",
    "InvertibleConv1x1",
    "L2MultiheadSelfAttention",
    "LipNormSelfAttention",
    "LipSwish",
    "LogDetConfig",
    "Logit",
    "MixtureCoupling",
    "MixtureStep",
    "NystromAttention",
    "PickCondition",
    "RRDBEncoder",
    "ResidualBlock",
    "Shift",
    "SourceFlowEncoder",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "Squeeze",
    "VariationalDequantizer",
    "build_branch",
    "build_invertible_attention",
    "build_preprocess",
    "checkerboard_mask",
    "estimate_logdet",
    "multiscale_transform",
]
