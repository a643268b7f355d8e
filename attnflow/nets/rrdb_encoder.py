"""SRFlow's conditioning encoder: it maps the low-resolution image to the list of feature tensors
that the levels of a conditional transform receive (see
:class:`attnflow.flows.conditional.ConditionedTransform`).

* :class:`RRDBEncoder` -- SRFlow's low-resolution encoder (Lugmayr et al. 2020, Sec. 3.3): an
  ESRGAN Residual-in-Residual Dense Block trunk (Wang et al. 2018) on the LR image; the outputs of
  every other block and the trunk's last features are concatenated (SRFlow's ``stackRRDB``,
  blocks 1, 3, 5, 7 of 8) and resized to the spatial size of every flow level.

Full-Glow's encoder, a flow itself, is :class:`attnflow.flows.source_flow.SourceFlowEncoder`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResidualDenseBlock", "RRDB", "RRDBEncoder", "resize_features"]


def resize_features(features: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[B, F, h, w]`` features to ``size``: bilinear up-sampling, area averaging down
    (SRFlow resizes its RRDB features to every level the same way), unchanged at equal size."""
    h, w = features.shape[-2:]
    if (h, w) == tuple(size):
        return features
    if size[0] >= h and size[1] >= w:
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(features, size)


class ResidualDenseBlock(nn.Module):
    """ESRGAN's residual dense block: five 3x3 convolutions, each seeing the block input and all
    earlier outputs (growth ``growth`` channels), LeakyReLU(0.2); ``out = 0.2 * conv5 + x``."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(features + k * growth, growth if k < 4 else features, 3, padding=1) for k in range(5)]
        for conv in convs:  # ESRGAN's scaled initialisation keeps the residual path small
            nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            assert conv.bias is not None  # made with a bias
            nn.init.zeros_(conv.bias)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return 0.2 * self.convs[-1](torch.cat(feats, 1)) + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, ``out = 0.2 * dense(x) + x``."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(features, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return 0.2 * self.blocks(x) + x


class RRDBEncoder(nn.Module):
    """SRFlow's conditioning network on the low-resolution image.

    ``fea = conv(lr)``, ``blocks`` RRDBs, ``last = fea + conv(trunk(fea))``; the features are the
    concatenation of the outputs of blocks 1, 3, 5, ... (0-based) and ``last``:
    ``out_channels = (blocks // 2 + 1) * features`` (320 for SRFlow's 8 blocks of 64). They are
    resized with :func:`resize_features` to each size of ``level_sizes`` and returned as a list.

    Unlike SRFlow, which pre-trains the RRDB with an L1 loss and freezes it for the first half of
    training, the encoder here is trained jointly with the flow from the start.
    """

    def __init__(
        self,
        in_channels: int,
        level_sizes: Sequence[tuple[int, int]],
        features: int = 64,
        blocks: int = 8,
        growth: int = 32,
    ) -> None:
        super().__init__()
        if features < 1 or blocks < 0 or growth < 1:
            raise ValueError(f"RRDB encoder needs features >= 1, blocks >= 0, growth >= 1; "
                             f"got {features}, {blocks}, {growth}")
        self.level_sizes = [(int(h), int(w)) for h, w in level_sizes]
        self.first = nn.Conv2d(in_channels, features, 3, padding=1)
        self.trunk = nn.ModuleList(RRDB(features, growth) for _ in range(blocks))
        self.trunk_conv = nn.Conv2d(features, features, 3, padding=1)
        self.stacked = tuple(range(1, blocks, 2))
        self.out_channels = (len(self.stacked) + 1) * features

    def forward(self, lr: Tensor) -> list[Tensor]:
        fea = self.first(lr)
        stack = []
        h = fea
        for i, block in enumerate(self.trunk):
            h = block(h)
            if i in self.stacked:
                stack.append(h)
        features = torch.cat([*stack, fea + self.trunk_conv(h)], 1)
        return [resize_features(features, size) for size in self.level_sizes]
