"""Super-resolution and translation metrics of conditional flows (SRFlow Sec. 4; AttnFlow
Table 4): PSNR and SSIM against the ground truth, LR-PSNR, sample diversity, per temperature,
with bicubic up-sampling as the baseline.

PSNR and SSIM come from torchmetrics (``data_range=1``; SSIM with its Gaussian window, shrunk to
the largest odd size that fits images smaller than 11 pixels, sigma scaled with it).
LR-PSNR (SRFlow's consistency measure) is the PSNR between the super-resolution downscaled with
the same bicubic kernel that made the input and the input itself: a perfectly consistent output
gets an unbounded value (``inf``); outputs are averaged in dB after capping each at 100 dB.
Diversity is the per-pixel standard deviation over the samples of one input, averaged over
pixels and inputs (0 at temperature 0).

LPIPS and FID are not computed: LPIPS needs ImageNet-pretrained AlexNet/VGG backbones that
torchmetrics fetches through torchvision from the network (no complete local-weights path), and
FID needs Inception weights (torch-fidelity); neither can be downloaded here, so both are
reported as unavailable rather than approximated.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core import Flow
from ..data.dataset import ImageDataset
from ..data.pairs import bicubic_downscale, bicubic_upscale, condition_batch
from ..device import module_device

__all__ = [
    "psnr", "ssim", "lr_psnr", "decode_at_temperature", "evaluate_conditional", "comparison_rows",
    "check_pairing", "sr_scale", "save_comparison_grid", "read_condition_image", "UNAVAILABLE", "PSNR_CAP_DB",
]

PSNR_CAP_DB = 100.0
UNAVAILABLE = {
    "lpips": "unavailable: needs ImageNet-pretrained AlexNet/VGG weights from the network (torchvision); "
             "torchmetrics accepts no complete local weights file",
    "fid": "not computed for conditional outputs (`attnflow fid` scores a run's unconditional samples with a local "
           "Inception weights file)",
}


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``[B, C, H, W]`` images in [0, 1] (``inf`` when identical)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(x.double(), y.double(), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM of ``[B, C, H, W]`` images in [0, 1] (torchmetrics, Gaussian window 11 and
    sigma 1.5, shrunk for images smaller than 11 pixels)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    side = min(x.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    if kernel < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {list(x.shape[-2:])}")
    return structural_similarity_index_measure(  # type: ignore[return-value]  # reduction="none": one tensor
        x.double(), y.double(), data_range=1.0, kernel_size=kernel, sigma=1.5 * kernel / 11, reduction="none"
    )


def lr_psnr(sr: Tensor, lr: Tensor, scale: int) -> Tensor:
    """SRFlow's LR-PSNR: ``PSNR(bicubic_downscale(sr, scale), lr)`` per image."""
    return psnr(bicubic_downscale(sr, scale), lr)


