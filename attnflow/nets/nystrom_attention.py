"""Nyström self-attention (Xiong et al. 2021, "Nyströmformer") on image feature maps, the global
branch of DenseFlow's coupling network (Grcić et al. 2021).

Exact softmax attention costs ``O(N^2)`` for ``N = H*W`` tokens. Nyström attention picks ``m``
landmarks ``Q~, K~`` (means of ``m`` consecutive segments of the queries and keys) and uses

    softmax(Q K~^T / sqrt(d)) · pinv(softmax(Q~ K~^T / sqrt(d))) · softmax(Q~ K^T / sqrt(d)) · V,

which costs ``O(N m)``. With ``m >= N`` every segment holds a single token, so ``Q~ = Q``,
``K~ = K`` and with ``A = softmax(Q K^T / sqrt(d))`` the product is ``A pinv(A) A V = A V``: exact
softmax attention (the identity ``A A^+ A = A`` holds for any matrix).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..precision import full_precision
from .softmax_attention import softmax_attention

__all__ = ["NystromAttention", "iterative_pinv", "segment_means_matrix"]

PINV_METHODS = ("iterative", "exact")


def segment_means_matrix(tokens: int, landmarks: int, like: Tensor) -> Tensor:
    """``[m, N]`` averaging matrix: row ``j`` averages the tokens ``t`` with
    ``floor(t * m / N) == j`` (``m = min(landmarks, N)`` contiguous, near-equal segments; the
    Nyströmformer's segment means, which needs ``m | N``, generalised to any ``N``)."""
    m = min(landmarks, tokens)
    segment = torch.arange(tokens, device=like.device) * m // tokens
    onehot = (segment.view(1, -1) == torch.arange(m, device=like.device).view(-1, 1)).to(like.dtype)
    return onehot / onehot.sum(1, keepdim=True)


def iterative_pinv(a: Tensor, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse of the square matrices ``a [..., m, m]`` by the Nyströmformer
    iteration (Xiong et al. 2021, Eq. 16; Razavi et al. 2014):

        Z_0 = a^T / (||a||_1 ||a||_inf),
        Z_{j+1} = Z_j (13 I - a Z_j (15 I - a Z_j (7 I - a Z_j))) / 4,

    which converges to ``pinv(a)`` (third order). ``||a||_1`` is the largest column sum and
    ``||a||_inf`` the largest row sum of ``|a|``, taken per matrix."""
    shape, m = a.shape, a.shape[-1]
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    eye7, eye13, eye15 = 7 * eye, 13 * eye, 15 * eye
    col = a.abs().sum(-2).amax(-1)
    row = a.abs().sum(-1).amax(-1)
    z = a.transpose(-1, -2) / (col * row)[..., None, None]
    # as a batch of matrices, each bracket one fused product `c I - az @ t`
    a, z = a.reshape(-1, m, m), z.reshape(-1, m, m)
    for _ in range(iterations):
        az = torch.bmm(a, z)
        inner = torch.baddbmm(eye15, az, eye7 - az, alpha=-1.0)
        outer = torch.baddbmm(eye13, az, inner, alpha=-1.0)
        z = torch.baddbmm(outer, z, outer, beta=0.0, alpha=0.25)
    return z.view(shape)


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention on ``[B, C, H, W]`` (``N = H*W`` tokens); returns
    ``[B, C, H, W]``.

    Queries, keys and values are 1x1-convolution projections ``C -> C' = heads * d`` split into
    ``heads`` heads of ``d = ceil(C / heads)`` channels (``C' = C`` when ``heads`` divides ``C``;
    otherwise the projection width is padded up to the next multiple of ``heads``, as in
    :mod:`attnflow.nets.lipschitz_attention`); each head computes the Nyström approximation in the module
    docstring with ``landmarks`` segment-mean landmarks; heads are concatenated and mixed by an
    output 1x1 convolution ``C' -> C``. ``landmarks >= N`` gives exact softmax attention.
    ``1 <= heads <= C``.

    ``pinv``: ``"iterative"`` (the Nyströmformer's iteration, ``pinv_iterations`` steps; cheap,
    approximate) or ``"exact"`` (``torch.linalg.pinv`` by SVD; exact, slower).

    The two ``N x m`` / ``m x N`` softmax products, ``softmax(Q~ K^T) V`` and
    ``softmax(Q K~^T) W`` with ``W = pinv(...) softmax(Q~ K^T) V``, run in PyTorch's fused attention
    kernel (:func:`~attnflow.nets.softmax_attention.softmax_attention`; ``fused=False``: explicit
    matrices, the same function).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        landmarks: int = 8,
        pinv: str = "iterative",
        pinv_iterations: int = 6,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1 or not 1 <= heads <= channels:
            raise ValueError(
                f"attention heads must be in 1..channels: got {channels} channels and {heads} heads; "
                "use at most as many heads as channels"
            )
        if landmarks < 1:
            raise ValueError(f"Nyström attention needs landmarks >= 1, got {landmarks}")
        if pinv not in PINV_METHODS:
            raise ValueError(f"unknown pinv method {pinv!r}; valid: {', '.join(PINV_METHODS)}")
        if pinv_iterations < 1:
            raise ValueError(f"pinv_iterations must be >= 1, got {pinv_iterations}")
        self.channels = channels
        self.heads = heads
        self.landmarks = landmarks
        self.pinv = pinv
        self.pinv_iterations = pinv_iterations
        self.fused = fused
        self.head_dim = -(-channels // heads)
        self.qkv = nn.Conv2d(channels, 3 * heads * self.head_dim, 1)
        self.out = nn.Conv2d(heads * self.head_dim, channels, 1)

    def _pinv(self, a: Tensor) -> Tensor:
        if self.pinv == "exact":
            return torch.linalg.pinv(a)
        return iterative_pinv(a, self.pinv_iterations)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected [B, {self.channels}, H, W] feature maps, got {list(x.shape)}")
        b, _, h, w = x.shape
        n, d = h * w, self.head_dim
        scale = d**-0.5
        q, k, v = self.qkv(x).view(b, 3, self.heads, d, n).unbind(1)  # three [B, heads, d, N]
        means = segment_means_matrix(n, self.landmarks, q)  # [m, N]
        # landmarks [B, heads, m, d]: one product [B*heads*d, N] x [N, m] each
        q_land, k_land = ((t @ means.T).transpose(-1, -2).contiguous() for t in (q, k))
        # tokens [B, heads, N, d], contiguous in d as the fused kernel needs
        q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))
        kernel_2 = torch.softmax((q_land * scale) @ k_land.transpose(-1, -2), dim=-1)  # [B, heads, m, m]
        with full_precision(kernel_2):  # the pseudo-inverse iteration in at least float32 (bf16 training)
            pinv = self._pinv(kernel_2.to(torch.promote_types(kernel_2.dtype, torch.float32)))
        # kernel_3 V = softmax(Q~ K^T / sqrt(d)) V and kernel_1 W = softmax(Q K~^T / sqrt(d)) W
        landmark_values = pinv @ softmax_attention(q_land, k, v, scale=scale, fused=self.fused)  # [B, heads, m, d]
        out = softmax_attention(q, k_land, landmark_values.to(q.dtype), scale=scale, fused=self.fused)
        return self.out(out.transpose(-1, -2).reshape(b, self.heads * d, h, w))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, landmarks={self.landmarks}, pinv={self.pinv!r}"
