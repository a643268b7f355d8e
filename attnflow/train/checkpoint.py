"""Checkpoints: written atomically, loaded without executing code, never non-finite.

A run directory holds ``config.json`` (the resolved configuration), ``checkpoint.pt`` (model,
optimizer, EMA, RNG states and data position; read with ``torch.load(weights_only=True)``) and
``model.safetensors`` (the evaluation weights alone, for sharing).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import Flow

__all__ = ["CHECKPOINT", "CONFIG", "WEIGHTS", "atomic_write", "save_checkpoint", "load_checkpoint", "load_run", "CheckpointError"]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


#: Free bytes below which a failed write is reported as a full disk.
FULL_DISK_BYTES = 16 * 2**20


class CheckpointError(RuntimeError):
    """A checkpoint or run directory that cannot be used."""


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same folder), so a
    crash never leaves a half-written file at ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if not isinstance(exc, OSError) and shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
            # writers such as torch.save report a full disk in their own words ("unexpected pos ...")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (whose ``"model"`` entry is a state dict). Refuses to write
    non-finite model weights: a checkpoint is always one that training can resume from."""
    if not _all_finite(state["model"]):
        raise CheckpointError("refusing to write a checkpoint with non-finite weights")
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (no code execution) with a clear error if it is missing or corrupt.
    Its tensors are placed on ``map_location`` whatever device they were saved from, so a run
    trained on a GPU loads on a CPU-only machine (and the other way round)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first with `attnflow train --out {path.parent}`")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        # torch's own message suggests weights_only=False, which would run a hostile file's code:
        # name only the kind of failure.
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not an attnflow checkpoint (it does not load as plain "
            f"tensors: {type(exc).__name__}); delete it and train again, or point to another run"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not an attnflow checkpoint (missing model/step entries)")
    return state


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's parameters and buffers as safetensors (atomically)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_run(
    run_dir: str | os.PathLike, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[Flow, dict[str, Any]]:
    """The trained model of a run directory (EMA weights when the run kept them) in eval mode on
    ``device`` (the checkpoint is mapped there, whatever device it was saved from), and its
    configuration."""
    from ..models import build_from_config

    from ..config import read_config

    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG}); train with `attnflow train --out {run_dir}`")
    cfg = read_config(cfg_path)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    model = build_from_config(cfg["model"]).to(device)
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {run_dir / CHECKPOINT} does not match {cfg_path} ({first}); restore the run's own config.json"
        ) from None
    model.eval()
    return model, cfg