def decode_at_temperature(
    flow: Flow, context: Tensor, temperature: float, generator: torch.Generator | None = None
) -> Tensor:
    """One output per condition with latents ``z ~ N(0, temperature^2 I)``, clipped to [0, 1]
    (non-finite values, from an inverse that overflowed, become NaN rather than being clipped into
    range); ``temperature=0`` decodes ``z = 0``."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    draw_device = generator.device if generator is not None else context.device
    z = torch.randn(context.shape[0], flow.latent_dim, generator=generator, dtype=context.dtype, device=draw_device)
    z = z * temperature
    with torch.no_grad():
        x = flow.decode(z.to(context.device), context)
    return torch.where(torch.isfinite(x), x.clamp(0, 1), torch.full_like(x, float("nan")))


def _mean_db(values: Tensor) -> float:
    return float(values.clamp(max=PSNR_CAP_DB).mean())


@torch.no_grad()
def evaluate_conditional(
    flow: Flow,
    targets: Tensor,
    contexts: Tensor,
    temperatures: Sequence[float] = (0.0, 0.5, 0.8),
    samples: int = 3,
    scale: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """PSNR, SSIM, LR-PSNR (when ``scale`` says the condition is a bicubic low-resolution image)
    and diversity of ``samples`` outputs per condition at each temperature, averaged over the
    ``targets`` (float images in [0, 1]) and their ``contexts``; plus the bicubic baseline.

    Returns ``{"temperatures": {T: {"psnr", "ssim", "lr_psnr", "diversity", "non_finite"}},
    "bicubic": {...}, "n", "samples", "unavailable"}``; PSNR and SSIM average over all finite
    outputs, diversity over the conditions whose outputs are all finite, and ``non_finite`` counts
    the outputs that overflowed (an inverse that explodes far from the training data)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if len(targets) != len(contexts):
        raise ValueError(f"{len(targets)} targets but {len(contexts)} conditions; they must pair up")
    was_training = flow.training
    flow.eval()
    gen = torch.Generator().manual_seed(seed)
    device = module_device(flow)  # metrics are computed on the CPU, decoding on the model's device
    sums: dict[float, dict[str, list[Tensor]]] = {float(t): {} for t in temperatures}
    base: dict[str, list[Tensor]] = {}
    for start in range(0, len(targets), batch_size):
        hr, ctx = targets[start : start + batch_size], contexts[start : start + batch_size]
        for t in temperatures:
            on_model = ctx.to(device)
            outs = torch.stack([decode_at_temperature(flow, on_model, float(t), gen).cpu() for _ in range(samples)])
            flat = outs.flatten(0, 1)  # sample-major: row s * B + b is sample s of condition b
            ok = torch.isfinite(flat.flatten(1)).all(1)
            rows = sums[float(t)]
            rows.setdefault("non_finite", []).append((~ok).sum().reshape(1))
            ok_cond = ok.view(samples, -1).all(0)
            diversity = (outs[:, ok_cond].double().std(0, unbiased=False).flatten(1).mean(1) if samples > 1
                         else torch.zeros(int(ok_cond.sum()), dtype=torch.float64))
            rows.setdefault("diversity", []).append(diversity)
            if not ok.any():
                continue
            truth = hr.repeat(samples, 1, 1, 1)[ok]
            rows.setdefault("psnr", []).append(psnr(flat[ok], truth))
            rows.setdefault("ssim", []).append(ssim(flat[ok], truth))
            if scale:
                rows.setdefault("lr_psnr", []).append(lr_psnr(flat[ok], ctx.repeat(samples, 1, 1, 1)[ok], scale))
        if scale:
            up = bicubic_upscale(ctx, scale)
            base.setdefault("psnr", []).append(psnr(up, hr))
            base.setdefault("ssim", []).append(ssim(up, hr))
            base.setdefault("lr_psnr", []).append(lr_psnr(up, ctx, scale))
    flow.train(was_training)

    def summary(rows: dict[str, list[Tensor]]) -> dict[str, float]:
        out = {}
        for key, parts in rows.items():
            v = torch.cat(parts)
            out[key] = int(v.sum()) if key == "non_finite" else _mean_db(v) if "psnr" in key else float(v.mean())
        return out

    result: dict[str, Any] = {
        "n": len(targets),
        "samples": samples,
        "temperatures": {str(t): summary(rows) for t, rows in sums.items()},
        "unavailable": dict(UNAVAILABLE),
    }
    if scale:
        result["bicubic"] = summary(base)
    return result



def comparison_rows(context: Tensor, target: Tensor | None, outputs: Sequence[Tensor], scale: int | None) -> Tensor:
    """Images ``[rows * B, C, H, W]`` for a grid with one column per condition: the condition
    (a low-resolution input enlarged by pixel repetition, or a label map, shown in grey when its
    channels differ from the target's), the bicubic up-sampling (when ``scale``), each of
    ``outputs``, and the ``target`` when given."""
    channels, size = outputs[0].shape[1], outputs[0].shape[-2:]
    shown = context
    if scale:
        shown = context.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    if shown.shape[-2:] != size:
        shown = torch.nn.functional.interpolate(shown, size=tuple(size), mode="nearest")
    if shown.shape[1] != channels:
        shown = shown.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    rows = [shown] + ([bicubic_upscale(context, scale)] if scale else []) + list(outputs)
    if target is not None:
        rows.append(target)
    return torch.cat([r.to(outputs[0].dtype).clamp(0, 1) for r in rows])


