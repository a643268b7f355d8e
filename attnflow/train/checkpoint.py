"""Checkpoints: written atomically, loaded without executing code, never non-finite.

A checkpoint holds the model, optimizer, EMA, RNG states and data position (read with
``torch.load(weights_only=True)``); the evaluation weights alone are saved as safetensors, for
sharing. Where they lie in a run directory: :class:`attnflow.rundir.RunDir`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..core import Flow
from ..rundir import RunDir, atomic_write

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "load_run", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint or run directory that cannot be used."""


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


def _read_weights(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` file, with a clear error for a corrupt one."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device=str(device))
    except Exception as exc:  # safetensors raises its own error types for a damaged header or body
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({type(exc).__name__}); restore it, or "
                              f"train the run again") from None


def load_run(
    run_dir: str | os.PathLike, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[Flow, RunConfig]:
    """The trained model of a run directory (EMA weights when the run kept them) in eval mode on
    ``device`` (the checkpoint is mapped there, whatever device it was saved from), and its
    configuration."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise CheckpointError(f"{run.not_a_run()}; train with `attnflow train --out {run.path}`")
    cfg = run.config()
    model = cfg.model.build().to(device)
    if not run.has_checkpoint() and run.weights.is_file():  # a shared run: its evaluation weights alone
        if not use_ema and cfg.train.ema_decay > 0:
            raise CheckpointError(f"{run.path} has no {run.checkpoint.name}, only {run.weights.name} (its EMA "
                                  f"weights): evaluate those (without --weights live)")
        weights = _read_weights(run.weights, device)
    else:
        state = load_checkpoint(run.checkpoint, map_location=device)
        weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {run.checkpoint} does not match {run.config_path} ({first}); restore the run's own "
            f"{run.config_path.name}"
        ) from None
    model.eval()
    return model, cfg
