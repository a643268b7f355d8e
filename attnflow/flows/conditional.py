"""Conditional flow layers of AttnFlow's cAttnFlow (Table 1; SRFlow, Lugmayr et al. 2020;
Full-Glow, Sorkhei et al. 2021): the conditional affine injector, and the plumbing that computes
the condition's features once and hands each level (or step) its own.

The other conditional layer of Table 1, the *conditional affine coupling*
``(log s, t) = NN(x_a, c)``, is :class:`attnflow.flows.glow.AffineCoupling` (a
:class:`~attnflow.flows.coupling.MaskedCoupling`) with ``context_channels > 0`` (the condition
features are concatenated to the network input); the injector shares its element-wise transform
(:func:`~attnflow.flows.glow.sigmoid_affine`). iMap and iSDP go into conditional steps unchanged:
they ignore the condition, which therefore does not affect their invertibility (AttnFlow, Sec. 5).

Inside a conditional transform the context is a *list* of feature tensors, one per level (or per
step), computed from the raw condition by an encoder (SRFlow's :mod:`attnflow.nets.rrdb_encoder`,
Full-Glow's :mod:`attnflow.flows.source_flow`) in :class:`ConditionedTransform`;
:class:`PickCondition` hands entry ``index`` to its layers, so every layer below it receives an
image-shaped ``[B, F, H, W]`` context of its own size.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..core import Bijection, Context, tensor_context
from ..nets.glow_coupling_net import conv_coupling_net
from ..precision import inner_network
from .coupling import per_element
from .glow import sigmoid_affine, sigmoid_affine_inverse

__all__ = ["ConditionalAffineInjector", "PickCondition", "ConditionedTransform", "check_context"]


def check_context(context: Context, x: Tensor, channels: int, where: str) -> Tensor:
    """Return ``context`` if it is a ``[B, channels, H, W]`` tensor matching ``x [B, C, H, W]``;
    otherwise raise a ``ValueError`` naming the expected shape."""
    if context is None:
        raise ValueError(f"{where} is conditional: pass a context of shape [B, {channels}, H, W]")
    if not isinstance(context, Tensor) or context.dim() != 4 or context.shape[1] != channels \
            or context.shape[0] != x.shape[0] or context.shape[2:] != x.shape[2:]:
        got = list(context.shape) if isinstance(context, Tensor) else type(context).__name__
        raise ValueError(
            f"{where} expects a context of shape [{x.shape[0]}, {channels}, {x.shape[2]}, {x.shape[3]}] "
            f"(the input's batch and spatial size), got {got}"
        )
    return context


class ConditionalAffineInjector(Bijection):
    """Conditional affine injector (SRFlow, Sec. 3.3; AttnFlow Table 1):

        (h, t) = NN(c),   log s = logsigmoid(h + 2),   y = exp(log s) * x + t,

    a scale and shift of every channel and position computed from the condition ``c`` alone, so
    the Jacobian is diagonal and ``log|det dy/dx| = sum log s`` (the same for every ``x``).
    The stable scale ``sigmoid(h + 2)`` in (0, 1) is SRFlow's and Glow's. ``NN`` is Glow's coupling
    network (:func:`~attnflow.nets.glow_coupling_net.conv_coupling_net`) on the ``context_channels`` features,
    with a zero-initialised last layer.
    """

    def __init__(self, channels: int, context_channels: int, hidden: int = 64) -> None:
        super().__init__()
        if channels < 1 or context_channels < 1:
            raise ValueError(
                f"an injector needs channels >= 1 and context_channels >= 1, got {channels} and {context_channels}"
            )
        self.channels = channels
        self.context_channels = context_channels
        self.net = conv_coupling_net(context_channels, 2 * channels, hidden)

    def _theta(self, x: Tensor, context: Context) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"injector expects [B, {self.channels}, H, W] inputs, got {list(x.shape)}")
        c = check_context(context, x, self.context_channels, "the affine injector")
        return per_element(inner_network(self.net, c), 2)

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        z, log_s = sigmoid_affine(x, self._theta(x, context))
        return z, log_s.flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return sigmoid_affine_inverse(z, self._theta(z, context))


class PickCondition(Bijection):
    """Run ``inner`` with ``context[index]``: entry ``index`` of the per-level (or per-step)
    feature list that :class:`ConditionedTransform` computed, checked to have the batch and
    spatial size of the input. A bijection of ``x`` for every fixed
    condition, with ``inner``'s log-det."""

    def __init__(self, inner: Bijection, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.index = int(index)

    def _pick(self, context: Context, x: Tensor) -> Tensor:
        if not isinstance(context, (list, tuple)):
            raise ValueError(
                "this level is conditional: it needs the list of condition features that "
                "ConditionedTransform computes; call the model with its condition"
            )
        if not 0 <= self.index < len(context):
            raise ValueError(f"condition feature {self.index} requested but the encoder gave {len(context)}")
        feature = context[self.index]
        return check_context(feature, x, feature.shape[1], f"level {self.index}")

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        return self.inner(x, self._pick(context, x))

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return self.inner.inverse(z, self._pick(context, z))


class ConditionedTransform(Bijection):
    """``z = transform(x; encoder(c))``: the condition ``c`` (a low-resolution image, a label map)
    is encoded once into a list of features that the transform's :class:`PickCondition` layers
    hand to their levels. For a fixed ``c`` this is a bijection of ``x`` with the transform's
    log-det; ``log p(x | c) = log N(z; 0, I) + log|det dz/dx|`` (AttnFlow eq. 3)."""

    def __init__(self, encoder: nn.Module, transform: Bijection) -> None:
        super().__init__()
        self.encoder = encoder
        self.transform = transform

    def _features(self, context: Context) -> list[Tensor]:
        context = tensor_context(context, "ConditionedTransform (its context is the raw condition)")
        if context is None:
            raise ValueError("this model is conditional: pass its condition (context=...)")
        return list(inner_network(self.encoder, context))

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        return self.transform(x, self._features(context))

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        return self.transform.inverse(z, self._features(context))
