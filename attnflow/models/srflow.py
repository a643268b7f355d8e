"""SRFlow (Lugmayr et al., ECCV 2020) and AttnFlow's cAttnFlow (Sukthanker et al., Sec. 5):
a conditional flow of the high-resolution image given the low-resolution one,
``log p(x_HR | x_LR)`` exact.

Architecture: ``preprocess -> [squeeze -> transition steps -> K conditional steps
(ActNorm, 1x1 convolution, affine injector, conditional affine coupling) -> factor-out] x L``,
every level conditioned on the RRDB encoder's features of the LR image resized to that level
(:class:`~attnflow.nets.rrdb_encoder.RRDBEncoder`). cAttnFlow inserts iMap or iSDP "after the
existing flow layers in each level" (position 0 here); positions 1-5 put one in every step
instead (1 before ActNorm, 2 after ActNorm, 3 after the 1x1 convolution, 4 after the injector,
5 after the coupling).

Differences from SRFlow's code, all for a smaller, self-contained model: the RRDB is trained
jointly from the start (SRFlow pre-trains and first freezes it); a factor-out follows every level
but the last (SRFlow skips it after the last two); the factored-out prior is learned from the kept
half (as SRFlow's, unconditioned).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

from ..core import Bijection, Chain, Flow
from ..flows.conditional import ConditionalAffineInjector, ConditionedTransform, PickCondition
from ..flows.glow import ActNorm, GlowStep, InvertibleConv1x1
from ..flows.invertible_attention import ISDP_DEFAULT_INIT, invertible_attention_factory
from ..flows.multiscale import multiscale_transform
from ..flows.preprocess import build_preprocess
from ..nets.rrdb_encoder import RRDBEncoder
from ..schema import Key
from .keys import Alpha, Attention, Heads, Hidden, IsdpInit, LearnedPrior, Patches, Preprocess, Shape, Steps
from .registry import register_family

__all__ = ["srflow", "conditional_level", "level_sizes", "CONDITIONAL_POSITIONS"]

CONDITIONAL_POSITIONS = (0, 1, 2, 3, 4, 5)  # 0: once per level, after its steps (cAttnFlow)

# keys of the conditional families (srflow, fullglow)
Levels = Annotated[int, Key("flow levels (a squeeze each)", lo=1, hi=10)]
ConditionalPositions = Annotated[Sequence[int], Key(
    "attention places: 0 once after each level's steps (cAttnFlow), in every step 1 before ActNorm, "
    "2 after it, 3 after the 1x1 conv, 4 after the injector, 5 after the coupling",
    lo=min(CONDITIONAL_POSITIONS), hi=max(CONDITIONAL_POSITIONS), unique=True)]


def level_sizes(shape: Sequence[int], levels: int) -> list[tuple[int, int]]:
    """Spatial size of every level of a multi-scale flow on ``shape`` (one squeeze per level);
    a clear error when ``H`` or ``W`` is not divisible by ``2**levels``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    _, h, w = shape
    if h % (1 << levels) or w % (1 << levels):
        raise ValueError(
            f"{levels} levels halve the size {levels} times: H and W must be divisible by {1 << levels}, "
            f"got {h}x{w}; use fewer levels or pad the images (data.pad)"
        )
    return [(h >> (k + 1), w >> (k + 1)) for k in range(levels)]


