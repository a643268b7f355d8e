"""Data-parallel training through ``torchrun``: the process group, the local batch, and the
collective decisions that keep every process on the same step.

``torchrun --nproc_per_node N attnflow train ...`` starts ``N`` processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`start` then joins them into a process group (NCCL on CUDA, each process on
``cuda:LOCAL_RANK``; Gloo on the CPU). Without those variables training is one process and no
process group is created.

What makes ``N`` processes train exactly as one process on the same global batch:

* every process draws the same global batch (one :class:`~attnflow.data.BatchSampler`, one
  dequantization generator) and keeps its rows :attr:`Distributed.rows`;
* per-sample random draws and ActNorm's data initialisation inside the model are taken over the
  global batch (:mod:`attnflow.sharding`, entered with :meth:`Distributed.shard`);
* DistributedDataParallel averages the gradients of the local means, which is the gradient of
  the global mean; it broadcasts rank 0's buffers (spectral-norm power-iteration vectors) before
  every forward pass, so they stay identical even where GPU kernels are not bitwise reproducible;
* decisions that depend on one process's view (a non-finite loss, a stop signal, the time limit)
  are agreed by all-reduces (:meth:`Distributed.mean`, :meth:`Distributed.any`).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..core import Batch, Flow
from ..device import DeviceUnavailable, resolve_device
from ..sharding import BatchShard

__all__ = ["Distributed", "start", "under_torchrun"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Long enough for rank 0's evaluation and checkpoints while the others wait at a barrier.
TIMEOUT = timedelta(hours=2)


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its rank variables are set)."""
    return all(k in os.environ for k in _ENV)


class _TrainingLoss(nn.Module):
    """The model's :meth:`~attnflow.core.Flow.loss` (the loss and its metrics) as a module
    ``forward``, the call DistributedDataParallel wraps."""

    def __init__(self, model: Flow) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model.loss(batch)


class Distributed:
    """This process's place in data-parallel training (``world_size == 1``, ``rank == 0``: a
    single process, every method then a no-op)."""

    def __init__(self, rank: int = 0, world_size: int = 1, owns_group: bool = False,
                 device: torch.device | None = None) -> None:
        self.rank, self.world_size, self.owns_group = rank, world_size, owns_group
        self.device = device  # where the collectives' tensors live (the process's GPU with NCCL)
        self.local_batch = 0

    @property
    def active(self) -> bool:
        """Whether a process group is in use."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory (checkpoints, metrics, images, results)."""
        return self.rank == 0

    def split(self, batch_size: int) -> int:
        """The local batch of ``batch_size`` global rows, or a one-line ``ValueError``."""
        if batch_size % self.world_size:
            raise ValueError(
                f"train.batch_size={batch_size} does not split evenly over {self.world_size} processes; "
                f"set train.batch_size to a multiple of {self.world_size} or change torchrun's --nproc_per_node"
            )
        self.local_batch = batch_size // self.world_size
        return self.local_batch

    @property
    def rows(self) -> slice:
        """This process's rows of the global batch (after :meth:`split`)."""
        return slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def shard(self) -> BatchShard | None:
        """The :class:`~attnflow.sharding.BatchShard` of this process (``None`` in one process)."""
        if not self.active:
            return None
        return BatchShard(self.rank * self.local_batch, self.local_batch, self.local_batch * self.world_size,
                          self.all_sum)

    def all_sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes (in place)."""
        if self.active:
            dist.all_reduce(t)
        return t

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over the processes (a new tensor)."""
        return self.all_sum(value.detach().clone()) / self.world_size if self.active else value.detach()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the processes: one decision for all of them."""
        if not self.active:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        return [bool(v) for v in self.all_sum(t) > 0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def data_parallel(self, model: Flow, device: torch.device) -> nn.Module | None:
        """A DistributedDataParallel module computing ``model.loss(batch)`` whose backward averages
        the gradients over the processes (rank 0's parameters and buffers broadcast at start);
        ``None`` in one process, where ``model.loss`` is called directly."""
        if not self.active:
            return None
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # DDP's default buffer synchronisation: rank 0's buffers before every forward pass
        return DistributedDataParallel(_TrainingLoss(model), device_ids=ids,
                                       output_device=device if ids else None)

    def close(self) -> None:
        """Destroy the process group if :func:`start` created it (idempotent)."""
        if self.owns_group and self.active:
            dist.destroy_process_group()
        self.owns_group = False


def _process_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """``cuda:LOCAL_RANK`` for ``auto`` (with CUDA) and ``cuda``; ``cpu`` for ``cpu``."""
    device = resolve_device(name, fallback_hint="set train.device=cpu")
    if device.type != "cuda":
        return device
    if device.index is not None and world_size > 1:
        raise DeviceUnavailable(
            f"train.device={name} under torchrun: each process uses cuda:LOCAL_RANK; set train.device=cuda"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceUnavailable(
            f"process with LOCAL_RANK={local_rank} has no GPU ({count} visible); "
            f"set --nproc_per_node to at most {count}"
        )
    return torch.device("cuda", device.index if device.index is not None else local_rank)


def start(device_name: str) -> tuple[Distributed, torch.device]:
    """This process's :class:`Distributed` and training device. Under ``torchrun`` this joins the
    process group (NCCL for CUDA, Gloo for the CPU) unless one exists already; otherwise it is a
    single process on :func:`~attnflow.device.resolve_device` ``(device_name)``."""
    if not under_torchrun():
        return Distributed(), resolve_device(device_name, fallback_hint="set train.device=cpu")
    rank, world, local = (int(os.environ[k]) for k in _ENV)
    device = _process_device(device_name, local, world)
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    return Distributed(dist.get_rank(), dist.get_world_size(), owns, device), device
