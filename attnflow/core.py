"""The core contract of attnflow: :class:`Bijection`, :class:`Chain` and :class:`Flow`.

A bijection maps the *data side* to the *latent side*::

    z, logdet = bijection(x, context=None)     # logdet: [B], log|det dz/dx| in nats
    x = bijection.inverse(z, context=None)

The ``context`` (:data:`Context`) is a conditional flow's condition tensor, or, inside a
:class:`~attnflow.flows.conditional.ConditionedTransform`, the list of its per-level features,
from which :class:`~attnflow.flows.conditional.PickCondition` hands each level its tensor
(:func:`tensor_context` narrows it for a layer that uses it).

A :class:`Flow` is a transform whose last layer produces a flat latent ``z`` of shape ``[B, D]``
in which the prior is a standard normal, so that, exactly,

    log p(x) = log N(encode(x); 0, I) + log|det d encode / dx|.

Learned (conditional) priors over factored-out latents are bijections inside the transform
(see :class:`attnflow.flows.multiscale.FactorOut`), so temperature sampling, interpolation and
noise experiments all work in this one latent space.

A flow owns its training objective: :meth:`Flow.loss` takes a :class:`Batch` (images, their grey
levels, a conditional flow's context, class labels) and returns the loss with the metrics it
reports; the plain flow's is its negative log-likelihood in bits/dim, and a model with another
objective (:class:`attnflow.models.hybrid.HybridFlow`) overrides it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

__all__ = [
    "Batch", "Bijection", "Chain", "Context", "Flow", "NonFiniteSamples", "check_images", "log_prob_to_bits_per_dim",
    "standard_normal_log_prob", "tensor_context",
]

# A bijection's context: a condition tensor (or none), or a conditional transform's feature list.
Context = Tensor | Sequence[Tensor] | None


def tensor_context(context: Context, layer: str) -> Tensor | None:
    """``context`` for a ``layer`` that uses it directly: a tensor or ``None``; a feature list
    (what a conditional level gets before :class:`~attnflow.flows.conditional.PickCondition`
    picks its entry) is an error naming the layer."""
    if context is None or isinstance(context, Tensor):
        return context
    raise TypeError(f"{layer} takes one context tensor, got a {type(context).__name__}; "
                    "wrap it in attnflow.flows.PickCondition to pick its level's feature")


class Bijection(nn.Module):
    """Base class of every invertible layer.

    Subclasses implement ``forward(x, context=None) -> (z, logdet)`` with ``logdet`` of shape
    ``[B]`` (nats, ``log|det dz/dx|`` per sample) and ``inverse(z, context=None) -> x``.
    """

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        raise NotImplementedError


class Chain(Bijection):
    """Composition ``f_n o ... o f_1``: forward applies the layers in order, inverse in reverse,
    and the log-determinants add up."""

    def __init__(self, layers: Iterable[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for layer in self.layers:
            if not isinstance(layer, Bijection):
                raise TypeError(f"Chain takes Bijection layers, got {type(layer).__name__}")

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self:
            x, ld = layer(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        for layer in reversed(self):
            z = layer.inverse(z, context)
        return z

    def __len__(self) -> int:
        return len(self.layers)

    # ModuleList types its items as Module; the constructor checked that each is a Bijection
    def __iter__(self) -> Iterator[Bijection]:
        return cast(Iterator[Bijection], iter(self.layers))

    def __getitem__(self, index: int) -> Bijection:
        return cast(Bijection, self.layers[index])


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over all but the batch dimension, shape ``[B]``."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)


def log_prob_to_bits_per_dim(log_prob: Tensor, dim: int, levels: int) -> Tensor:
    """Convert ``log p(x)`` (nats, per image, on [0, 1]^dim) to bits/dim for ``levels`` levels:
    ``bpd = (-log p(x) + D log L) / (D log 2)`` (see :mod:`attnflow.evaluate.likelihood`)."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return (-log_prob + dim * math.log(levels)) / (dim * math.log(2.0))


def _check_dtype(x: Tensor, dtype: torch.dtype | None, what: str) -> None:
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"{what} are {x.dtype} but the model's weights are {dtype}; convert them with x.to({dtype}) "
            f"or the model with model.to({x.dtype})"
        )