def conditional_level(
    channels: int,
    size: tuple[int, int],
    context_channels: Sequence[int],
    condition: int | Sequence[int],
    hidden: int,
    attention: Callable[[int, int, int], Bijection],
    positions: Sequence[int],
    transition_steps: int = 0,
) -> list[Bijection]:
    """The layers of one conditional level: ``transition_steps`` (ActNorm, 1x1 convolution) pairs
    (SRFlow's ``additionalFlowNoAffine``), then one conditional step per entry of
    ``context_channels`` (ActNorm, 1x1 convolution, affine injector, conditional coupling with
    alternating channel halves, attention at ``positions`` 1-5), then attention once if 0 is in
    ``positions``.

    ``condition`` says which entry of the encoder's feature list the level sees: one index for
    the whole level (SRFlow), or one index per step (Full-Glow)."""
    bad = [p for p in positions if p not in CONDITIONAL_POSITIONS]
    if bad:
        raise ValueError(f"attention positions must be among {CONDITIONAL_POSITIONS} (0 = after the level), got {bad}")
    in_step = [p for p in positions if p != 0]
    attend = lambda ch: attention(ch, *size)  # noqa: E731
    layers: list[Bijection] = [Chain([ActNorm(channels), InvertibleConv1x1(channels)]) for _ in range(transition_steps)]
    for k, ctx in enumerate(context_channels):
        step = GlowStep(
            channels, hidden, "channel" if k % 2 == 0 else "channel-inv", attend, in_step,
            context_channels=ctx, injector=ConditionalAffineInjector(channels, ctx, hidden),
        )
        layers.append(step if isinstance(condition, int) else PickCondition(step, condition[k]))
    if 0 in positions:
        layers.append(attention(channels, *size))
    return [PickCondition(Chain(layers), condition)] if isinstance(condition, int) else layers


@register_family("srflow", tiny={"steps": 1, "hidden": 8, "transition_steps": 1, "encoder_features": 8,
                                 "encoder_blocks": 1, "encoder_growth": 4})
def srflow(
    shape: Shape = (1, 8, 8),
    scale: Annotated[int, Key("super-resolution factor: the input is H/scale x W/scale", lo=2, hi=64)] = 2,
    levels: Levels = 2,
    steps: Steps = 4,
    hidden: Hidden = 64,
    transition_steps: Annotated[int, Key("ActNorm + 1x1 conv steps opening each level (SRFlow)", lo=0,
                                         hi=16)] = 2,
    encoder_features: Annotated[int, Key("width of the RRDB low-resolution encoder", lo=1, hi=4096)] = 64,
    encoder_blocks: Annotated[int, Key("RRDB blocks of the encoder", lo=0, hi=64)] = 8,
    encoder_growth: Annotated[int, Key("dense growth of the encoder's RRDB blocks", lo=1, hi=4096)] = 32,
    preprocess: Preprocess = "logit",
    alpha: Alpha = 0.05,
    learned_prior: LearnedPrior = True,
    attention: Attention = "none",
    positions: ConditionalPositions = (),
    heads: Heads = 1,
    patches: Patches = 4,
    isdp_init: IsdpInit = ISDP_DEFAULT_INIT,
) -> Flow:
    """The SRFlow / cAttnFlow model of ``x_HR`` (``shape``) given ``x_LR`` of shape
    ``(C, H / scale, W / scale)``; ``model.sample(n, temperature, context=x_LR)`` gives
    super-resolutions, ``temperature=0`` (``model.decode(zeros)``) the mode-like mean one."""
    c, h, w = (int(v) for v in shape)
    if scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale}")
    if h % scale or w % scale:
        raise ValueError(
            f"scale {scale} does not divide the image size {h}x{w}; choose a scale that divides it "
            f"or pad the images (data.pad)"
        )
    if steps < 1 or transition_steps < 0:
        raise ValueError(f"need steps >= 1 and transition_steps >= 0, got {steps} and {transition_steps}")
    sizes = level_sizes(shape, levels)
    attention_layer = invertible_attention_factory(attention, positions, heads, patches, isdp_init)
    encoder = RRDBEncoder(c, sizes, encoder_features, encoder_blocks, encoder_growth)

    def level(channels: int, index: int) -> list[Bijection]:
        return conditional_level(
            channels, sizes[index], [encoder.out_channels] * steps, index, hidden, attention_layer, positions,
            transition_steps,
        )

    flow = Chain([build_preprocess(preprocess, alpha), multiscale_transform(shape, levels, level, learned_prior)])
    return Flow(ConditionedTransform(encoder, flow), shape, context_shape=(c, h // scale, w // scale))
