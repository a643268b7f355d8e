"""Softmax attention for networks that are only run forward (coupling networks, attention
weights of an invertible layer): PyTorch's fused ``scaled_dot_product_attention`` kernel where it
runs, the explicit ``softmax(Q K^T / sqrt(d)) V`` otherwise.

The fused kernel (on the CPU ``_scaled_dot_product_flash_attention_for_cpu``, a flash-attention
loop over blocks of keys) computes the same function without materialising the ``N x N`` scores,
so its cost in memory traffic is linear in ``N``. The contractive attentions of
:mod:`attnflow.nets.lipschitz_attention` are not built on it: their log-det estimators need the
hand-written Jacobian products of the explicit matrices.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SelfAttention2d", "softmax_attention"]


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, fused: bool = True) -> Tensor:
    """``softmax(q k^T * scale) v`` over the last two dimensions of ``[..., N, d]`` queries and
    keys and ``[..., N, d_v]`` values; ``scale`` defaults to ``1 / sqrt(d)``. ``fused`` uses
    ``torch.nn.functional.scaled_dot_product_attention``, falling back to the explicit product
    when it has no kernel for the inputs' dtype or device (a ``RuntimeError``)."""
    if fused:
        try:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        except RuntimeError:
            pass
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1) @ v


class SelfAttention2d(nn.Module):
    r"""Multi-head scaled dot-product self-attention (Vaswani et al. 2017) over the ``N = H*W``
    positions of ``x [B, C, H, W]``, each a ``C``-vector ``x_n``::

        out_h = softmax( X W^{Q,h} (X W^{K,h})^T / sqrt(d) ) X W^{V,h},   F = [out_1 .. out_H] W^O

    returned as ``[B, C, H, W]``. Heads split the columns of the ``C x C'`` projections,
    ``d = ceil(C / heads)``, ``C' = heads * d`` (padded up when ``heads`` does not divide ``C``),
    no biases, orthogonal initialisation: the parameters and their initial values are those of
    :class:`~attnflow.nets.lipschitz_attention.DotProductSelfAttention`, which computes the same
    function with explicit matrices. ``fused=False`` computes it explicitly here too
    (:func:`softmax_attention`). ``1 <= heads <= C``.
    """

    def __init__(self, channels: int, heads: int = 1, fused: bool = True) -> None:
        super().__init__()
        if min(channels, heads) < 1:
            raise ValueError(f"channels and heads must be >= 1, got channels={channels}, heads={heads}")
        if heads > channels:  # the wording of DotProductSelfAttention, which this replaces
            raise ValueError(
                f"heads={heads} exceeds channels={channels}: use at most {channels} heads or more channels"
            )
        self.channels, self.heads, self.fused = channels, heads, fused
        self.head_dim = -(-channels // heads)
        inner = heads * self.head_dim
        orthogonal = lambda rows, cols: nn.Parameter(nn.init.orthogonal_(torch.empty(rows, cols)))  # noqa: E731
        # created in DotProductSelfAttention's order, so a seed gives the same initial weights
        self.out_weight = orthogonal(inner, channels)
        self.query_weight = orthogonal(channels, inner)
        self.key_weight = orthogonal(channels, inner)
        self.value_weight = orthogonal(channels, inner)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected [B, {self.channels}, H, W] feature maps, got {list(x.shape)}")
        b, c, h, w = x.shape
        weights = torch.cat([self.query_weight, self.key_weight, self.value_weight], dim=1)
        qkv = x.flatten(2).transpose(1, 2) @ weights  # [B, N, 3C']
        q, k, v = qkv.view(b, h * w, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = softmax_attention(q, k, v, fused=self.fused)  # [B, heads, N, d]
        out = out.transpose(1, 2).reshape(b, h * w, -1) @ self.out_weight  # [B, N, C]
        return out.transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, fused={self.fused}"
