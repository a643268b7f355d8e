"""Residual branches ``g`` with a certified ``Lip(g) < 1`` for :class:`ResidualBlock`.

* i-ResNet (Behrmann et al. 2019): ``ELU - conv3 - ELU - conv1 - ELU - conv3`` (pre-activation,
  spectral-norm convolutions).
* Residual Flow (Chen et al. 2019): the same with LipSwish.
* i-DenseNet (Perugachi-Diaz et al. 2021): dense layers ``h(x) = [eta1 x, eta2 CLipSwish(W x)]``
  followed by a 1x1 convolution back to the input channels.

Each accepts an attention factory ``attention(channels) -> nn.Module`` (maps ``[B, C, H, W]`` to
itself and exposes ``lipschitz_bound()``), placed after the first hidden layer inside the
branch as in ACF and wrapped in :class:`AttentionMix`. Every layer exposes ``lipschitz_bound()``,
and the branch's bound is their product (``Lip(f o h) <= Lip(f) Lip(h)``).

:func:`linearize` gives a branch's output together with explicit Jacobian products for the
log-det estimators: ``J = J_n ... J_1`` layer by layer (normalised convolutions, diagonal
activation slopes, the dense concatenation and the attention mix combine their parts, the
attention modules have their own), with autograd only inside layers without an explicit form.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .branch_certificate import expansion_bound
from .linearization import Linearization, autograd_linearization, compose_linearizations, diagonal_linearization
from .lipschitz_layers import CLipSwish, LipSwish, SpectralNormConv2d

__all__ = [
    "AttentionMix",
    "DenseLayer",
    "LipschitzSequential",
    "build_branch",
    "conv_branch",
    "dense_branch",
    "layer_lipschitz_bound",
    "linearize",
]

AttentionFactory = Callable[[int], nn.Module]

# name -> (module, channel multiplier); all are 1-Lipschitz.
ACTIVATIONS: dict[str, tuple[type[nn.Module], int]] = {
    "elu": (nn.ELU, 1),
    "lipswish": (LipSwish, 1),
    "clipswish": (CLipSwish, 2),
}


def _activation(name: str) -> tuple[nn.Module, int]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    cls, multiplier = ACTIVATIONS[name]
    return cls(), multiplier


def layer_lipschitz_bound(layer: nn.Module) -> float:
    """Certified Lipschitz bound of one layer: 1 for ELU (``0 <= alpha <= 1``) and ReLU, else the
    layer's own ``lipschitz_bound()``."""
    if isinstance(layer, nn.ReLU) or (isinstance(layer, nn.ELU) and 0.0 <= layer.alpha <= 1.0):
        return 1.0
    bound = getattr(layer, "lipschitz_bound", None)
    if bound is None:
        raise TypeError(f"{type(layer).__name__} has no lipschitz_bound(); it cannot sit in a contractive branch")
    return float(bound())


def linearize(layer: nn.Module, x: Tensor) -> Linearization:
    """``layer(x)`` with its Jacobian products: explicit for ELU and ReLU (diagonal) and for layers
    with a ``linearize(x)`` method, by autograd (:func:`autograd_linearization`) otherwise."""
    if isinstance(layer, nn.ELU):  # slope 1 for x > 0, alpha e^x = y + alpha otherwise
        y = F.elu(x, layer.alpha)
        return diagonal_linearization(y, torch.where(x > 0, 1.0, y + layer.alpha))
    if isinstance(layer, nn.ReLU):
        return diagonal_linearization(F.relu(x), (x > 0).to(x.dtype))
    method = getattr(layer, "linearize", None)
    return method(x) if callable(method) else autograd_linearization(layer, x)


class LipschitzSequential(nn.Sequential):
    """``g = f_n o ... o f_1`` with the certified bound ``Lip(g) <= prod_i Lip(f_i)``, or the
    tighter expansion bound of :mod:`attnflow.nets.branch_certificate` where it applies."""

    def lipschitz_bound(self) -> float:
        product = math.prod(layer_lipschitz_bound(layer) for layer in self)
        expansion = expansion_bound(list(self))
        return product if expansion is None else min(product, expansion)

    def linearize(self, x: Tensor) -> Linearization:
        """``J = J_n ... J_1``, each layer linearized at its input."""
        parts = []
        for layer in self:
            parts.append(linearize(layer, x))
            x = parts[-1].output
        return compose_linearizations(parts)


class LipschitzBounded(Protocol):
    """A module with a certified Lipschitz bound (an attention :class:`AttentionMix` mixes in, a
    residual block's branch)."""

    def lipschitz_bound(self) -> float: ...


