"""Glow building blocks (Kingma & Dhariwal, 2018): ActNorm, invertible 1x1 convolution, affine
coupling, and the Glow step that may hold invertible attention (AttnFlow) at four positions."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection, Chain, Context
from ..nets.glow_coupling_net import CouplingNetFactory, conv_coupling_net
from ..sharding import shard_mean
from .coupling import MaskedCoupling
from .masks import Mask

__all__ = [
    "ActNorm", "InvertibleConv1x1", "AffineCoupling", "GlowStep", "sigmoid_affine", "sigmoid_affine_inverse",
]


def _spatial_size(x: Tensor) -> int:
    """Number of positions per channel (``H*W`` for images, 1 for ``[B, C]``)."""
    return x[0, 0].numel()


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``[C]`` vector to broadcast against ``x`` of shape ``[B, C, ...]``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(Bijection):
    """Per-channel affine normalisation ``z = (x + b) * exp(s)`` (Glow, Sec. 3.1).

    ``log|det| = H * W * sum_c s_c``. On the first training batch ``b`` and ``s`` are set so that
    the output has zero mean and unit variance per channel (data-dependent initialisation; in
    data-parallel training over the global batch, :func:`attnflow.sharding.shard_mean`); the
    flag ``initialized`` is a persistent buffer, so a loaded or resumed model is never
    re-initialised.
    """

    initialized: Tensor  # buffer

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        mean = shard_mean(x, dims)  # over the global batch in data-parallel training
        if x.numel() // x.shape[1] > 1:
            std = shard_mean((x - _per_channel(mean, x)) ** 2, dims).sqrt()
        else:
            std = torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        z = (x + _per_channel(self.bias, x)) * _per_channel(self.log_scale.exp(), x)
        logdet = (self.log_scale.sum() * _spatial_size(x)).expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return z * _per_channel((-self.log_scale).exp(), z) - _per_channel(self.bias, z)


class InvertibleConv1x1(Bijection):
    """Invertible 1x1 convolution with an LU-decomposed weight (Glow, Sec. 3.2):
    ``W = P L (U + diag(sign * exp(log_s)))``, ``log|det| = H * W * sum(log_s)``.

    ``P`` is a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular;
    the weight is initialised to a random rotation.
    """

    permutation: Tensor  # buffers
    sign_s: Tensor
    lower_mask: Tensor

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        w = self.weight()
        z = torch.einsum("ij,bj...->bi...", w, x)
        logdet = (self.log_s.sum() * _spatial_size(x)).expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return torch.einsum("ij,bj...->bi...", w_inv, z)


def sigmoid_affine(x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """``(s * x + t, log s)`` with ``(h, t) = theta`` and ``s = sigmoid(h + 2)``: Glow's stable
    scale, in (0, 1), of its affine coupling and SRFlow's affine injector."""
    log_s = F.logsigmoid(theta[0] + 2.0)
    return x * log_s.exp() + theta[1], log_s


def sigmoid_affine_inverse(z: Tensor, theta: Tensor) -> Tensor:
    """Inverse of :func:`sigmoid_affine`: ``(z - t) / s``."""
    return (z - theta[1]) * (-F.logsigmoid(theta[0] + 2.0)).exp()


class AffineCoupling(MaskedCoupling):
    """Affine coupling (RealNVP, Sec. 3.3; Glow, Sec. 3.3), a :class:`~attnflow.flows.coupling.MaskedCoupling`
    with ``tau(x_b; h, t) = s * x_b + t``, ``s = sigmoid(h + 2)`` (Glow's stable scale, in (0, 1);
    :func:`sigmoid_affine`), so ``log|det| = sum_b log s``.

    ``mask`` is one of :data:`MASKS` (:mod:`attnflow.flows.masks`: channel halves, odd ``C``
    allowed, or a checkerboard, any ``H, W``; each with its ``-inv`` complement).
    ``net_factory(in_channels, out_channels)`` builds the network; by default
    :func:`~attnflow.nets.glow_coupling_net.conv_coupling_net` of width ``hidden``. With
    ``context_channels > 0`` the context (an image-shaped tensor of the same spatial size) is
    concatenated to the network input: the conditional affine coupling of SRFlow and Full-Glow.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str | Mask = "channel",
        net_factory: CouplingNetFactory | None = None,
        context_channels: int = 0,
    ) -> None:
        factory = net_factory or (lambda i, o: conv_coupling_net(i, o, hidden))
        super().__init__(channels, mask, 2, factory, context_channels)

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return sigmoid_affine(x_b, theta)

    def inverse_transform(self, z_b: Tensor, theta: Tensor) -> Tensor:
        return sigmoid_affine_inverse(z_b, theta)


AttentionFactory = Callable[[int], Bijection]


class GlowStep(Chain):
    """One Glow step ``ActNorm -> InvertibleConv1x1 -> AffineCoupling`` with optional invertible
    attention layers (AttnFlow, Sec. 4) at any of four positions: 1 before ActNorm, 2 after
    ActNorm, 3 after the 1x1 convolution, 4 after the coupling.

    ``attention(channels) -> Bijection`` builds one attention layer per requested position.
    ``coupling`` replaces the default :class:`AffineCoupling` (``hidden``, ``mask``,
    ``net_factory`` and ``context_channels`` configure that default), e.g. Flow++'s mixture
    coupling in :class:`~attnflow.flows.mixture_coupling.MixtureStep`.

    ``injector`` (e.g. :class:`~attnflow.flows.conditional.ConditionalAffineInjector`) is inserted
    between the 1x1 convolution and the coupling: SRFlow's conditional step (AttnFlow, Table 1).
    The positions then run 1..5 (4 after the injector, 5 after the coupling).
    """

    POSITIONS = (1, 2, 3, 4)

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        mask: str | Mask = "channel",
        attention: AttentionFactory | None = None,
        positions: Sequence[int] = (),
        net_factory: CouplingNetFactory | None = None,
        context_channels: int = 0,
        coupling: Bijection | None = None,
        injector: Bijection | None = None,
    ) -> None:
        valid = self.POSITIONS if injector is None else (*self.POSITIONS, 5)
        bad = [p for p in positions if p not in valid]
        if bad:
            raise ValueError(f"attention positions must be among {valid}, got {bad}")
        if positions and attention is None:
            raise ValueError("attention positions given but no attention layer factory")
        core = [
            ActNorm(channels),
            InvertibleConv1x1(channels),
            *([injector] if injector is not None else []),
            coupling if coupling is not None else AffineCoupling(channels, hidden, mask, net_factory, context_channels),
        ]
        layers: list[Bijection] = []
        for pos in valid:  # position p sits before core layer p (the last one: after the last layer)
            if attention is not None and pos in positions:  # positions need an attention (checked above)
                layers.append(attention(channels))
            if pos <= len(core):
                layers.append(core[pos - 1])
        super().__init__(layers)
