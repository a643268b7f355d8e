"""Hybrid modelling: a classifier head on the latent of a contractive flow, trained jointly with
the likelihood (Residual Flows, Chen et al. 2019, Sec. "Hybrid modeling", after Nalisnick et al.
2019, "Hybrid models with deep and invertible features"; ACF, Mukherjee, Patro and Namboodiri,
Sec. 4.5 and Table 3, which reuses it with attention in the residual branches).

Objective. The model defines ``p(x, y) = p(y | x) p(x)`` and is trained on the weighted
log-likelihood

    max  E[ lambda * log p(x) + log p(y | x) ],

where ``log p(x)`` is the flow's exact (or unbiasedly estimated) log-density and
``p(y | x) = softmax(head(f(x)))_y`` reads the flow's latent ``z = f(x)``. Residual Flows compare
``lambda = 0`` (a classifier only), ``lambda = 1/D`` and ``lambda = 1`` (``D`` data dimensions;
their training script's classification task, and its hybrid task with and without scaling by
the dimension); ``1/D`` balances a per-dimension likelihood against one label and is the default
here. The weight is given per dimension, ``model.likelihood_weight = lambda * D`` (1 =
``lambda = 1/D``, 0 = the classifier alone, ``D`` = ``lambda = 1``), and the loss is in bits, as
in Residual Flows' training script::

    loss = likelihood_weight * bits/dim + cross_entropy / ln 2
         = -(lambda log p(x) + log p(y | x)) / ln 2 + const.

Head (Residual Flows' multi-scale classifier): the flat latent is cut back into its pieces, one
per scale (with factor-out: each factored-out half, standardised by its learned prior, then the
last scale; without factor-out: the last scale, the whole latent). Each piece ``z_s`` of shape
``[C_s, H_s, W_s]`` goes through ``conv3x3(C_s -> hidden) -> ActNorm -> ReLU -> global average
pool``; the pooled features of all pieces are concatenated and a linear layer gives the logits:

    logits = W [pool(relu(actnorm(conv_s(z_s))))]_s + b.

Residual Flows' head width is 256 (``model.classifier_hidden``). Without factor-out Residual
Flows also read the hidden state at the end of each earlier scale; this head reads only the
latent, so that ``classify`` is a function of ``encode(x)`` alone. The head is not part of the
bijection: ``encode``, ``decode``, ``log_prob`` and the log-determinant are those of the flow.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Batch, Bijection, Flow, log_prob_to_bits_per_dim, standard_normal_log_prob
from ..flows.glow import ActNorm

__all__ = ["ClassifierHead", "HybridFlow", "hybrid_loss", "latent_pieces", "check_labels"]

Shape = tuple[int, int, int]


def latent_pieces(shape: Sequence[int], scales: int, squeeze_first: bool, factor_out: bool) -> list[Shape]:
    """Shapes ``(C, H, W)`` of the pieces of the flat latent of
    :func:`attnflow.flows.multiscale.multiscale_transform`, in their order in ``z``: with factor-out
    the half factored out at each scale, then the last scale; without, the last scale alone."""
    c, h, w = shape
    if squeeze_first:
        c, h, w = 4 * c, h // 2, w // 2
    pieces: list[Shape] = []
    for _ in range(scales - 1):
        if factor_out:
            keep = c // 2
            pieces.append((c - keep, h, w))
            c = keep
        c, h, w = 4 * c, h // 2, w // 2
    return [*pieces, (c, h, w)]


class _PieceFeatures(nn.Module):
    """``pool(relu(actnorm(conv3x3(z_s))))``: ``[B, C_s, H_s, W_s] -> [B, hidden]``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.norm = ActNorm(hidden)  # data-dependent initialisation, as Residual Flows' ActNorm2d

    def forward(self, z: Tensor) -> Tensor:
        h, _ = self.norm(self.conv(z))
        return F.relu(h).mean(dim=(2, 3))


