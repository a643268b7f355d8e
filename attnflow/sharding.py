"""The batch a process holds is a shard of a global batch (data-parallel training).

Under ``torchrun`` every process computes the loss of ``local`` consecutive rows, starting at row
``offset``, of a global batch of ``total`` rows. Two things in a flow's forward pass look beyond
a single sample, and both must give what one process would give on the whole global batch:

* **per-sample random draws** (Hutchinson vectors of the residual log-det estimators, DenseFlow's
  cross-unit noise, Flow++'s variational dequantization noise): :func:`per_sample_draw` draws for
  the whole global batch from the (identical) global torch generator of every process and keeps
  this shard's rows, so each sample gets the draw it gets in single-process training and every
  process consumes the generator alike;
* **ActNorm's data-dependent initialisation** (Glow, Sec. 3.1): :func:`shard_mean` is the mean
  over the global batch, its sums all-reduced across the processes.

Outside a :func:`batch_shard` context (a single process, evaluation) both are the plain
single-batch computations.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from torch import Tensor

__all__ = ["BatchShard", "batch_shard", "per_sample_draw", "shard_mean"]


@dataclass(frozen=True)
class BatchShard:
    """Rows ``offset .. offset + local - 1`` of a global batch of ``total`` rows; ``all_sum``
    sums a tensor over the processes in place and returns it."""

    offset: int
    local: int
    total: int
    all_sum: Callable[[Tensor], Tensor]


_SHARD: ContextVar[BatchShard | None] = ContextVar("attnflow_batch_shard", default=None)


@contextmanager
def batch_shard(shard: BatchShard | None) -> Iterator[None]:
    """The forward passes inside this context see a shard of a global batch (the whole batch,
    unsharded, for ``None``)."""
    token = _SHARD.set(shard)
    try:
        yield
    finally:
        _SHARD.reset(token)


def per_sample_draw(like: Tensor, draw: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
    """``draw(like.shape)`` (one draw per sample along dimension 0), or inside a
    :func:`batch_shard` of a matching local batch this shard's rows of ``draw`` for the global
    batch."""
    shard = _SHARD.get()
    if shard is None or like.shape[0] != shard.local:
        return draw(tuple(like.shape))
    return draw((shard.total, *like.shape[1:]))[shard.offset : shard.offset + shard.local]


def shard_mean(x: Tensor, dims: Sequence[int]) -> Tensor:
    """``x.mean(dims)`` over the global batch when ``dims`` contains the batch dimension 0 inside
    a :func:`batch_shard` (the local sums all-reduced), else over ``x``."""
    shard = _SHARD.get()
    if shard is None or 0 not in dims:
        return x.mean(dim=list(dims))
    count = shard.total * math.prod(x.shape[d] for d in dims if d != 0)
    return shard.all_sum(x.sum(dim=list(dims))) / count
