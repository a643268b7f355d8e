"""Training: the Trainer loop and safe checkpoints; ``compile.py`` holds ``train.compile``'s
``CompiledForward`` (torch.compile with an eager fallback)."""
from .checkpoint import CheckpointError, load_checkpoint, load_run, save_checkpoint
from .trainer import ExponentialMovingAverage, NonFiniteTraining, Trainer

__all__ = [
    "Trainer",
    "ExponentialMovingAverage",
    "NonFiniteTraining",
    "CheckpointError",
    "load_checkpoint",
    "load_run",
    "save_checkpoint",
]
