"""Flow++'s coupling network (Ho et al., "Flow++: Improving Flow-Based Generative Models with
Variational Dequantization and Architecture Design", ICML 2019, Sec. 3.3): gated convolutions and
gated multi-head self-attention, the network inside the mixture-of-logistics coupling
(:class:`~attnflow.flows.mixture_coupling.MixtureCoupling`) of Flow++, mARFlow and AttnFlow's
image models."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .glow_coupling_net import zero_conv
from .softmax_attention import SelfAttention2d

__all__ = ["GatedAttentionNet"]


class _GatedResidual(nn.Module):
    """``h + a * sigmoid(g)`` with ``(a, g) = branch(h)`` (Flow++'s gated residual connection)."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, h: Tensor) -> Tensor:
        a, g = self.branch(h).chunk(2, dim=1)
        return h + a * torch.sigmoid(g)


class GatedAttentionNet(nn.Module):
    """Flow++ coupling network (Ho et al. 2019, Sec. 3.3): a 3x3 input convolution, ``blocks``
    blocks of

        h <- norm(h + gate(conv3x3(elu(conv3x3(elu(h))))))          (gated convolution)
        h <- norm(h + gate(W [MHSA(h)]))                              (gated self-attention)

    with ``gate(a, g) = a * sigmoid(g)``, then a zero-initialised 3x3 output convolution. The
    attention is plain multi-head scaled dot-product attention over the ``H*W`` positions
    (:class:`~attnflow.nets.softmax_attention.SelfAttention2d`, PyTorch's fused kernel); it needs no
    invertibility since it only parametrises the coupling. ``heads=0`` drops the attention sub-blocks (the
    gated-convolution network alone: the attention-free baseline). Differences from Flow++: group
    normalisation over each sample instead of per-position layer norm, no positional encoding
    and no dropout.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 1, heads: int = 1) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        if heads < 0:
            raise ValueError(f"coupling heads must be >= 0 (0 = no self-attention), got {heads}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
        for _ in range(blocks):
            conv = nn.Sequential(
                nn.ELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU(), nn.Conv2d(hidden, 2 * hidden, 3, padding=1)
            )
            layers += [_GatedResidual(conv), nn.GroupNorm(1, hidden)]
            if heads:
                attn = nn.Sequential(SelfAttention2d(hidden, heads), nn.Conv2d(hidden, 2 * hidden, 1))
                layers += [_GatedResidual(attn), nn.GroupNorm(1, hidden)]
        last = zero_conv(nn.Conv2d(hidden, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers, nn.ELU(), last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
