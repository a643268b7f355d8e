"""The training batches of one process, gathered and dequantized ahead of the step on a thread.

Batch ``t`` is the ``t``-th global batch of a :class:`~attnflow.data.BatchSampler`, dequantized
(:func:`~attnflow.data.dequantize`) with the noise of the whole global batch drawn from one
generator, then cut to this process's ``rows``: every process draws the same numbers one process
would, and only its own rows are read. Rows of a dataset mapped from the cache are read with
``pread`` (:func:`gather`): they come from the page cache, which holds the file once for every
process, into the batch alone, whereas touching them through the map would add the file's pages
(whole large folios of them) to the process's resident memory.

The sampler and the generator passed in stay the record of what has been consumed: after
``next()`` they stand exactly where drawing that batch left them (so a checkpoint saves them as
before). The next batch is drawn on a background thread from private copies; it is used only when
the record still stands where it was drawn from, so restoring a checkpoint (a resume, a rollback)
simply discards it and draws again. Prefetching therefore never changes a number.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .cache import CacheError
from .dataset import ImageDataset
from .dequantize import dequantize, to_float
from .sampler import BatchSampler

__all__ = ["Batch", "BatchStream", "gather"]

_State = tuple[dict[str, Any], Tensor]  # the sampler's state, the generator's state


@dataclass
class Batch:
    """This process's part of a global batch: dataset ``index`` of its rows, the dequantized
    images ``x`` and their conditions as floats (``None`` for unconditional data)."""

    index: Tensor
    x: Tensor
    context: Tensor | None


def gather(dataset: ImageDataset, field: str, index: Tensor, fds: dict[Path, int]) -> Tensor:
    """Rows ``index`` of ``dataset.images`` or ``dataset.conditions`` (``field``): read in
    increasing order with ``pread`` from the cache file when the dataset has one (``fds`` keeps
    the open files), else indexed from the tensor."""
    t = getattr(dataset, field)
    if dataset.files is None or field not in dataset.files:
        return t[index]
    path, offset = dataset.files[field]
    if path not in fds:
        fds[path] = os.open(path, os.O_RDONLY)
    rows = torch.empty((len(index), *t.shape[1:]), dtype=t.dtype)
    flat = rows.numpy().reshape(len(index), -1).view(np.uint8)
    size = flat.shape[1]
    wanted = index.tolist()
    for i in sorted(range(len(wanted)), key=wanted.__getitem__):
        if os.preadv(fds[path], [flat[i]], offset + wanted[i] * size) != size:
            raise CacheError(f"{path} is truncated: row {wanted[i]} lies past its end; delete the file "
                             f"and it will be converted again")
    return rows


def _same(a: _State, b: _State) -> bool:
    return a[0] == b[0] and torch.equal(a[1], b[1])


class BatchStream:
    """``next(stream)`` is the next :class:`Batch` of ``dataset`` for the process holding
    ``rows`` of each global batch of ``sampler``, with dequantization noise from ``generator``
    (see the module docstring). ``prefetch=False`` draws each batch when asked; ``pin_memory``
    pins the tensors for an asynchronous copy to a GPU. :meth:`close` stops the thread."""

    def __init__(self, dataset: ImageDataset, sampler: BatchSampler, generator: torch.Generator, rows: slice,
                 prefetch: bool = True, pin_memory: bool = False) -> None:
        self.dataset, self.sampler, self.generator, self.rows = dataset, sampler, generator, rows
        self.pin_memory = pin_memory
        self._sampler = BatchSampler(sampler.n, sampler.batch_size, sampler.seed)  # the thread's copies
        self._generator = torch.Generator()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="attnflow-batches") if prefetch else None
        self._pending: tuple[_State, Future] | None = None
        self._fds: dict[Path, int] = {}  # the cache files the thread reads rows from

    def _state(self) -> _State:
        return self.sampler.state_dict(), self.generator.get_state()

    def _draw(self, state: _State) -> tuple[Batch, _State]:
        """The batch drawn from ``state`` and the state after it."""
        self._sampler.load_state_dict(state[0])
        self._generator.set_state(state[1])
        index = next(self._sampler)
        local = index[self.rows]
        noise = torch.rand((len(index), *self.dataset.shape), generator=self._generator, dtype=torch.float32)
        noise = noise[self.rows]
        x = dequantize(gather(self.dataset, "images", local, self._fds), self.dataset.levels, noise=noise)
        context = None
        if self.dataset.conditions is not None:
            conditions = gather(self.dataset, "conditions", local, self._fds)
            assert self.dataset.condition_levels is not None  # given with the conditions (ImageDataset checks)
            context = to_float(conditions, self.dataset.condition_levels)
        batch = Batch(local, x, context)
        if self.pin_memory:
            batch = Batch(local, x.pin_memory(), None if context is None else context.pin_memory())
        return batch, (self._sampler.state_dict(), self._generator.get_state())

    def _submit(self, state: _State) -> Future:
        if self._executor is None:
            done: Future = Future()
            done.set_result(self._draw(state))
            return done
        return self._executor.submit(self._draw, state)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        state = self._state()
        pending, self._pending = self._pending, None
        if pending is not None and _same(pending[0], state):
            batch, after = pending[1].result()
        else:
            if pending is not None:
                pending[1].exception()  # wait until the thread is free; the stale batch is dropped
            batch, after = self._submit(state).result()
        self.sampler.load_state_dict(after[0])
        self.generator.set_state(after[1])
        if self._executor is not None:
            self._pending = (after, self._submit(after))
        return batch

    def close(self) -> None:
        """Wait for the batch in flight, stop the thread and close the files (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor, self._pending = None, None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
