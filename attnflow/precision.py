"""Mixed precision (``train.precision``): bfloat16 autocast inside the inner networks only.

A flow's likelihood is a sum of log-determinants; their terms (ActNorm and 1x1-convolution
log-dets, the coupling's ``sum log s``, power-series log-dets of contractive blocks), the priors,
the Lipschitz normalisation and the fixed-point inverses need float32. The networks that only
*parametrise* a bijection do not: any function gives an exact bijection, so computing it in
bfloat16 changes the learned function, never the invertibility or the log-det formula. Those
networks are:

* the coupling networks of Glow, Flow++ and mARFlow (:class:`~attnflow.flows.glow.AffineCoupling`,
  :class:`~attnflow.flows.mixture_coupling.MixtureCoupling`, including Flow++'s gated self-attention),
* DenseFlow's DenseNet + Nyström coupling networks and its cross-unit noise networks,
* the conditional networks of SRFlow and Full-Glow (affine injector, condition encoder).

Mechanism: the trainer enters :func:`mixed_precision` around the training forward pass; layers
call their inner network through :func:`inner_network`, which runs it under
``torch.autocast(device_type, dtype=bfloat16)`` while that context is active and casts its
floating-point outputs back to the input's dtype (float32) before they enter an affine transform
or a log-det. Nothing else is ever autocast, so everything outside the inner networks stays
float32 without further casts; :func:`full_precision` switches autocast off explicitly for the
parts that must stay float32 even under a caller's own ``torch.autocast`` (contractive residual
branches, the pseudo-inverse of Nyström attention). Evaluation, sampling and the CLI's
commands run in float32 (no :func:`mixed_precision` context).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "mixed_precision", "inner_network", "full_precision", "autocast_dtype"]

#: ``train.precision`` values and the autocast dtype of the inner networks (``None``: float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

_INNER_DTYPE: ContextVar[torch.dtype | None] = ContextVar("attnflow_inner_dtype", default=None)


@contextmanager
def mixed_precision(precision: str) -> Iterator[None]:
    """Inner networks called through :func:`inner_network` inside this context run in
    ``precision`` (``"fp32"``: no autocast, ``"bf16"``: bfloat16 autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    token = _INNER_DTYPE.set(PRECISIONS[precision])
    try:
        yield
    finally:
        _INNER_DTYPE.reset(token)


def autocast_dtype() -> torch.dtype | None:
    """The dtype inner networks are autocast to now (``None``: not autocast)."""
    return _INNER_DTYPE.get()


def _cast_back(out: Any, dtype: torch.dtype) -> Any:
    if isinstance(out, Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_cast_back(o, dtype) for o in out)
    return out


def inner_network(net: Callable[..., Any], x: Tensor, *args: Any) -> Any:
    """``net(x, *args)``, autocast to :func:`autocast_dtype` when a :func:`mixed_precision`
    context asks for it, with floating-point outputs (a tensor or a list of tensors) cast back to
    ``x.dtype``. Without the context this is exactly ``net(x, *args)``."""
    dtype = _INNER_DTYPE.get()
    if dtype is None:
        return net(x, *args)
    with torch.autocast(x.device.type, dtype=dtype):
        out = net(x, *args)
    return _cast_back(out, x.dtype)


def full_precision(like: Tensor) -> AbstractContextManager[Any]:
    """Autocast switched off on ``like``'s device type: the region computes in its inputs'
    dtype whatever the caller's ``torch.autocast`` context."""
    return torch.autocast(like.device.type, enabled=False)