def check_images(x: Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> None:
    """Raise a ``ValueError`` naming the problem unless ``x`` is a finite float batch of
    ``shape`` with values in [0, 1] (the model's input convention), of ``dtype`` when given
    (the model's weights' dtype)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected floating-point images in [0, 1], got dtype {x.dtype}; "
            "convert uint8 data with attnflow.data.dequantize (or x.float() / levels)"
        )
    _check_dtype(x, dtype, "images")
    expected = tuple(shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"expected images of shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"got an empty batch (shape {list(x.shape)}); pass at least one image")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or infinite values; clean the data before the model")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"input values must lie in [0, 1] (dequantized data scaled by the number of levels); "
            f"got range [{lo:.4g}, {hi:.4g}]"
        )


class NonFiniteSamples(RuntimeError):
    """Some samples decoded to NaN or infinite values. ``samples`` holds all of them (clamped to
    [0, 1] where finite), ``finite`` marks the usable ones ``[n]`` and ``count`` is the number of
    bad ones."""

    def __init__(self, samples: Tensor, finite: Tensor, temperature: float) -> None:
        self.samples, self.finite = samples, finite
        self.count = int((~finite).sum())
        super().__init__(
            f"{self.count} of {len(finite)} samples are not finite (NaN or inf) at temperature {temperature:g}: "
            "the model's inverse overflows for those latents; lower the temperature, or train longer or "
            "with a lower learning rate"
        )


@dataclass(frozen=True)
class Batch:
    """What a training step gives :meth:`Flow.loss`: dequantized ``images`` ``[B, *shape]`` in
    [0, 1], the number of grey ``levels`` of their data (for bits/dim), a conditional flow's
    ``context`` and the class ``labels`` ``[B]`` (each ``None`` when the data has none)."""

    images: Tensor
    levels: int
    context: Tensor | None = None
    labels: Tensor | None = None


class Flow(nn.Module):
    """A normalizing flow: a transform to a flat latent plus a standard-normal prior.

    Args:
        transform: bijection mapping images ``[B, *shape]`` in [0, 1] to flat latents ``[B, D]``.
        shape: the image shape ``(C, H, W)`` the flow models.
        latent_dim: ``D``; defaults to ``prod(shape)`` (volume-preserving dimensions). Flows that
            augment the input with noise (DenseFlow) have ``D > prod(shape)``.
        context_shape: shape of the conditioning input (without batch) or ``None``.

    ``log_prob_is_bound`` is ``True`` for models whose :meth:`log_prob` is a lower bound
    (variational dequantization or noise augmentation); evaluation reports bits/dim as an
    upper bound for them. ``data_levels`` is the number of grey levels a model requires of its
    data (a variational dequantizer is built for one), ``None`` when any will do. ``classes`` is
    the number of classes of a classifier on the latent (a hybrid model), 0 for a density model.
    """

    log_prob_is_bound: bool = False
    data_levels: int | None = None
    classes: int = 0

    def __init__(
        self,
        transform: Bijection,
        shape: Sequence[int],
        latent_dim: int | None = None,
        context_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim = int(latent_dim) if latent_dim is not None else math.prod(self.shape)
        self.context_shape = tuple(context_shape) if context_shape is not None else None

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the model's weights (``None`` for a model without parameters)."""
        p = next(self.parameters(), None)
        return None if p is None else p.dtype

    @property
    def dim(self) -> int:
        """Number of data dimensions ``D = C*H*W`` (used for bits/dim)."""
        return math.prod(self.shape)

    def _check_context(self, context: Tensor | None, batch: int) -> None:
        if self.context_shape is None:
            if context is not None:
                raise ValueError("this flow is unconditional; do not pass a context")
            return
        if context is None:
            raise ValueError(f"this flow is conditional: pass a context of shape [B, {self.context_shape}]")
        if tuple(context.shape[1:]) != self.context_shape or context.shape[0] != batch:
            raise ValueError(
                f"context must have shape [{batch}, {', '.join(map(str, self.context_shape))}], "
                f"got {list(context.shape)}"
            )

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Validated ``(z, logdet)`` with ``z`` flat ``[B, latent_dim]``."""
        check_images(x, self.shape, self.dtype)
        self._check_context(context, x.shape[0])
        z, logdet = self.transform(x, context)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise RuntimeError(
                f"the transform must end in a flat latent [B, {self.latent_dim}], got {list(z.shape)}; "
                "end it with attnflow.flows.Flatten"
            )
        return z, logdet

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p(x)`` in nats per image, shape ``[B]``, for continuous ``x`` in [0, 1]."""
        z, logdet = self.forward_and_logdet(x, context)
        return standard_normal_log_prob(z) + logdet

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective of ``batch`` and the metrics a model reports beside it (detached
        scalars, none here): the negative log-likelihood in bits/dim, the batch mean of
        ``(-log p(x | c) + D log L) / (D log 2)`` (:func:`log_prob_to_bits_per_dim`). A model
        that overrides it with another objective reports its ``bpd`` among the metrics."""
        log_prob = self.log_prob(batch.images, batch.context)
        return log_prob_to_bits_per_dim(log_prob, self.dim, batch.levels).mean(), {}

    def encode(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Flat latent ``[B, latent_dim]`` of ``x`` (all scales concatenated)."""
        return self.forward_and_logdet(x, context)[0]

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Images ``[B, *shape]`` from flat latents ``[B, latent_dim]``."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape [B, {self.latent_dim}], got {list(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("latent contains NaN or infinite values")
        _check_dtype(z, self.dtype, "latents")
        self._check_context(context, z.shape[0])
        return self.transform.inverse(z, context)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """Draw ``n`` images ``[n, *shape]`` with latents ``z ~ N(0, temperature^2 I)``.

        Contract: the returned images are finite and lie in [0, 1], the support of the model's
        density. Decoded values are clamped to [0, 1]: the inverse of the logit pre-processing
        maps R onto ``(-alpha, 1 + alpha) / (1 - 2 alpha)``, a little wider than [0, 1], so the
        mass the model puts outside the data's support lands on its border (as for Glow).
        A sample that decodes to NaN or inf (the inverse overflowed) raises
        :class:`NonFiniteSamples`, which carries every sample and the mask of the finite ones.
        Latents are decoded ``batch_size`` at a time, so the memory of the inverse is bounded by
        the batch whatever ``n``; a ``context`` has one row per sample.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n!r}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        p = next(self.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        # drawn on the generator's device (a seeded CPU generator gives the same latents whatever
        # the model's device), then moved to the model's
        draw_device = generator.device if generator is not None else device
        z = torch.randn(n, self.latent_dim, generator=generator, device=draw_device, dtype=dtype).to(device)
        z = z * temperature
        if context is not None and len(context) != n:
            raise ValueError(f"context must have one row per sample: {n} rows, got {len(context)}")
        parts = []
        for start in range(0, n, batch_size):
            ctx = None if context is None else context[start : start + batch_size]
            parts.append(self.decode(z[start : start + batch_size], ctx))
        x = torch.cat(parts).clamp_(0.0, 1.0)  # clamp keeps NaN as NaN
        finite = torch.isfinite(x.flatten(1)).all(1)
        if not bool(finite.all()):
            raise NonFiniteSamples(x, finite, temperature)
        return x
