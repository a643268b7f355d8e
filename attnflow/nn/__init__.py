"""Building blocks: bijections (Glow, invertible attention, residual blocks, multi-scale) and the
Lipschitz-constrained layers and attention modules that go inside residual branches."""
from .attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from .glow import ActNorm, AffineCoupling, GlowStep, InvertibleConv1x1
from .invattn import IMap, ISDP, build_invertible_attention
from .multiscale import FactorOut, Flatten, Squeeze, checkerboard_mask, multiscale_transform
from .preprocess import Logit, Shift, build_preprocess

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "DotProductSelfAttention",
    "FactorOut",
    "Flatten",
    "GlowStep",
    "IMap",
    "ISDP",
    "InvertibleConv1x1",
    "L2MultiheadSelfAttention",
    "LipNormSelfAttention",
    "Logit",
    "Shift",
    "Squeeze",
    "build_invertible_attention",
    "build_preprocess",
    "checkerboard_mask",
    "multiscale_transform",
]
