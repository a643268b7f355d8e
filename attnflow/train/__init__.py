"""Training: the Trainer loop, its end-of-run report and safe checkpoints.

==============  ==========================================================================
file            holds
==============  ==========================================================================
trainer.py      ``Trainer`` (set-up, loop, rollback, exact resume)
ema.py          ``ExponentialMovingAverage``: the bias-corrected EMA of the weights for evaluation
report.py       the end-of-run report: weights, test evaluation, samples, certificates, plots
checkpoint.py   atomic, finite checkpoints loaded without executing code; ``load_run``
runlock.py      ``RunLock``: one training at a time per run directory
contraction.py  ``ContractionMonitor``: certified ``Lip(g)`` of every residual block at every step
distributed.py  DistributedDataParallel under ``torchrun``
compile.py      ``CompiledForward`` of ``train.compile`` (torch.compile, eager fallback)
progress.py     the progress bar and lines beside it
signals.py      SIGINT / SIGTERM stop the loop at a step boundary
==============  ==========================================================================

The run directory's files and formats: :mod:`attnflow.rundir`.
"""
from .checkpoint import CheckpointError, load_checkpoint, load_run, save_checkpoint
from .ema import ExponentialMovingAverage
from .trainer import NonFiniteTraining, Trainer

__all__ = [
    "Trainer",
    "ExponentialMovingAverage",
    "NonFiniteTraining",
    "CheckpointError",
    "load_checkpoint",
    "load_run",
    "save_checkpoint",
]
