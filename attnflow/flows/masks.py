"""Coupling masks (RealNVP, Dinh et al. 2017, Sec. 3.4; Glow, Kingma & Dhariwal 2018): which part
of a coupling's input is kept (and conditions the network) and which part is transformed.

A :class:`Mask` splits ``x`` into ``(kept, transformed)`` and merges them back. Two kinds, each
with its inverse (the complement: what one keeps, the other transforms):

* ``"channel"`` keeps the first ``C // 2`` channels; ``"channel-inv"`` keeps the last
  ``C - C // 2`` (odd ``C`` allowed). Both parts are channel slices.
* ``"checkerboard"`` keeps the positions where ``i + j`` is even, ``"checkerboard-inv"`` those where
  it is odd (any ``H, W``). Both parts keep the full shape, zero where the other part lives, so
  ``x = kept + transformed``.

Models alternate a kind and its inverse (:func:`alternating_masks`); :data:`COUPLING_MASKS` are the
kinds a model's ``mask`` key takes, :data:`MASK_NAMES` every name a coupling accepts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["COUPLING_MASKS", "MASK_NAMES", "Mask", "alternating_masks", "checkerboard_mask"]

COUPLING_MASKS = ("channel", "checkerboard")
MASK_NAMES = tuple(name for kind in COUPLING_MASKS for name in (kind, f"{kind}-inv"))


def checkerboard_mask(height: int, width: int, invert: bool = False, like: Tensor | None = None) -> Tensor:
    """``[1, 1, H, W]`` mask with ones where ``(i + j)`` is even (odd when ``invert``)."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    m = ((i + j) % 2 == int(invert)).view(1, 1, height, width)
    if like is not None:
        return m.to(dtype=like.dtype, device=like.device)
    return m.float()


@dataclass(frozen=True)
class Mask:
    """A coupling mask: ``kind`` in :data:`COUPLING_MASKS`, ``inverted`` for its complement.
    Build it from a name with :meth:`parse`."""

    kind: str
    inverted: bool = False

    def __post_init__(self) -> None:
        if self.kind not in COUPLING_MASKS:
            raise ValueError(
                f"unknown coupling mask kind {self.kind!r}; valid kinds: {', '.join(COUPLING_MASKS)}"
            )

    @classmethod
    def parse(cls, name: str | Mask) -> Mask:
        """The mask called ``name`` (one of :data:`MASK_NAMES`); a :class:`Mask` is returned as is."""
        if isinstance(name, Mask):
            return name
        if name not in MASK_NAMES:
            raise ValueError(f"unknown coupling mask {name!r}; valid masks: {', '.join(MASK_NAMES)}")
        kind, _, suffix = name.partition("-")
        return cls(kind, inverted=bool(suffix))

    @property
    def name(self) -> str:
        return f"{self.kind}-inv" if self.inverted else self.kind

    def __str__(self) -> str:
        return self.name

    def inverse(self) -> Mask:
        """The complementary mask: it transforms what this one keeps."""
        return Mask(self.kind, not self.inverted)

    def kept_channels(self, channels: int) -> int:
        """Channels of the kept part of a ``channels``-channel input (the network's input)."""
        if self.kind == "checkerboard":
            return channels
        return channels - channels // 2 if self.inverted else channels // 2

    def transformed_channels(self, channels: int) -> int:
        """Channels of the transformed part (the network gives parameters for each of them)."""
        return channels if self.kind == "checkerboard" else channels - self.kept_channels(channels)

    def _board(self, x: Tensor) -> Tensor:
        """The checkerboard as 0/1 in ``x``'s dtype, ones on the kept positions."""
        return checkerboard_mask(x.shape[-2], x.shape[-1], invert=self.inverted, like=x)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(kept, transformed)`` of ``x [B, C, H, W]``."""
        if self.kind == "checkerboard":
            m = self._board(x)
            return x * m, x * (1 - m)
        first, second = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
        return (second, first) if self.inverted else (first, second)

    def merge(self, kept: Tensor, transformed: Tensor) -> Tensor:
        """Inverse of :meth:`split`. Of ``transformed`` only the transformed elements are read (a
        checkerboard ignores whatever it holds on the kept positions)."""
        if self.kind == "checkerboard":
            return kept + torch.where(self._board(kept).bool(), 0.0, transformed)
        return torch.cat([transformed, kept] if self.inverted else [kept, transformed], 1)

    def sum_transformed(self, values: Tensor) -> Tensor:
        """Per-sample sum ``[B]`` of ``values`` (shaped like the transformed part) over the
        transformed elements only: an element-wise log-det becomes the coupling's log-det."""
        if self.kind == "checkerboard":
            values = torch.where(self._board(values).bool(), 0.0, values)
        return values.flatten(1).sum(1)


def alternating_masks(kind: str, count: int) -> list[Mask]:
    """``count`` masks alternating ``kind`` (one of :data:`COUPLING_MASKS`) and its inverse, so
    that every element is transformed by every second coupling."""
    first = Mask(kind)
    return [first if k % 2 == 0 else first.inverse() for k in range(count)]
