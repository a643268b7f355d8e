"""Sample-quality metrics: FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and the Inception
Score (Salimans et al. 2016), as AttnFlow reports them for CIFAR10 (its Table 3), computed by
torch-fidelity (Obukhov et al.) from a local Inception-v3 weights file; nothing is downloaded.

Images go to torch-fidelity as uint8 tensors ``[3, H, W]``: values in [0, 1] become
``round(255 x)``, grey images are repeated over three channels, and torch-fidelity's
``inception-v3-compat`` extractor resizes them to 299 x 299 itself (bilinear, as the TensorFlow
reference does). FID compares pool3 features of the model's samples with those of the reference
images; KID is the mean (and standard deviation) of the polynomial-kernel MMD over
``kid_subsets`` random subsets of ``min(1000, n)`` images; the Inception Score uses the samples
alone. The weights file is the PyTorch state dict torch-fidelity uses (``pt_inception-2015-12-05``,
converted from the TensorFlow FID Inception graph); any other file is refused with one line.

torch-fidelity is an optional dependency (``pip install -e ".[fid]"``): it imports torchvision,
whose build must match the installed torch (torchvision 0.28 for torch 2.13; the CPU build for a
CPU torch).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "FidelityUnavailable", "fidelity_images", "check_inception_weights", "require_torch_fidelity", "sample_quality",
]

FEATURE_EXTRACTOR = "inception-v3-compat"
INSTALL_HINT = 'pip install -e ".[fid]" (torch-fidelity and a torchvision build matching your torch)'


class FidelityUnavailable(RuntimeError):
    """torch-fidelity (or the torchvision it imports) cannot be imported."""


def fidelity_images(x: Tensor) -> Tensor:
    """Images ``[N, C, H, W]`` in [0, 1] (``C`` = 1 or 3) as the uint8 ``[N, 3, H, W]`` that
    torch-fidelity's Inception extractor takes: ``round(255 x)``, grey repeated over RGB."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {list(x.shape)}")
    out = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return out.expand(-1, 3, -1, -1).contiguous() if out.shape[1] == 1 else out


class _Images(Dataset):
    """A uint8 image tensor as the dataset torch-fidelity iterates over."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def check_inception_weights(path: str | os.PathLike) -> Path:
    """``path`` if it is a readable Inception-v3 state dict, else a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file {path} not found: give --inception-weights the local "
            "pt_inception-2015-12-05 state dict (nothing can be downloaded)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line message
        # torch's message repeats its weights_only=False advice, which would run a hostile file's code
        raise ValueError(f"{path} is not a readable PyTorch weights file ({type(exc).__name__}: corrupt, truncated "
                         f"or not plain tensors); use torch-fidelity's pt_inception-2015-12-05 weights") from None
    if not isinstance(state, dict) or not {"Conv2d_1a_3x3.conv.weight", "fc.weight"} <= set(state):
        raise ValueError(
            f"{path} is not an Inception-v3 state dict (no Conv2d_1a_3x3.conv.weight / fc.weight); "
            "use torch-fidelity's pt_inception-2015-12-05 weights"
        )
    return path


def require_torch_fidelity() -> Any:
    """The ``torch_fidelity`` module, or a one-line :class:`FidelityUnavailable` saying how to install it."""
    try:
        import torch_fidelity
    except Exception as exc:  # noqa: BLE001 - a broken torchvision raises RuntimeError/OSError, not ImportError
        raise FidelityUnavailable(
            f"FID/KID/IS need torch-fidelity, which cannot be imported ({type(exc).__name__}: {exc}); "
            f"install it with {INSTALL_HINT}"
        ) from None
    return torch_fidelity


def sample_quality(
    samples: Tensor,
    reference: Tensor,
    weights: str | os.PathLike,
    batch_size: int = 64,
    kid_subsets: int = 100,
    cuda: bool = False,
) -> dict[str, float]:
    """FID and KID of ``samples`` against ``reference`` and the Inception Score of ``samples``
    (images ``[N, C, H, W]`` in [0, 1]), with the Inception weights at ``weights``.

    Returns ``fid``, ``kid``, ``kid_std``, ``inception_score``, ``inception_score_std`` and the
    image counts ``n_samples``, ``n_reference``."""
    fidelity = require_torch_fidelity()
    weights = check_inception_weights(weights)
    fake, real = fidelity_images(samples), fidelity_images(reference)
    if len(fake) < 2 or len(real) < 2:
        raise ValueError(f"FID needs at least 2 images on each side, got {len(fake)} samples and {len(real)} reference")
    metrics = fidelity.calculate_metrics(
        input1=_Images(fake),
        input2=_Images(real),
        fid=True,
        kid=True,
        isc=True,
        feature_extractor=FEATURE_EXTRACTOR,
        feature_extractor_weights_path=str(weights),
        kid_subsets=kid_subsets,
        kid_subset_size=min(1000, len(fake), len(real)),
        batch_size=batch_size,
        cuda=cuda,
        cache=False,
        datasets_download=False,
        verbose=False,
    )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "kid": float(metrics["kernel_inception_distance_mean"]),
        "kid_std": float(metrics["kernel_inception_distance_std"]),
        "inception_score": float(metrics["inception_score_mean"]),
        "inception_score_std": float(metrics["inception_score_std"]),
        "n_samples": len(fake),
        "n_reference": len(real),
    }
