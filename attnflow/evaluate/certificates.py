"""Contraction certificates of a trained model: every residual block's certified ``Lip(g)`` and
every spectral-normalised layer's operator norm as used.

A contractive residual flow (i-ResNet, Residual Flow, i-DenseNet, ACF) is invertible, and its
log-det series and fixed-point inverse are valid, only when every branch ``g`` has
``Lip(g) < 1``. :func:`certify` reads the certified bounds of the model as it is (pure: no buffer
or parameter changes) so that training, ``attnflow eval`` and ``attnflow certify`` can tell the
user which blocks, if any, are not certified.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core import Flow
from ..flows.residual_block import ResidualBlock
from ..nets.lipschitz_layers import SpectralNormConv2d, SpectralNormLinear
from .lipschitz_search import search_jacobian_norm

__all__ = ["block_inputs", "certify", "certificate_summary", "uncertified_message"]


def block_inputs(model: Flow, x: Tensor) -> dict[str, Tensor]:
    """The input of every :class:`ResidualBlock` of ``model`` when it computes ``log_prob(x)``
    (evaluation mode, no gradients)."""
    captured: dict[str, Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _, args, name=name: captured.setdefault(name, args[0].detach()))
        for name, module in model.named_modules() if isinstance(module, ResidualBlock)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.log_prob(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return captured


def certify(model: Flow, search_inputs: Tensor | None = None, progress: bool = False) -> dict[str, Any]:
    """Certificates of every :class:`ResidualBlock` and spectral-normalised layer of ``model``.

    With ``search_inputs`` (data images in [0, 1]) each block also gets ``empirical``, the largest
    Jacobian norm :func:`attnflow.evaluate.lipschitz_search.search_jacobian_norm` finds from the
    block's inputs on those images (a lower bound of ``Lip(g)``), and ``ratio`` = ``bound /
    empirical`` (>= 1: how loose the certificate is at most).

    Returns ``{"blocks": [{"name", "bound"}], "layers": [{"name", "coeff", "norm"}],
    "max_block_bound", "max_layer_norm", "max_layer_norm_over_coeff", "uncertified"}`` where
    ``bound`` is the block's certified ``Lip(g)``, ``norm`` a certified bound of the operator norm
    of the layer's weight as the next forward pass uses it, ``min(divisor, coeff)``
    (:meth:`SpectralNormConv2d.lipschitz_bound`), and ``uncertified`` the names of
    the blocks whose bound is not below 1. Models without residual blocks give empty lists and
    ``None`` maxima. ``progress`` shows a bar over the blocks on stderr.
    """
    from tqdm import tqdm

    residual = [(name, module) for name, module in model.named_modules() if isinstance(module, ResidualBlock)]
    bar = tqdm(residual, desc="certify", unit="block", leave=False, disable=not progress or not residual)
    blocks = [{"name": name, "bound": module.lipschitz_bound()} for name, module in bar]
    if search_inputs is not None and blocks:
        inputs = block_inputs(model, search_inputs)
        modules = dict(model.named_modules())
        for block in blocks:
            empirical = search_jacobian_norm(modules[block["name"]].branch, inputs[block["name"]])
            block.update(empirical=empirical, ratio=block["bound"] / empirical if empirical > 0 else math.inf)
    layers = [
        {"name": name, "coeff": module.coeff, "norm": module.lipschitz_bound()}
        for name, module in model.named_modules()
        if isinstance(module, (SpectralNormConv2d, SpectralNormLinear)) and getattr(module, "input_size", True)
    ]
    return {
        "blocks": blocks,
        "layers": layers,
        "max_block_bound": max((b["bound"] for b in blocks), default=None),
        "max_layer_norm": max((la["norm"] for la in layers), default=None),
        "max_layer_norm_over_coeff": max((la["norm"] / la["coeff"] for la in layers), default=None),
        "uncertified": [b["name"] for b in blocks if not b["bound"] < 1.0],
    }


def uncertified_message(report: dict[str, Any]) -> str | None:
    """A warning naming the blocks whose certified ``Lip(g)`` is not below 1 (``None`` if all are)."""
    bad = [b for b in report["blocks"] if b["name"] in report["uncertified"]]
    if not bad:
        return None
    listed = ", ".join(f"{b['name']} ({b['bound']:.4g})" for b in bad[:6]) + (" ..." if len(bad) > 6 else "")
    infinite = any(math.isinf(b["bound"]) for b in bad)
    why = " (plain dot-product attention has no finite bound: the ACF ablation)" if infinite else ""
    return (
        f"warning: {len(bad)} of {len(report['blocks'])} residual blocks are not certified contractive "
        f"(certified Lip(g) >= 1){why}: {listed}; their inverse and log-det series are not guaranteed "
        "- lower model.coeff or check the attention"
    )


def certificate_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The maxima and the uncertified blocks of a :func:`certify` report (for results files)."""
    keys = ("max_block_bound", "max_layer_norm", "max_layer_norm_over_coeff", "uncertified")
    return {k: report[k] for k in keys}