class AttentionMix(nn.Module):
    """Contractive form of ACF's attention output (ACF eq. 13).

    ACF uses ``out = gamma F(X) / Lip(F) + X``, whose Lipschitz constant can reach ``1 + |gamma|``,
    so a branch containing it is not certified contractive. We use the convex combination

        out = (1 - a) X + a F(X) / s,   a = sigmoid(gamma),   s = max(1, B_F),

    with ``B_F`` the attention module's certified ``lipschitz_bound()`` (treated as a constant in
    the backward pass). Then ``Lip(out) <= (1 - a) + a B_F / s <= 1``. ``gamma`` is learnable and
    initialised so that ``a = mix_init`` (small: the branch starts close to its attention-free
    form, in the spirit of ACF's ``gamma = 0`` initialisation). A module without a finite bound
    (plain dot-product attention, the ablation) is mixed in undivided and the bound is infinite.
    """

    def __init__(self, attention: nn.Module, mix_init: float = 0.1) -> None:
        super().__init__()
        if not callable(getattr(attention, "lipschitz_bound", None)):
            raise TypeError(f"the attention module ({type(attention).__name__}) must expose lipschitz_bound()")
        if not 0.0 < mix_init < 1.0:
            raise ValueError(f"mix_init is the initial attention weight and must lie in (0, 1), got {mix_init}")
        self.attention = attention
        self.gamma = nn.Parameter(torch.logit(torch.tensor(float(mix_init))))

    def mix_terms(self) -> tuple[Tensor, float, float]:
        """``(a, B_F, s)``: the attention weight, the attention's bound and its divisor. A layer with
        this method is a convex mix to :func:`~attnflow.nets.branch_certificate.expansion_bound`."""
        bound = float(cast(LipschitzBounded, self.attention).lipschitz_bound())  # checked in __init__
        # an attention without a finite bound (plain dot-product, the ablation) is mixed in raw,
        # as ACF's baseline does: the branch's bound is then infinite and invertibility is lost.
        divisor = max(1.0, bound) if math.isfinite(bound) else 1.0
        return torch.sigmoid(self.gamma), bound, divisor

    def _mixer(self) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x, f) -> (1 - a) x + (a / s) f``; linear, so it also combines Jacobian products."""
        a, _, divisor = self.mix_terms()
        return lambda x, f: (1 - a) * x + (a / divisor) * f

    def forward(self, x: Tensor) -> Tensor:
        return self._mixer()(x, self.attention(x))

    def linearize(self, x: Tensor) -> Linearization:
        """``J = (1 - a) I + (a / s) J_F``, with the attention's own products (autograd unless it
        has a ``linearize`` method)."""
        mix = self._mixer()
        inner = linearize(self.attention, x)
        return Linearization(
            mix(x, inner.output),
            vjp=lambda w: mix(w, inner.vjp(w)),
            jvp=lambda v: mix(v, inner.jvp(v)),
        )

    def lipschitz_bound(self) -> float:
        a, bound, divisor = self.mix_terms()
        weight = a.detach().item()
        return (1 - weight) + weight * bound / divisor


class DenseLayer(nn.Module):
    """i-DenseNet dense layer ``h(x) = [eta1 x, eta2 phi(W x)]`` (channel concatenation).

    ``W`` is a spectral-norm 3x3 convolution with ``growth / m`` outputs (``m = 2`` for CLipSwish,
    which doubles channels). The learnable concatenation weights are
    ``eta_i = coeff * e_i / ||e||`` with ``e_i = softplus(k_i) + 0.1`` (i-DenseNet), so
    ``||h(x) - h(y)||^2 <= (eta1^2 + eta2^2 Lip(phi W)^2) ||x - y||^2`` and the certified bound is
    ``sqrt(eta1^2 + eta2^2 L^2) <= coeff max(1, L)``.
    """

    def __init__(
        self,
        channels: int,
        growth: int,
        activation: str = "clipswish",
        coeff: float = 0.97,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        act, multiplier = _activation(activation)
        if growth % multiplier:
            raise ValueError(f"growth ({growth}) must be divisible by {multiplier} for activation {activation!r}")
        conv = SpectralNormConv2d(channels, growth // multiplier, 3, 1, coeff, input_size=input_size)
        self.net = LipschitzSequential(conv, act)
        self.coeff = coeff
        self.k = nn.Parameter(torch.zeros(2))

    def etas(self) -> Tensor:
        e = F.softplus(self.k) + 0.1
        return self.coeff * e / e.norm()

    def _concatenator(self) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
        """``eta`` and ``(x, h) -> [eta1 x, eta2 h]``; linear, so it also combines Jacobian products."""
        eta = self.etas()
        return eta, lambda x, h: torch.cat([eta[0] * x, eta[1] * h], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self._concatenator()[1](x, self.net(x))

    def linearize(self, x: Tensor) -> Linearization:
        """``J = [eta1 I; eta2 J_net]``: ``jvp(v) = [eta1 v, eta2 J_net v]``,
        ``vjp([w1, w2]) = eta1 w1 + eta2 w2^T J_net``."""
        eta, concat = self._concatenator()
        inner = self.net.linearize(x)
        c = x.shape[1]
        return Linearization(
            concat(x, inner.output),
            vjp=lambda w: eta[0] * w[:, :c] + inner.vjp(eta[1] * w[:, c:]),
            jvp=lambda v: concat(v, inner.jvp(v)),
        )

    def lipschitz_bound(self) -> float:
        eta1, eta2 = self.etas().detach().tolist()
        return math.sqrt(eta1**2 + (eta2 * self.net.lipschitz_bound()) ** 2)


def conv_branch(
    channels: int,
    hidden: int,
    kernel_sizes: tuple[int, ...] = (3, 1, 3),
    activation: str = "lipswish",
    coeff: float = 0.97,
    input_size: tuple[int, int] | None = None,
    attention: AttentionFactory | None = None,
    mix_init: float = 0.1,
) -> LipschitzSequential:
    """Pre-activation convolutional branch ``act - conv_k1 - act - [attention] - conv_k2 - ... -
    conv_kn`` (i-ResNet with ELU, Residual Flow with LipSwish; kernels 3-1-3 by default), hidden
    width ``hidden``, "same" zero padding. The attention, if any, acts on the hidden features
    between the first and the second convolution."""
    if any(k % 2 == 0 for k in kernel_sizes) or not kernel_sizes:
        raise ValueError(f"kernel_sizes must be a non-empty tuple of odd sizes, got {kernel_sizes}")
    if attention is not None and len(kernel_sizes) < 2:
        raise ValueError("attention sits between two convolutions: give at least two kernel sizes")
    layers: list[nn.Module] = []
    c = channels
    for i, k in enumerate(kernel_sizes):
        act, multiplier = _activation(activation)
        layers.append(act)
        c *= multiplier
        if i == 1 and attention is not None:
            layers.append(AttentionMix(attention(c), mix_init))
        out = channels if i == len(kernel_sizes) - 1 else hidden
        layers.append(SpectralNormConv2d(c, out, k, k // 2, coeff, input_size=input_size))
        c = out
    return LipschitzSequential(*layers)


def dense_branch(
    channels: int,
    growth: int,
    depth: int = 3,
    activation: str = "clipswish",
    coeff: float = 0.97,
    input_size: tuple[int, int] | None = None,
    attention: AttentionFactory | None = None,
    mix_init: float = 0.1,
) -> LipschitzSequential:
    """i-DenseNet branch: ``depth`` :class:`DenseLayer` s (each adds ``growth`` channels), then a
    spectral-norm 1x1 convolution back to ``channels``. The attention, if any, acts on the
    features after the first dense layer."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1 dense layer, got {depth}")
    layers: list[nn.Module] = []
    c = channels
    for i in range(depth):
        layers.append(DenseLayer(c, growth, activation, coeff, input_size))
        c += growth
        if i == 0 and attention is not None:
            layers.append(AttentionMix(attention(c), mix_init))
    layers.append(SpectralNormConv2d(c, channels, 1, 0, coeff, input_size=input_size))
    return LipschitzSequential(*layers)


BRANCH_KINDS: dict[str, tuple[Callable[..., LipschitzSequential], dict[str, str]]] = {
    "iresnet": (conv_branch, {"activation": "elu"}),
    "residual_flow": (conv_branch, {"activation": "lipswish"}),
    "idensenet": (dense_branch, {"activation": "clipswish"}),
}


def build_branch(kind: str, channels: int, **kwargs: object) -> LipschitzSequential:
    """Build the residual branch of ``kind`` (``"iresnet"``, ``"residual_flow"`` or
    ``"idensenet"``) for ``channels`` input channels; ``kwargs`` go to :func:`conv_branch`
    (``hidden`` required) or :func:`dense_branch` (``growth`` required) and override the kind's
    default activation."""
    if kind not in BRANCH_KINDS:
        raise ValueError(f"kind must be one of {sorted(BRANCH_KINDS)}, got {kind!r}")
    builder, defaults = BRANCH_KINDS[kind]
    return builder(channels, **{**defaults, **kwargs})