def check_pairing(flow: Flow, dataset: ImageDataset) -> None:
    """A clear error when a conditional model gets unpaired data, an unconditional one paired
    data, or the condition images do not have the model's condition shape."""
    want, have = flow.context_shape, dataset.condition_shape
    if want is None and have is not None:
        raise ValueError(
            "the data has condition images (data.condition) but the model family is unconditional; "
            "set data.condition=\"none\" or use a conditional family (srflow, fullglow)"
        )
    if want is not None and have is None:
        raise ValueError(
            "the model is conditional but the data has no condition images; set data.condition "
            "(lowres for super-resolution, labelmap or paired for translation)"
        )
    if want is not None and have is not None and tuple(want) != tuple(have):
        raise ValueError(
            f"the model expects conditions of shape {list(want)} but the data gives {list(have)}; "
            f"match model.scale / model.source_shape to data.scale / data.condition"
        )


def sr_scale(data: Mapping[str, Any]) -> int | None:
    """The super-resolution factor of a ``[data]`` section (``None`` unless its condition is a
    bicubic low-resolution image)."""
    return int(data["scale"]) if data.get("condition") == "lowres" else None


def save_comparison_grid(
    flow: Flow,
    dataset: ImageDataset,
    path: str | os.PathLike,
    scale: int | None,
    temperatures: Sequence[float] = (0.0, 0.5, 0.8),
    n: int = 8,
    seed: int = 0,
) -> None:
    """PNG grid of the first ``n`` test conditions: condition, bicubic (super-resolution only),
    one output per temperature and the ground truth (:func:`comparison_rows`); an output that
    overflowed is shown black."""
    from ..data.dequantize import to_float
    from .images import save_image_grid

    n = min(n, len(dataset))
    ctx = condition_batch(dataset, slice(0, n))
    assert ctx is not None  # the conditional dataset a conditional model evaluates on (check_pairing)
    gen = torch.Generator().manual_seed(seed)
    on_model = ctx.to(module_device(flow))
    outputs = [decode_at_temperature(flow, on_model, t, gen).nan_to_num(0.0).cpu() for t in temperatures]
    rows = comparison_rows(ctx, to_float(dataset.images[:n], dataset.levels), outputs, scale)
    save_image_grid(rows, path, nrow=n)


def read_condition_image(path: str | os.PathLike, shape: Sequence[int]) -> Tensor:
    """A user's condition image (PNG / JPEG, 8-bit) as a ``[1, C, H, W]`` float batch of bin
    centres ``(k + 0.5) / 256``. What cannot be read faithfully is an error naming the expected
    input: more than 8 bits per channel, colour for a grey model or grey for a colour one (palette
    images are read as colour), a size other than ``shape``'s."""
    from PIL import Image

    c, h, w = shape
    if c not in (1, 3):
        raise ValueError(f"the model's condition has {c} channels; only grey (1) or RGB (3) images can be read")
    expected = f"an 8-bit {'grey' if c == 1 else 'RGB'} PNG or JPEG of {w}x{h} pixels"
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("I", "F") or mode.startswith("I;"):
                raise ValueError(f"{path} has more than 8 bits per channel (mode {mode}); the model reads {expected}")
            grey = mode in ("1", "L", "LA")
            if grey != (c == 1):
                kind = "grey" if grey else f"colour (mode {mode})"
                raise ValueError(f"{path} is a {kind} image; the model reads {expected}")
            pixels = img.convert("L" if c == 1 else "RGB")
            array = torch.from_numpy(np.asarray(pixels, dtype=np.uint8).copy())
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}; pass --input with {expected}") from None
    except OSError as exc:
        raise ValueError(f"{path} is not a readable image ({exc}); pass {expected}") from None
    array = array.reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    if tuple(array.shape[1:]) != (h, w):
        raise ValueError(f"{path} is {array.shape[2]}x{array.shape[1]} but the model super-resolves {w}x{h} inputs "
                         f"({expected}); resize or crop it")
    return (array.double() + 0.5).div(256).float().unsqueeze(0)
