"""Linearizations: a network ``g`` at a point ``x`` as its output and explicit Jacobian products
``w^T J`` and ``J v`` (``J = dg/dx``), the form in which the log-det estimators of residual blocks
(:mod:`attnflow.flows.residual_logdet`; i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al.
2019) see a residual branch. The Lipschitz-constrained layers, the ACF attention modules and the
residual branches provide explicit products; :func:`autograd_linearization` serves any other
function."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Linearization", "autograd_linearization", "compose_linearizations", "diagonal_linearization"]


@dataclass(frozen=True)
class Linearization:
    """A function ``g`` at a point ``x``: ``output = g(x)``, ``vjp(w) = w^T J`` and ``jvp(v) = J v``
    with ``J = dg/dx``, for batches shaped like the output (``w``) or the input (``v``); ``J`` is
    block diagonal over the batch. Both products are differentiable (in ``x`` and the parameters)
    when called with grad mode enabled on a linearization built with grad mode enabled."""

    output: Tensor
    vjp: Callable[[Tensor], Tensor]
    jvp: Callable[[Tensor], Tensor]


def compose_linearizations(parts: Sequence[Linearization]) -> Linearization:
    """``f_n o ... o f_1`` from the linearizations of ``f_1 .. f_n`` (each at the previous output):
    ``J = J_n ... J_1``."""

    def vjp(w: Tensor) -> Tensor:
        for part in reversed(parts):
            w = part.vjp(w)
        return w

    def jvp(v: Tensor) -> Tensor:
        for part in parts:
            v = part.jvp(v)
        return v

    return Linearization(parts[-1].output, vjp, jvp)


def diagonal_linearization(output: Tensor, slope: Tensor) -> Linearization:
    """An elementwise function with derivative ``slope`` (``J = diag(slope)``)."""
    return Linearization(output, vjp=lambda w: w * slope, jvp=lambda v: v * slope)


def autograd_linearization(fn: Callable[[Tensor], Tensor], x: Tensor) -> Linearization:
    """Linearization of any ``fn`` by autograd, for layers without explicit products.

    ``fn(x)`` is recorded (even under ``torch.no_grad()``, locally); ``vjp`` is a backward pass
    through that record and ``jvp`` the double-VJP ``J v = d/du [(u^T J) v]``, so ``fn`` is not
    re-evaluated.
    """
    record = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x if record and x.requires_grad else x.detach().requires_grad_(True)
        out = fn(xg)

    def pullback(w: Tensor, create_graph: bool) -> Tensor:
        return torch.autograd.grad(out, xg, w, retain_graph=True, create_graph=create_graph, materialize_grads=True)[0]

    def jvp(v: Tensor) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            u = torch.zeros_like(out, requires_grad=True)
            return torch.autograd.grad(pullback(u, True), u, v, create_graph=create_graph, materialize_grads=True)[0]

    return Linearization(out if record else out.detach(), lambda w: pullback(w, torch.is_grad_enabled()), jvp)
