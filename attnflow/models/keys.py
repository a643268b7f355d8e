"""``[model]`` keys that several families share, as reusable annotated types: a builder
parameter ``hidden: Hidden = 64`` is the key ``model.hidden`` with this type, range and help, and
the builder's default (see :mod:`attnflow.models.registry`). Choices come from the registries of
the code that uses them, never from a copy. A key that means something else in one family (the
heads of DenseFlow's Nyström attention, Flow++'s grey ``levels``) gets its own ``Annotated`` type
in that family's file.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from ..flows.invertible_attention import INVERTIBLE_ATTENTION_KINDS, ISDP_INITS
from ..flows.masks import COUPLING_MASKS
from ..flows.preprocess import PREPROCESS_KINDS
from ..schema import Key

__all__ = [
    "COUPLING_MASKS", "Shape", "Preprocess", "Alpha", "Hidden", "Heads", "Scales", "LearnedPrior", "Steps",
    "Mask", "Attention", "Positions", "Patches", "IsdpInit", "GatedBlocks", "Components", "CouplingHeads",
]

#: masks of the affine and mixture couplings (each alternates with its ``-inv`` complement)

# -- every family ---------------------------------------------------------------------------------
Shape = Annotated[Sequence[int], Key("channels, height and width of the images", length=3, lo=1, hi=4096)]
Preprocess = Annotated[str, Key("pre-processing bijection", choices=PREPROCESS_KINDS)]
Alpha = Annotated[float, Key("logit pre-processing margin", lo=0.0, hi=0.5, hi_open=True)]
Hidden = Annotated[int, Key("width of the coupling networks or residual branches", lo=1, hi=4096)]
Heads = Annotated[int, Key("attention heads", lo=1, hi=256)]
Scales = Annotated[int, Key("number of scales", lo=1, hi=10)]
LearnedPrior = Annotated[bool, Key("learned prior at each factor-out")]

# -- coupling flows (glow, flowpp, marflow, nsf; srflow and fullglow's steps) ------------------
Steps = Annotated[int, Key("flow steps per scale", lo=1, hi=256)]
Mask = Annotated[str, Key("coupling mask", choices=COUPLING_MASKS)]
Attention = Annotated[str, Key("invertible attention layer", choices=INVERTIBLE_ATTENTION_KINDS)]
Positions = Annotated[Sequence[int], Key(
    "attention places in a step: 1 before ActNorm, 2 after it, 3 after the 1x1 conv, 4 after the coupling",
    lo=1, hi=4, unique=True)]
Patches = Annotated[int, Key("iSDP patch grid (a perfect square)", lo=1, hi=4096)]
IsdpInit = Annotated[str, Key(
    "iSDP initialisation: paper = A + cI (AttnFlow's d = 10, c = 1.01); gated = tanh(gamma) A + cI with "
    "gamma = 0, near the identity at the start (not in the paper)", choices=ISDP_INITS)]

# -- Flow++'s gated-attention coupling networks (flowpp, marflow) ------------------------------
GatedBlocks = Annotated[int, Key("gated attention blocks per coupling network", lo=1, hi=64)]
Components = Annotated[int, Key("logistic mixture components", lo=1, hi=64)]
CouplingHeads = Annotated[int, Key("self-attention heads in the coupling networks; 0 = no self-attention",
                                   lo=0, hi=256)]