class ClassifierHead(nn.Module):
    """Logits ``[B, classes]`` from a flat latent ``[B, D]`` made of ``pieces`` (see the module
    docstring for the equation)."""

    def __init__(self, pieces: Sequence[Shape], classes: int, hidden: int) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got model.classes={classes}")
        self.pieces = [tuple(int(s) for s in p) for p in pieces]
        self.sizes = [math.prod(p) for p in self.pieces]
        self.features = nn.ModuleList(_PieceFeatures(p[0], hidden) for p in self.pieces)
        self.logits = nn.Linear(hidden * len(self.pieces), classes)

    def forward(self, z: Tensor) -> Tensor:
        parts = torch.split(z, self.sizes, dim=1)
        pooled = [f(p.reshape(z.shape[0], *shape)) for f, p, shape in zip(self.features, parts, self.pieces)]
        return self.logits(torch.cat(pooled, dim=1))


class HybridFlow(Flow):
    """A flow with a classifier head on its latent: ``p(x, y) = p(y | x) p(x)``.

    The :class:`attnflow.core.Flow` API is unchanged (``log_prob``, ``encode``, ``decode``,
    ``sample`` are the flow's; the head never enters the bijection); :meth:`classify` gives the
    logits and :meth:`log_prob_and_logits` both from one pass through the flow. Its :meth:`loss` is
    the hybrid objective with weight ``likelihood_weight`` (see the module docstring).
    """

    def __init__(self, transform: Bijection, shape: Sequence[int], pieces: Sequence[Shape], classes: int,
                 hidden: int, likelihood_weight: float = 1.0) -> None:
        super().__init__(transform, shape)
        if sum(math.prod(p) for p in pieces) != self.latent_dim:
            raise ValueError(f"latent pieces {list(pieces)} do not add up to the latent's {self.latent_dim} dimensions")
        self.classes = int(classes)
        self.likelihood_weight = float(likelihood_weight)
        self.head = ClassifierHead(pieces, classes, hidden)

    def classify(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``[B, classes]`` of ``p(y | x)`` for images ``x`` in [0, 1]."""
        return self.head(self.encode(x, context))

    def log_prob_and_logits(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(log p(x) [B] in nats, logits [B, classes])`` from one forward pass."""
        z, logdet = self.forward_and_logdet(x, context)
        return standard_normal_log_prob(z) + logdet, self.head(z)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`hybrid_loss` of the batch (one pass through the flow), with its ``bpd``, ``ce`` and
        ``accuracy``."""
        if batch.labels is None:
            raise ValueError(f"model.classes={self.classes} trains on class labels but the batch has none; "
                             "pass labels=... in the Batch (a labelled dataset)")
        log_prob, logits = self.log_prob_and_logits(batch.images, batch.context)
        return hybrid_loss(log_prob, logits, batch.labels, self.dim, batch.levels, self.likelihood_weight)


def check_labels(model: Flow, labels: Tensor | None, dataset: str) -> None:
    """Refuse a hybrid model on data without labels, or with labels outside ``0..classes-1``."""
    if not model.classes:
        return
    if labels is None:
        raise ValueError(
            f"model.classes={model.classes} needs class labels but dataset {dataset!r} has none; "
            "use a labelled dataset (digits, mnist, fashion-mnist, cifar10, folder) or set model.classes=0"
        )
    if labels.numel() and int(labels.max()) >= model.classes:
        raise ValueError(
            f"dataset {dataset!r} has labels up to {int(labels.max())} but model.classes={model.classes}; "
            f"set model.classes={int(labels.max()) + 1}"
        )


def hybrid_loss(log_prob: Tensor, logits: Tensor, labels: Tensor, dim: int, levels: int,
                likelihood_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Residual Flows' hybrid loss in bits, ``likelihood_weight * bits/dim + CE / ln 2`` (the
    batch means; see the module docstring), from a :class:`HybridFlow`'s ``log p(x)`` and logits
    for images of ``dim`` dimensions, and the batch's ``bpd``, cross-entropy ``ce`` (nats) and
    ``accuracy`` (detached scalars)."""
    bpd = log_prob_to_bits_per_dim(log_prob, dim, levels).mean()
    ce = F.cross_entropy(logits, labels)
    loss = likelihood_weight * bpd + ce / math.log(2.0)
    accuracy = (logits.detach().argmax(1) == labels).float().mean()
    return loss, {"bpd": bpd.detach(), "ce": ce.detach(), "accuracy": accuracy}
