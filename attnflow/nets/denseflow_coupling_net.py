"""DenseFlow's coupling network (Grcić, Grubišić & Šegvić 2021, "Densely connected normalizing
flows", Sec. 3.3), the network of the intra-unit couplings
(:func:`attnflow.flows.denseflow_unit.invertible_unit`).

*Dense block* (Huang et al. 2017): ``depth`` layers, layer ``l`` sees the concatenation of the
block input and all earlier layer outputs and adds ``growth`` channels,

    h_l = [h_{l-1}, ReLU(conv3x3(ReLU(conv1x1(h_{l-1}))))],   h_0 = input,

followed by a gated 1x1 projection ``a + b * sigmoid(c)`` of ``h_depth`` to the output width.

*Coupling network*: ``h = conv1x1(x)``; a local branch (dense block) and a global branch
(:class:`~attnflow.nets.nystrom_attention.NystromAttention`) run in parallel on ``h``; their outputs are
concatenated and fused, ``f = conv1x1(ReLU([dense(h), nystrom(h)]))``, and a zero-initialised
``conv1x1(f)`` gives the coupling's scale and shift, so every coupling starts as the identity.
Without attention (``heads=0``, the attention-free baseline) the global branch is absent and
``f = conv1x1(ReLU(dense(h)))``.

Deviation from the reference implementation: the fusion has no BatchNorm (``BN-ReLU-conv`` in
the paper's code). A batch-statistics layer makes a sample's transform depend on the rest of the
batch, so per-sample inverses and log-determinants would no longer be exact.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .glow_coupling_net import CouplingNetFactory, zero_conv
from .nystrom_attention import NystromAttention

__all__ = ["GatedConv1x1", "DenseBlock", "DenseFlowCouplingNet", "dense_net_factory"]


class GatedConv1x1(nn.Module):
    """``a + b * sigmoid(c)`` with ``[a, b, c] = conv1x1(x)`` (the dense block's output gate)."""

    def __init__(self, in_channels: int, out_channels: int, zero_init: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3 * out_channels, 1)
        if zero_init:
            zero_conv(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        a, b, c = self.conv(x).chunk(3, dim=1)
        return a + b * torch.sigmoid(c)


class DenseBlock(nn.Module):
    """Densely connected convolutions (equation in the module docstring): ``[B, in, H, W] ->
    [B, out, H, W]``. With ``zero_init`` the output gate starts at zero."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, growth: int, zero_init: bool = False) -> None:
        super().__init__()
        if min(in_channels, out_channels, depth, growth) < 1:
            raise ValueError(
                f"dense block sizes must be >= 1, got in_channels={in_channels}, out_channels={out_channels}, "
                f"depth={depth}, growth={growth}"
            )
        self.layers = nn.ModuleList()
        width = in_channels
        for _ in range(depth):
            self.layers.append(
                nn.Sequential(
                    nn.Conv2d(width, width, 1),
                    nn.ReLU(),
                    nn.Conv2d(width, growth, 3, padding=1),
                    nn.ReLU(),
                )
            )
            width += growth
        self.gate = GatedConv1x1(width, out_channels, zero_init)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return self.gate(x)


class DenseFlowCouplingNet(nn.Module):
    """DenseFlow's coupling network: dense block (local correlations) fused with Nyström
    self-attention (global context); see the module docstring. Paper sizes: ``hidden=48``,
    ``depth=7``, ``growth=64``, one head, 4 landmarks (reference code). ``heads=0``: no
    attention branch."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 48,
        depth: int = 7,
        growth: int = 64,
        heads: int = 1,
        landmarks: int = 4,
    ) -> None:
        super().__init__()
        if heads < 0:
            raise ValueError(f"attention heads must be >= 0 (0 = no Nyström attention), got {heads}")
        self.inp = nn.Conv2d(in_channels, hidden, 1)
        self.local = DenseBlock(hidden, hidden, depth, growth)
        self.attention = NystromAttention(hidden, heads, landmarks) if heads else None
        branches = 2 if heads else 1
        self.fuse = nn.Sequential(nn.ReLU(), nn.Conv2d(branches * hidden, hidden, 1))
        self.out = zero_conv(nn.Conv2d(hidden, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        features = self.local(h) if self.attention is None else torch.cat([self.local(h), self.attention(h)], dim=1)
        return self.out(self.fuse(features))


def dense_net_factory(
    hidden: int = 48,
    depth: int = 7,
    growth: int = 64,
    heads: int = 1,
    landmarks: int = 4,
) -> CouplingNetFactory:
    """``net_factory(in_channels, out_channels)`` for :class:`~attnflow.flows.glow.AffineCoupling`
    that builds a :class:`DenseFlowCouplingNet` of the given sizes."""
    return lambda i, o: DenseFlowCouplingNet(i, o, hidden, depth, growth, heads, landmarks)
