"""Invertible attention bijections of AttnFlow (Sukthanker et al., "Generative Flows with
Invertible Attentions", CVPR 2022): iMap and iSDP.

Both layers split their input ``x [B, C, H, W]`` with a fixed binary mask ``M`` into a *masked*
(conditioning) half ``x_m = M * x`` and an *unmasked* half ``x_u = (1 - M) * x``. The attention is
computed from ``x_m`` only and applied to ``x_u``, so the Jacobian is block-triangular::

    dz/dx = [[ d z_m / d x_m        0          ],
             [ d z_u / d x_m    d z_u / d x_u  ]]

and ``log|det dz/dx|`` is the sum of the log-determinants of the two diagonal blocks. The inverse
first recovers ``x_m`` from ``z_m``, recomputes the attention from it, then undoes it on ``z_u``.

The mask follows the paper's "3-D checkerboard": a seeded random permutation of the mask's
positions whose first half (``ceil(n/2)`` positions) is masked. The seed is a persistent buffer
(``mask_seed``), so a saved model restores its masks; by default it is drawn from torch's global
generator, which gives every layer its own mask. Masks depend on the spatial size, which is only
known at the first call, so they are built on demand from the seed and cached per size and device.

Differences from the paper's pseudo-code (its Fig. 15), all checked against the brute-force
Jacobian in ``tests/test_invertible_attention.py``:

* iMap: the reverse pass multiplies by the attention weights instead of dividing; the log-det's
  factor ``C // 2`` assumes exactly half of the channels are unmasked at every position, which a
  random 3-D mask does not give. Here the log-det sums ``log w`` over the unmasked elements
  actually present at each position.
* iSDP: the factor ``p * (p // 2) * c`` in the log-det is replaced by the number of unmasked
  features mixed by each head's matrix; the attention matrix is not multiplied by a second
  checkerboard (that breaks nothing but has no stated purpose); ``d`` and ``c`` are constrained
  (``d > 0``, ``c > 1``) so the layer is invertible for every parameter value.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnflow.core import Bijection, Context

__all__ = [
    "IMap", "ISDP", "INVERTIBLE_ATTENTION_KINDS", "ISDP_DEFAULT_INIT", "ISDP_INITS",
    "build_invertible_attention", "invertible_attention_factory",
]

INVERTIBLE_ATTENTION_KINDS = ("none", "imap", "isdp")
#: iSDP initialisations: the paper's ``A + cI``, or ``tanh(gamma) A + cI`` with ``gamma = 0``
ISDP_INITS = ("paper", "gated")
#: the builders' default (``model.isdp_init``), chosen by measurement: see the glow-fmnist-tiny-isdp preset
ISDP_DEFAULT_INIT = "gated"


def _clear_mask_cache(module: _MaskedSplit, incompatible_keys: object) -> None:
    """Load-state-dict post hook: the seed may have changed, so rebuild masks on demand."""
    module._masks.clear()


class _MaskedSplit(Bijection):
    """Common part of iMap and iSDP: input validation and the seeded binary mask."""

    mask_seed: Tensor  # buffer

    def __init__(self, channels: int, seed: int | None) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels}")
        self.channels = int(channels)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), device="cpu").item())  # CPU: works under a meta/CUDA default device
        self.register_buffer("mask_seed", torch.tensor(int(seed), dtype=torch.int64))
        self._masks: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}
        self.register_load_state_dict_post_hook(_clear_mask_cache)

    def _pattern(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Boolean mask of ``shape`` (True = masked half): a seeded permutation of the
        ``n = prod(shape)`` positions, whose first ``ceil(n / 2)`` entries are masked.

        The permutation is drawn on the CPU with a CPU generator (explicit ``device="cpu"``, so a
        default device such as ``torch.set_default_device("cuda")`` cannot pair a CPU generator
        with a CUDA tensor) and then moved to ``device``: a seed gives the same mask on every
        device."""
        key = (shape, torch.device(device))
        if key not in self._masks:
            n = math.prod(shape)
            cpu = torch.device("cpu")
            generator = torch.Generator(device=cpu).manual_seed(int(self.mask_seed))
            perm = torch.randperm(n, generator=generator, device=cpu)
            flat = torch.zeros(n, dtype=torch.bool, device=cpu)
            flat[perm[: (n + 1) // 2]] = True
            self._masks[key] = flat.view(shape).to(device)
        return self._masks[key]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects a [B, C, H, W] batch, got shape {list(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.channels} channels but the input has "
                f"{x.shape[1]}; build it with channels={x.shape[1]}"
            )


class IMap(_MaskedSplit):
    """Invertible map-based attention (iMap, AttnFlow eq. 4-5): spatial attention weights from
    the masked half scale the unmasked half.

    With the 3-D mask ``M`` over ``(C, H, W)`` positions::

        w[h, w]  = sigmoid(a . (M * x)[:, h, w] + b) + eps          (one weight per position)
        z        = M * (sigmoid(s_c) + eps) * x  +  (1 - M) * w * x
        log|det| = sum_{unmasked (c,h,w)} log w[h, w]  +  sum_{masked (c,h,w)} log(sigmoid(s_c) + eps)

    The paper's 1x1 convolution ``C -> C'``, average pooling over its output channels and
    learnable offset compose to one affine map per position; they are implemented as that map,
    a 1x1 convolution ``C -> 1`` whose bias starts at the paper's offset 8 (so ``w`` starts near
    1). ``s`` (one per channel, as in the paper) also starts at 8, so the layer starts close to
    the identity. Both scales lie in ``(eps, 1 + eps)``: bounded away from 0, so the inverse and
    the log-det are always finite. Works for any spatial size.

    Args:
        channels: number of input channels ``C``.
        eps: floor added to the sigmoids (the paper uses ``1e-5``).
        seed: seed of the mask; ``None`` draws one from torch's global generator.
    """

    def __init__(self, channels: int, eps: float = 1e-5, seed: int | None = None) -> None:
        super().__init__(channels, seed)
        if not eps > 0:
            raise ValueError(f"eps must be > 0 to keep the scales away from 0, got {eps}")
        self.eps = float(eps)
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        assert self.score.bias is not None  # made with a bias
        nn.init.constant_(self.score.bias, 8.0)
        self.s = nn.Parameter(torch.full((channels,), 8.0))

    def mask(self, height: int, width: int) -> Tensor:
        """Boolean ``[C, H, W]`` mask, True on the masked (conditioning) half."""
        return self._pattern((self.channels, height, width), self.s.device)

    def attention(self, x: Tensor) -> Tensor:
        """Weights ``w`` of shape ``[B, 1, H, W]``, computed from the masked half of ``x`` only."""
        self._check_input(x)
        return self._weights(x * self.mask(*x.shape[2:]).to(x.dtype))

    def _weights(self, x_masked: Tensor) -> Tensor:
        return torch.sigmoid(self.score(x_masked)) + self.eps

    def _masked_scale(self) -> Tensor:
        return (torch.sigmoid(self.s) + self.eps).view(-1, 1, 1)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        m = self.mask(*x.shape[2:]).to(x.dtype)
        scale = m * self._masked_scale() + (1 - m) * self._weights(x * m)
        return x * scale, scale.log().flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        self._check_input(z)
        m = self.mask(*z.shape[2:]).to(z.dtype)
        x_masked = m * z / self._masked_scale()
        return x_masked + (1 - m) * z / self._weights(x_masked)


class ISDP(_MaskedSplit):
    """Invertible scaled dot-product attention (iSDP, AttnFlow eq. 6-7) between image patches.

    The image is cut into a ``g x g`` grid of ``N = patches = g^2`` patches of ``ph x pw``
    pixels; token ``n`` is the feature vector of patch ``n`` (``D = C * ph * pw`` features,
    ordered ``(c, i, j)``), which is the paper's "inter-patch interaction". The mask ``M`` is a
    3-D checkerboard over the ``(C, ph, pw)`` features of a patch, the same for every patch, so
    the unmasked half is a ``N x D_u`` matrix ``V_u``. With features split into ``heads``
    contiguous groups and ``Q, K`` the 1x1 convolutions of ``M * x``::

        A_h      = softmax(Q_h K_h^T / d)                       (row-stochastic, N x N)
        z_u^h    = (A_h + c I) V_u^h,        z_m = x_m
        log|det| = sum_h  D_u^h * log det(A_h + c I)

    where ``D_u^h`` is the number of unmasked features of head ``h`` (each column of ``V_u^h``
    is multiplied by the same matrix). The paper's factor ``(P/2)`` is this count when the mask
    splits every head exactly in half.

    Head groups: feature ``f`` (of ``D``) belongs to head ``floor(f * heads / D)``, so head ``h``
    holds features ``ceil(h D / heads) .. ceil((h + 1) D / heads) - 1``: ``D / heads`` each when
    ``heads`` divides ``D``, otherwise groups of ``floor(D / heads)`` and ``ceil(D / heads)``
    features (sizes differing by at most 1; e.g. AttnFlow's 5 or 7 heads on any patch size).
    ``Q_h K_h^T`` sums over the head's own features only, and the log-det formula above holds
    for any group sizes (it counts ``D_u^h`` per head). ``1 <= heads <= D``.

    Invertibility for every parameter value: ``d = exp(log_d) > 0`` and ``c = 1 + 1e-3 +
    softplus(raw) > 1``. A row-stochastic ``A`` has ``||A||_inf = 1``, so every eigenvalue
    ``lambda`` of ``A`` has ``|lambda| <= 1`` and those of ``A + cI`` have modulus ``>= c - 1 > 0``;
    by the Neumann series ``||(A + cI)^{-1}||_inf <= 1 / (c - 1)`` and the infinity-norm condition
    number is at most ``(c + 1) / (c - 1)``. The determinant is even positive: real eigenvalues
    ``lambda + c >= c - 1 > 0``, complex ones come in conjugate pairs. The initial values follow
    the paper's code: ``d = 10`` and ``c = 1.01``.

    ``init="gated"`` (a departure from the paper) multiplies the attention by a learned gate::

        z_u^h = (g A_h + c I) V_u^h,   g = tanh(gamma) in (-1, 1),   gamma = 0 at initialisation,

    so the layer starts as ``z_u = c x_u`` (``c = 1.01``): the identity up to that scale, where the
    paper's initialisation starts near ``A = 11^T / N`` and adds every patch's mean over the
    ``N`` patches to each patch. It stays invertible for every parameter value by the same
    argument: every eigenvalue ``c + g lambda`` of ``g A + c I`` has modulus
    ``>= c - |g| > c - 1 >= 1e-3`` (``|lambda| <= 1``, ``|g| < 1 < c``), real ones are positive, so
    the determinant is positive and ``log|det|`` above is exact with ``g A_h + c I`` in place of
    ``A_h + c I``; ``||(g A + c I)^{-1}||_inf <= 1 / (c - |g|)``.

    Args:
        channels: number of input channels ``C``.
        heads: attention heads, ``1 <= heads <= D = C * ph * pw`` (uneven groups when
            ``heads`` does not divide ``D``).
        patches: number of patches ``N``, a perfect square ``g^2``; ``g`` must divide ``H`` and
            ``W``. ``patches=1`` is allowed (then ``A = [1]`` and the layer scales ``x_u`` by
            ``1 + c``).
        seed: seed of the mask; ``None`` draws one from torch's global generator.
        init: ``"paper"`` (``A + cI``, the class default) or ``"gated"`` (``tanh(gamma) A + cI``,
            ``gamma = 0``; the default of the model builders and of ``model.isdp_init``).
    """

    min_gap: float = 1e-3

    def __init__(
        self, channels: int, heads: int = 1, patches: int = 4, seed: int | None = None, init: str = "paper"
    ) -> None:
        super().__init__(channels, seed)
        if init not in ISDP_INITS:
            raise ValueError(f"unknown iSDP init {init!r}; valid: {', '.join(ISDP_INITS)}")
        grid = math.isqrt(patches) if patches >= 1 else 0
        if grid * grid != patches or grid < 1:
            raise ValueError(f"patches must be a perfect square (1, 4, 16, ...: a g x g grid), got {patches}")
        if heads < 1:
            raise ValueError(f"heads must be a positive integer, got {heads}")
        self.grid = grid
        self.heads = int(heads)
        self.query = nn.Conv2d(channels, channels, kernel_size=1)
        self.key = nn.Conv2d(channels, channels, kernel_size=1)
        self.log_d = nn.Parameter(torch.tensor(math.log(10.0)))
        init_gap = 0.01 - self.min_gap
        self.offset_raw = nn.Parameter(torch.tensor(math.log(math.expm1(init_gap))))
        self.init = init
        self.gate_raw = nn.Parameter(torch.tensor(0.0)) if init == "gated" else None

    @property
    def offset(self) -> Tensor:
        """``c = 1 + min_gap + softplus(raw) > 1``."""
        return 1 + self.min_gap + F.softplus(self.offset_raw)

    @property
    def gate(self) -> Tensor | float:
        """``g = tanh(gamma)`` (``init="gated"``), else ``1``: the weight of the attention term."""
        return 1.0 if self.gate_raw is None else torch.tanh(self.gate_raw)

    def _patch_size(self, height: int, width: int) -> tuple[int, int]:
        g = self.grid
        if height % g or width % g:
            raise ValueError(
                f"patches={g * g} (a {g}x{g} grid) does not tile the spatial size H={height}, W={width}; "
                f"use patches whose square root divides both H and W (e.g. patches=1)"
            )
        ph, pw = height // g, width // g
        features = self.channels * ph * pw
        if self.heads > features:
            raise ValueError(
                f"heads={self.heads} exceeds the {features} features per token "
                f"(channels {self.channels} x patch {ph}x{pw}); use at most {features} heads or fewer patches"
            )
        return ph, pw

    def _head_layout(self, features: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
        """``(group, slot, width)``: head ``group[f]`` of feature ``f`` (class docstring), its
        place ``slot[f]`` in the padded ``[heads * width]`` layout, ``width = ceil(D / heads)``."""
        f = torch.arange(features, device=device)
        group = f * self.heads // features
        start = -(-torch.arange(self.heads, device=device) * features // self.heads)  # ceil(h D / heads)
        width = -(-features // self.heads)
        return group, group * width + f - start[group], width

    def feature_mask(self, height: int, width: int) -> Tensor:
        """Boolean ``[C, ph, pw]`` mask of a patch's features, True on the masked half."""
        return self._pattern((self.channels, *self._patch_size(height, width)), self.log_d.device)

    def mask(self, height: int, width: int) -> Tensor:
        """Boolean ``[C, H, W]`` image mask (the feature mask tiled over the patch grid)."""
        return self.feature_mask(height, width).repeat(1, self.grid, self.grid)

    def _tokens(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, N, D]``: one token per patch, features ordered ``(c, i, j)``."""
        b, c, h, w = x.shape
        g = self.grid
        x = x.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, g * g, c * (h // g) * (w // g))

    def _image(self, t: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of :meth:`_tokens`."""
        b, c, h, w = shape
        g = self.grid
        t = t.reshape(b, g, g, c, h // g, w // g).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(b, c, h, w)

    def _split_heads(self, t: Tensor) -> Tensor:
        """``[B, N, D] -> [B, heads, N, ceil(D / heads)]``: each head's features, zero-padded
        where its group is one feature short (zeros add nothing to ``Q_h K_h^T`` and stay zero
        under the mixing)."""
        b, n, d = t.shape
        _, slot, width = self._head_layout(d, t.device)
        if self.heads * width != d:  # uneven groups: pad (even ones are a reshape)
            t = t.new_zeros(b, n, self.heads * width).index_copy_(-1, slot, t)
        return t.reshape(b, n, self.heads, width).transpose(1, 2)

    def _merge_heads(self, t: Tensor, features: int) -> Tensor:
        """Inverse of :meth:`_split_heads`: ``[B, heads, N, width] -> [B, N, D]``."""
        b, h, n, width = t.shape
        merged = t.transpose(1, 2).reshape(b, n, h * width)
        if h * width == features:
            return merged
        _, slot, _ = self._head_layout(features, t.device)
        return merged.index_select(-1, slot)

    def _mixing(self, x_masked: Tensor) -> Tensor:
        """``g A_h + c I`` of shape ``[B, heads, N, N]`` from the masked input (``g = 1``: paper)."""
        # Q and K as one convolution [B, 2C, H, W]: its tokens hold Q's D features, then K's
        weight = torch.cat([self.query.weight, self.key.weight])
        assert self.query.bias is not None and self.key.bias is not None  # made with biases
        qk = self._tokens(F.conv2d(x_masked, weight, torch.cat([self.query.bias, self.key.bias])))
        q, k = (self._split_heads(t) for t in qk.chunk(2, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) / self.log_d.exp(), dim=-1)
        eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        if self.gate_raw is not None:
            attn = attn * self.gate
        return attn + self.offset * eye

    def attention(self, x: Tensor) -> Tensor:
        """The mixing matrices ``g A_h + c I`` (``[B, heads, N, N]``) from the masked half of ``x``."""
        self._check_input(x)
        return self._mixing(x * self.mask(*x.shape[2:]).to(x.dtype))

    def _unmasked_per_head(self, feature_mask: Tensor) -> Tensor:
        group, _, _ = self._head_layout(feature_mask.numel(), feature_mask.device)
        return torch.bincount(group[~feature_mask.flatten()], minlength=self.heads)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        fmask = self.feature_mask(*x.shape[2:])
        mixing = self._mixing(x * self.mask(*x.shape[2:]).to(x.dtype))
        tokens = self._tokens(x)
        mixed = self._merge_heads(mixing @ self._split_heads(tokens), tokens.shape[-1])
        z = torch.where(fmask.flatten(), tokens, mixed)
        logabsdet = torch.linalg.slogdet(mixing)[1]
        logdet = (logabsdet * self._unmasked_per_head(fmask).to(x.dtype)).sum(1)
        return self._image(z, x.shape), logdet

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        self._check_input(z)
        fmask = self.feature_mask(*z.shape[2:])
        mixing = self._mixing(z * self.mask(*z.shape[2:]).to(z.dtype))
        tokens = self._tokens(z)
        unmixed = self._merge_heads(torch.linalg.solve(mixing, self._split_heads(tokens)), tokens.shape[-1])
        return self._image(torch.where(fmask.flatten(), tokens, unmixed), z.shape)


def build_invertible_attention(
    kind: str, channels: int, heads: int = 1, patches: int = 4, isdp_init: str = ISDP_DEFAULT_INIT
) -> Bijection | None:
    """The invertible attention layer of a Glow step position: ``"none"`` gives ``None``,
    ``"imap"`` an :class:`IMap`, ``"isdp"`` an :class:`ISDP` (``heads``, ``patches`` and its
    ``init`` ``isdp_init`` apply to iSDP only)."""
    if kind == "none":
        return None
    if kind == "imap":
        return IMap(channels)
    if kind == "isdp":
        return ISDP(channels, heads=heads, patches=patches, init=isdp_init)
    raise ValueError(f"unknown invertible attention kind {kind!r}; "
                     f"valid kinds: {', '.join(INVERTIBLE_ATTENTION_KINDS)}")


def invertible_attention_factory(
    attention: str,
    positions: Sequence[int],
    heads: int = 1,
    patches: int = 4,
    isdp_init: str = ISDP_DEFAULT_INIT,
) -> Callable[[int, int, int], Bijection]:
    """Validate the attention options of a Glow / Flow++ / mARFlow builder and return
    ``layer(channels, height, width)``, which builds one invertible attention layer for a step
    at that size (with ``"none"`` there are no positions, so no layer is asked for).

    An iSDP layer is checked against its size at build time, so a ``patches`` grid that does not
    tile the image or more ``heads`` than features per token fail before training.
    """
    if attention not in INVERTIBLE_ATTENTION_KINDS:
        raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(INVERTIBLE_ATTENTION_KINDS)}")
    if attention == "none" and positions:
        raise ValueError(f"positions {list(positions)} given with attention='none'; set attention to imap or isdp")
    if attention != "none" and not positions:
        raise ValueError(f"attention={attention!r} needs positions, e.g. positions=[4] (valid: 1, 2, 3, 4)")
    if isdp_init not in ISDP_INITS:
        raise ValueError(f"unknown isdp_init {isdp_init!r}; valid: {', '.join(ISDP_INITS)}")

    def layer(channels: int, height: int, width: int) -> Bijection:
        built = build_invertible_attention(attention, channels, heads=heads, patches=patches, isdp_init=isdp_init)
        if built is None:
            raise ValueError("attention='none' has no layer to build; set attention to imap or isdp")
        if isinstance(built, ISDP):
            built._patch_size(height, width)  # raises a ValueError naming the problem
        return built

    return layer
