"""Bits per dimension, the papers' likelihood figure.

For uint8-style data with ``L`` levels, dequantized uniformly and scaled to [0, 1]
(``x = (k + u) / L``), the discrete model's negative log-likelihood in bits per dimension is

    bpd = (-log p(x) + D log L) / (D log 2),

where ``p`` is the continuous density on [0, 1]^D and ``D = C*H*W``. For models whose
``log_prob`` is a lower bound (``Flow.log_prob_is_bound``) the figure is an upper bound.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core import Flow, log_prob_to_bits_per_dim
from ..device import module_device, module_dtype

__all__ = ["log_prob_to_bits_per_dim", "bits_per_dim", "evaluate_bits_per_dim", "check_levels"]


def check_levels(flow: Flow, levels: int) -> None:
    """Refuse data whose number of grey levels differs from the one the model's likelihood is
    built for (``flow.data_levels``, e.g. a variational dequantizer's): its bits/dim would not
    bound the data's."""
    if flow.data_levels is not None and flow.data_levels != levels:
        raise ValueError(
            f"the model is built for data with {flow.data_levels} grey levels (model.levels) but the data has "
            f"{levels}; its bits/dim bound would be wrong: set model.levels={levels}"
        )


def bits_per_dim(flow: Flow, x: Tensor, levels: int, context: Tensor | None = None) -> Tensor:
    """Bits/dim of each image of the dequantized batch ``x`` in [0, 1], shape ``[B]``."""
    check_levels(flow, levels)
    return log_prob_to_bits_per_dim(flow.log_prob(x, context), flow.dim, levels)


@torch.no_grad()
def evaluate_bits_per_dim(
    flow: Flow,
    images: Tensor,
    levels: int,
    batch_size: int = 256,
    seed: int = 0,
    max_batches: int = 0,
    progress: bool = False,
    log_prob: Callable[..., Tensor] | None = None,
    contexts: Tensor | None = None,
) -> dict[str, Any]:
    """Mean bits/dim over uint8 ``images`` and its standard error over images.

    ``contexts`` (one condition per image, e.g. the low-resolution inputs) gives a conditional
    model's conditional bits/dim ``(-log p(x | c) + D log L) / (D log 2)``.

    Dequantization uses a generator seeded with ``seed``; the model's own random draws (noise
    augmentation, Hutchinson vectors) come from the global generator seeded with ``seed`` inside
    a forked RNG state, so the figure is reproducible and the caller's RNG is left untouched.
    ``log_prob`` replaces ``flow.log_prob`` (e.g. an importance-weighted estimate). Returns
    ``{"bpd", "bpd_stderr", "n", "upper_bound"}``."""
    from ..data import dequantize  # late import: data is optional for the math above

    check_levels(flow, levels)
    if batch_size < 1 or max_batches < 0:
        raise ValueError(f"need batch_size >= 1 and max_batches >= 0 (0 = all), got {batch_size} and {max_batches}")
    log_prob = log_prob or flow.log_prob
    was_training = flow.training
    flow.eval()
    gen = torch.Generator().manual_seed(seed)
    device, dtype = module_device(flow), module_dtype(flow)  # a float64 model is evaluated in float64
    starts = range(0, len(images), batch_size)
    if max_batches:
        starts = starts[:max_batches]
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch", leave=False)
    values = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in starts:
            x = dequantize(images[start : start + batch_size], levels, generator=gen, dtype=dtype).to(device)
            lp = log_prob(x) if contexts is None else log_prob(x, contexts[start : start + batch_size].to(device))
            values.append(log_prob_to_bits_per_dim(lp, flow.dim, levels).double().cpu())
    flow.train(was_training)
    bpd = torch.cat(values)
    if not torch.isfinite(bpd).all():
        raise RuntimeError(f"{int((~torch.isfinite(bpd)).sum())} test images got a non-finite likelihood")
    n = bpd.numel()
    stderr = float(bpd.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd": float(bpd.mean()), "bpd_stderr": stderr, "n": n, "upper_bound": bool(flow.log_prob_is_bound)}
