"""What the command modules share: the numeric options (:data:`OPTIONS`, checked by the
configuration schema's :class:`~attnflow.schema.Field` like configuration values), ``--device``,
loading a run, and :class:`CommandFailed`."""
from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from ..schema import Field

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..core import Flow
    from ..data import ImageDataset

__all__ = ["OPTIONS", "CommandFailed", "load_model", "load_split", "number", "device_option"]


def _option(key: str, kind: type, help: str, lo: float, hi: float, lo_open: bool = False) -> Field:
    return Field("cli", key, kind, help, lo=lo, hi=hi, lo_open=lo_open)


# The CLI's numeric options, validated as configuration values are.
OPTIONS = {
    "n": _option("n", int, "number of images", lo=1, hi=10**6),
    "pairs": _option("pairs", int, "number of image pairs", lo=1, hi=10**5),
    "steps": _option("steps", int, "images per interpolation, end points included", lo=2, hi=1000),
    "temperature": _option("temperature", float, "scale of the latent noise", lo=0.0, lo_open=True, hi=100.0),
    "batch_size": _option("batch_size", int, "images per batch", lo=1, hi=2**16),
    "max_batches": _option("max_batches", int, "batches to evaluate; 0 = the whole split", lo=0, hi=10**9),
    "importance_samples": _option("importance_samples", int, "noise draws; 0 = off", lo=0, hi=10**4),
    "seed": _option("seed", int, "random seed", lo=0, hi=2**63 - 1),
    "noise_std": _option("noise_std", float, "noise standard deviation", lo=0.0, hi=100.0),
    "tolerance": _option("tolerance", float, "largest per-pixel reconstruction error accepted", lo=0.0,
                         lo_open=True, hi=1.0),
    "temperatures": _option("temperatures", float, "latent temperatures; 0 = the mean output", lo=0.0, hi=100.0),
    "samples": _option("samples", int, "outputs per condition", lo=1, hi=1000),
    "sr_images": _option("sr_images", int, "test images for the super-resolution / translation metrics", lo=1,
                         hi=10**6),
    "budget": _option("budget", float, "minutes of training in all, split evenly over the runs", lo=0.0,
                      lo_open=True, hi=10**6),
    "seeds": _option("seeds", int, "seeds (training runs) per preset", lo=1, hi=1000),
    "heads": _option("heads", int, "attention head counts", lo=1, hi=256),
    "jobs": _option("jobs", int, "training runs at once, each in its own process", lo=1, hi=256),
    "importance_images": _option("importance_images", int, "test images; 0 = the whole test set", lo=0, hi=10**6),
    "test_images": _option("test_images", int, "test images; 0 = the whole test set", lo=0, hi=10**9),
    "search_images": _option("search_images", int, "test images", lo=0, hi=10**4),
    "threads": _option("threads", int, "CPU threads; 0 = the CPUs not busy with other work (load average), at least "
                       "1, as train.threads = 0", lo=0, hi=1024),
}


def _device_name(text: str) -> str:
    """argparse ``type=`` of ``--device``: the name's form is checked here, its availability when
    the command runs (:func:`attnflow.device.resolve_device`)."""
    from ..device import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"must be one of: auto, cpu, cuda, cuda:N, got {text!r}")
    return text


def number(parser: argparse.ArgumentParser, flag: str, option: str, default: object, help: str | None = None, *,
           nargs: int | str | None = None, action: str = "store", dest: str | None = None,
           metavar: str | None = None) -> None:
    """An option checked by ``OPTIONS[option]``; its help gives the valid values; the keywords
    are argparse's (their defaults are argparse's too)."""
    field = OPTIONS[option]
    text = f"{help or field.help}: {field.describe()} (default {default})"
    parser.add_argument(flag, type=field.argparse_type(), default=default, help=text, nargs=nargs, action=action,
                        dest=dest, metavar=metavar)


def device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``, default ``cpu``: a command's numbers and inverse verdicts are then the
    same on every machine (CUDA's TF32 convolutions would change them in the 3rd digit);
    ``auto`` or ``cuda`` opt into the GPU."""
    parser.add_argument("--device", type=_device_name, default="cpu",
                        help="device to run on: auto (CUDA when available), cpu, cuda or cuda:N (default cpu)")


def load_model(args: argparse.Namespace) -> tuple[Flow, RunConfig]:
    """The trained model of ``args.run`` on ``args.device`` (its EMA weights when kept, unless
    ``--weights live``) and its configuration."""
    from ..device import resolve_device
    from ..train import load_run

    return load_run(args.run, use_ema=getattr(args, "weights", "ema") == "ema", device=resolve_device(args.device))


def load_split(cfg: RunConfig, split: str) -> ImageDataset:
    """The ``split`` of a run's dataset."""
    from ..data import load_configured

    return load_configured(cfg.data, split)


class CommandFailed(RuntimeError):
    """The command ran but its result cannot be trusted (non-finite samples, a wrong inverse):
    exit status ``status`` (1; 130 for an interrupted experiment)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
