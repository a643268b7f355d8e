"""A deterministic, resumable, infinite sampler of index batches."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["BatchSampler"]


class BatchSampler:
    """Yields batches of ``batch_size`` indices into ``range(n)``, forever.

    Epoch ``e`` visits ``torch.randperm(n)`` drawn from ``torch.Generator().manual_seed(seed + e)``
    in consecutive chunks; the last ``n % batch_size`` indices of each epoch are dropped. The state
    ``(epoch, position)`` names the next batch (``position`` = batches already taken from
    ``epoch``), so saving it with :meth:`state_dict` and restoring it with :meth:`load_state_dict`
    continues with exactly the same batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if not 1 <= batch_size <= n:
            raise ValueError(f"need 1 <= batch_size <= n, got batch_size={batch_size}, n={n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = 0, 0
        self._permutation: tuple[int, Tensor] | None = None  # (epoch, cached permutation)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        if self._permutation is None or self._permutation[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            self._permutation = (self.epoch, torch.randperm(self.n, generator=generator))
        start = self.position * self.batch_size
        batch = self._permutation[1][start : start + self.batch_size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
            "epoch": self.epoch, "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n", "batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {key}={getattr(self, key)}; "
                    f"build the sampler with the saved {key} to resume"
                )
        if not (state["epoch"] >= 0 and 0 <= state["position"] < self.batches_per_epoch):
            raise ValueError(
                f"sampler state epoch={state['epoch']}, position={state['position']} is out of range "
                f"(position must be in 0..{self.batches_per_epoch - 1})"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
