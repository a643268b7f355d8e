"""The training loop: optimizer with warm-up and clipping, optional EMA, checkpoints and exact
resume, JSON-lines metrics, a progress bar, and recovery from non-finite steps.

Exact resume: the checkpoint holds the model, optimizer and EMA state, the global torch RNG
(stochastic log-det estimators draw from it), the dequantization generator and the data sampler's
position, so an interrupted run continued with ``resume=True`` ends with the same parameters as
an uninterrupted one. SIGINT / SIGTERM stop the loop at the next step boundary
(:mod:`attnflow.train.signals`), so an interrupted run is exact too.

Device: ``train.device`` (``auto``: CUDA when available) holds the model, optimizer and EMA state;
batches are drawn and dequantized on the CPU (the same data and noise whatever the device), on a
thread while the previous step runs (:mod:`attnflow.data.batches`), and moved once per step; each
metric line's ``data_wait_s`` is the mean seconds per step spent waiting for a batch. Checkpoints
load onto the CPU first (``map_location``) and then move to the run's device, so a run saved on one
device resumes or evaluates on another; the CUDA RNG state is saved too when training on CUDA.

Precision: ``train.precision = "bf16"`` runs the inner coupling / dense networks of the training
forward pass under bfloat16 autocast (:mod:`attnflow.precision`); evaluation stays float32.

Compilation: ``train.compile = true`` runs the training forward pass through ``torch.compile``
(:mod:`attnflow.train.compile`, eager fallback with one warning); evaluation stays eager (on a CPU
its second compilation, for inference, takes longer than the evaluation it would speed up).

Many processes: under ``torchrun`` the trainer trains with DistributedDataParallel
(:mod:`attnflow.train.distributed`): each process computes its rows of the global batch
``train.batch_size``, the result equals one process on that batch, and rank 0 alone writes the
run directory (the others wait at barriers). The checkpoint holds the global state only, so a run
resumes under any number of processes.

Reliability: one training at a time per run directory (:mod:`attnflow.train.runlock`); a step whose
loss, gradient or updated weights are not finite is skipped, ``max_bad_steps`` of them in a row
roll back to the last checkpoint with the learning rate scaled by ``rollback_lr_factor``, and after
``max_rollbacks`` rollbacks training stops with :class:`NonFiniteTraining` (the last good
checkpoint kept), so a diverging run ends instead of looping.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, RunConfig
from ..core import Batch, Flow
from ..data import BatchSampler, BatchStream, load_configured
from ..device import set_threads
from ..evaluate.likelihood import check_levels
from ..evaluate.superres import check_pairing
from ..models.hybrid import check_labels
from ..precision import mixed_precision
from ..rundir import RunDir, setup_changes
from ..sharding import batch_shard
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .compile import CompiledForward
from .contraction import ContractionMonitor
from .distributed import start as start_processes
from .ema import ExponentialMovingAverage
from .progress import TrainingBar, note
from .report import EndOfRun, evaluate_test, test_row
from .runlock import RunLock
from .signals import StopRequests

__all__ = ["Trainer", "NonFiniteTraining"]


class NonFiniteTraining(RuntimeError):
    """Training diverged: steps stayed non-finite through ``train.max_rollbacks`` rollbacks."""


#: Settings a resumed run cannot change: the order of its batches and its random draws follow them.
FIXED_ON_RESUME = ("batch_size", "seed")

#: What ``train.time_limit_s`` and ``train_seconds`` count. ``cpu`` is the CPU time of the whole
#: process (all its threads): runs that share a machine, each with ``train.threads=1``, then get
#: equal compute whatever else runs beside them.
TRAINING_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class _LogWindow:
    """The images trained and the seconds spent waiting for batches since the last metrics row."""

    def __init__(self, data_wait: float) -> None:
        self.start, self.images, self.data_wait = time.perf_counter(), 0, data_wait

    def rates(self, data_wait: float, batch_size: int) -> tuple[float, float]:
        """Images per second and mean seconds of waiting per step over the window (``data_wait``:
        the run's total wait so far); the next window starts now."""
        speed = self.images / (time.perf_counter() - self.start)
        wait = (data_wait - self.data_wait) * batch_size / self.images
        self.start, self.images, self.data_wait = time.perf_counter(), 0, data_wait
        return speed, wait


class Trainer:
    """Train the model of a run configuration (a :class:`~attnflow.config.RunConfig`, or its
    JSON form, which is checked like any other) into ``out_dir``.

    ``stop_at`` ends the loop after that step as an interruption (SIGINT, SIGTERM) would: a
    checkpoint is written and the run can be resumed. The run directory is locked from
    construction until :meth:`run` returns.
    """

    def __init__(self, cfg: RunConfig | dict[str, Any], out_dir: str | Path, resume: bool = False,
                 progress: bool = True) -> None:
        self.rundir = RunDir(out_dir)
        self.out = self.rundir.path
        cfg = RunConfig.of(cfg)  # a configuration built by hand is held to the same schema
        self.dist, self.device = start_processes(cfg.train.device)
        self.progress = progress and self.dist.is_main
        try:  # rank 0 writes the run directory: it alone holds the lock
            self.lock = RunLock(self.out) if self.dist.is_main else None  # before anything is read or written
            self._setup(cfg, resume)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if getattr(self, "batches", None) is not None:
            self.batches.close()
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()
        self.dist.close()

    def _note(self, message: str) -> None:
        if self.dist.is_main:
            note(message)

    def _setup(self, cfg: RunConfig, resume: bool) -> None:
        state: dict[str, Any] | None = None
        changed_train: dict[str, list[Any]] = {}
        if resume:
            state, changed_train = self._read_run(cfg)
        else:
            self._check_new()
        self.dist.barrier()  # every process has read the directory before rank 0 writes it
        self.cfg = cfg
        set_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self._load_data_and_model(cfg)
        self._build_training(cfg)
        self.data_wait = 0.0  # seconds the steps spent waiting for their batch
        self.step = 0
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.last_finite: tuple[int, float] | None = None  # (step, training bits/dim) of the last good step
        self.train_seconds = 0.0  # time spent in training steps (evaluation and checkpoints excluded)
        if state is None:
            self._start_run()
        else:
            self._continue_run(state, changed_train)

    def _check_new(self) -> None:
        """Before a new run: clear an interrupted write's temporaries; refuse a directory that
        holds a run."""
        self._remove_stale_temporaries()
        if self.rundir.checkpoint.exists():
            raise FileExistsError(f"{self.out} already holds a run; pass --resume to continue it or choose a new --out")

    def _read_run(self, cfg: RunConfig) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """The checkpoint of the run to resume, and the ``train.*`` settings that ``cfg`` changes
        (``{key: [saved, new]}``); its set-up and :data:`FIXED_ON_RESUME` must be the same."""
        self._remove_stale_temporaries()
        if not self.rundir.has_checkpoint():
            raise CheckpointError(f"cannot resume: no checkpoint at {self.rundir.checkpoint}; "
                                  "train without --resume first")
        state = load_checkpoint(self.rundir.checkpoint)
        saved = self.rundir.config()
        if changed := setup_changes(saved, cfg):
            raise ValueError(
                f"cannot resume {self.out} with a different {' and '.join(changed)} configuration; "
                "only train.* settings may change on resume"
            )
        for key in FIXED_ON_RESUME:
            if cfg.train[key] != saved.train[key]:
                raise ValueError(f"train.{key} cannot change on --resume (the run in {self.out} was trained with "
                                 f"{key} = {saved.train[key]}, and its batches and random draws follow it); resume "
                                 f"without changing it, or train a new run into another --out")
        changed_train = {f"train.{k}": [saved.train[k], v] for k, v in cfg.train.items() if saved.train[k] != v}
        return state, changed_train

    def _remove_stale_temporaries(self) -> None:
        for path in self.rundir.remove_stale_temporaries() if self.dist.is_main else ():
            note(f"removed {path}, left by an interrupted write")

    def _load_data_and_model(self, cfg: RunConfig) -> None:
        """The data splits and the model, checked against each other."""
        data = cfg.data
        self.train_set = load_configured(data, "train")
        self.test_set = load_configured(data, "test")
        self.model: Flow = cfg.model.build().to(self.device)
        if tuple(self.train_set.shape) != self.model.shape:
            raise ValueError(
                f"dataset {data.name!r} has images of shape {self.train_set.shape} but the model expects "
                f"{self.model.shape}; set model.shape={list(self.train_set.shape)}"
            )
        if tuple(self.test_set.shape) != tuple(self.train_set.shape):
            raise ValueError(
                f"the test split of dataset {data.name!r} has images of shape {list(self.test_set.shape)}"
                f"{_example_file(data, 'test')} but its train split {list(self.train_set.shape)}; give both splits "
                f"images of one size"
            )
        check_pairing(self.model, self.train_set)
        self.levels = self.train_set.levels
        check_levels(self.model, self.levels)
        for split in (self.train_set, self.test_set):
            check_labels(self.model, split.labels, data.name)
        if cfg.train.batch_size > len(self.train_set):
            raise ValueError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(self.train_set)} training "
                             "images")

    def _build_training(self, cfg: RunConfig) -> None:
        """Optimizer, EMA, the (parallel, compiled) forward pass, the batches and their noise."""
        t = cfg.train
        self.step_metrics: dict[str, float] = {}  # the last step's metrics of the model's loss (and the loss)
        self.dist.split(t.batch_size)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax, "sgd": torch.optim.SGD}[t.optimizer]
        self.optimizer = opt_cls(params, lr=t.lr, weight_decay=t.weight_decay)
        self.ema = ExponentialMovingAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.ddp = self.dist.data_parallel(self.model, self.device)  # None in one process
        forward = self.ddp if self.ddp is not None else self.model.loss
        self.forward = CompiledForward(forward, f"the {cfg.model.family} model") if t.compile else forward
        self.sampler = BatchSampler(len(self.train_set), t.batch_size, seed=t.seed)
        self.dequant_gen = torch.Generator().manual_seed(t.seed + 1)
        self.contraction = ContractionMonitor(self.model)  # certified Lip(g) of every block at every step
        self.skip_reason = ""
        # this process's rows of each batch, gathered and dequantized on a thread while a step runs
        self.batches = BatchStream(self.train_set, self.sampler, self.dequant_gen, self.dist.rows,
                                   pin_memory=self.device.type == "cuda")

    def _start_run(self) -> None:
        """A new run's configuration, empty metrics and step-0 checkpoint (the rollback point
        before any update)."""
        self._write_config()
        if self.dist.is_main:
            self.rundir.start_metrics()
        self.save()

    def _continue_run(self, state: dict[str, Any], changed_train: dict[str, list[Any]]) -> None:
        """Restore the checkpoint; drop the metric rows logged after it (they will be redone); record
        changed ``train.*`` settings."""
        self._restore(state)
        self.saved_step = self.step
        if self.dist.is_main:
            self.rundir.truncate_metrics(self.step)
        if changed_train:  # the run's record follows the settings it now trains with
            self._write_config()
            self._write_metrics({"step": self.step, "event": "resume", "changed": changed_train})
            self._note(f"resumed at step {self.step} with changed settings: {changed_train}")

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "train_seconds": self.train_seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict_for(self.model) if self.ema else {},
            "ema_shadow": self.ema.shadow if self.ema else {},
            "ema_updates": self.ema.updates if self.ema else 0,
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "dequant_rng": self.dequant_gen.get_state(),
            "contraction": self.contraction.state_dict(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state.get("ema_shadow"):
            self.ema.shadow = {k: v.to(self.device, copy=True) for k, v in state["ema_shadow"].items()}
            self.ema.updates = state.get("ema_updates", math.inf)
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.dequant_gen.set_state(state["dequant_rng"])
        self.contraction.load_state_dict(state.get("contraction", {}))
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = int(state["step"])
        self.lr_scale = float(state["lr_scale"])
        self.rollbacks = int(state.get("rollbacks", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def save(self) -> None:
        """Rank 0 writes the checkpoint; every process waits until it is on disk."""
        if self.dist.is_main:
            save_checkpoint(self.rundir.checkpoint, self.state())
        self.dist.barrier()
        self.saved_step = self.step

    def _write_config(self) -> None:
        if self.dist.is_main:
            self.rundir.write_config(self.cfg)

    def _write_metrics(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.rundir.append_metrics(row)

    # -- loop ------------------------------------------------------------------------------
    def _set_lr(self) -> float:
        t = self.cfg.train
        warm = min(1.0, (self.step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
        lr = t.lr * self.lr_scale * warm
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_step(self) -> tuple[float, float] | None:
        """One optimizer step; ``None`` when the loss or a gradient is not finite (no update), or
        when the update made a weight non-finite (the next steps fail until a rollback)."""
        t = self.cfg.train
        wait_start = time.perf_counter()
        batch = next(self.batches)  # this process's rows of the global batch, with the global batch's noise
        x = batch.x.to(self.device, non_blocking=True)
        context = None if batch.context is None else batch.context.to(self.device, non_blocking=True)
        labels = None if self.train_set.labels is None else self.train_set.labels[batch.index].to(self.device)
        self.data_wait += time.perf_counter() - wait_start
        self.model.train()
        with batch_shard(self.dist.shard()), mixed_precision(t.precision):
            loss, metrics = self.forward(Batch(x, self.levels, context, labels))  # the model's own objective
            if metrics:  # the global batch's means (each process holds an equal share), in one all-reduce
                means = self.dist.mean(torch.stack(list(metrics.values())))
                self.step_metrics = dict(zip(metrics, means.tolist()))
        global_loss = self.dist.mean(loss)  # the mean over the global batch, the same in every process
        if metrics:  # an objective other than bits/dim logs its value beside its bpd
            self.step_metrics["loss"] = float(global_loss)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        self.skip_reason = "non-finite loss, gradient or weights"
        if not torch.isfinite(global_loss):
            return None
        refusal, note = self.contraction.check(self.step + 1)  # the blocks as this forward pass used them
        if note:
            self._note(note)
        if self.dist.any(refusal is not None)[0]:  # every process skips together (the weights are shared)
            self.skip_reason = refusal or f"step {self.step + 1}: a block is not certified contractive; step refused"
            return None
        loss.backward()  # DistributedDataParallel averages the gradients over the processes
        clip = t.grad_clip if t.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.dist.any(not torch.isfinite(grad_norm))[0]:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        if self.dist.any(not torch.isfinite(torch.nn.utils.get_total_norm(params)))[0]:
            return None
        if self.ema:
            self.ema.update(self.model)
        return float(global_loss), float(grad_norm)

    def _rollback(self, lr: float) -> None:
        """Back to the last checkpoint with the learning rate scale multiplied by
        ``rollback_lr_factor``; the scale and the rollback count survive the reload (they are not
        taken from the checkpoint), so repeated rollbacks keep lowering the rate. After
        ``max_rollbacks`` rollbacks, :class:`NonFiniteTraining` ends the run instead."""
        t = self.cfg.train
        if self.rollbacks >= t.max_rollbacks:
            self._write_metrics({"step": self.step, "event": "diverged", "lr": lr})
            last = ("no finite loss yet" if self.last_finite is None
                    else f"last finite loss {self.last_finite[1]:.4g} bits/dim at step {self.last_finite[0]}")
            raise NonFiniteTraining(
                f"training diverged: the steps stayed refused ({self.skip_reason}) after {self.rollbacks} rollbacks "
                f"(learning rate {lr:.3g} at the last try, train.lr={t.lr:g}); {last}; "
                f"the checkpoint of step {self.saved_step} is kept: lower train.lr and continue with --resume"
            )
        lr_scale, rollbacks = self.lr_scale * t.rollback_lr_factor, self.rollbacks + 1
        self._restore(load_checkpoint(self.rundir.checkpoint))
        self.lr_scale, self.rollbacks = lr_scale, rollbacks
        self._note(f"rolled back to the checkpoint of step {self.step}; learning rate scaled to x{self.lr_scale:g}")
        self._write_metrics({"step": self.step, "event": "rollback", "lr_scale": self.lr_scale})

    def evaluate(self, max_batches: int = 0) -> dict[str, Any]:
        """Test bits/dim, and a hybrid model's test accuracy (EMA weights when kept)."""
        return evaluate_test(self.eval_model(), self.test_set, self.levels, max_batches)

    def eval_model(self) -> Flow:
        if not self.ema:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.ema.state_dict_for(self.model))
        return model

    def run(self, stop_at: int | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to ``train.steps``, or until ``train.time_limit_s`` seconds of training steps
        (evaluation excluded; elapsed or CPU seconds as ``train.clock`` says) have been spent,
        or to ``stop_at``; returns the final test evaluation, or
        ``{"interrupted_at": step}`` (and ``"signal"``) when stopped early by ``stop_at`` or by
        SIGINT / SIGTERM, after writing a checkpoint at that step boundary. Releases the run
        directory's lock when it returns."""
        try:
            with StopRequests() as stop:
                interrupted = self._loop(stop, stop_at, on_step)
            if interrupted is not None:
                return interrupted
            return self.finish() if self.dist.is_main else {"step": self.step}
        except KeyboardInterrupt:
            self._note(f"stopped at once; the checkpoint of step {self.saved_step} is kept — continue with --resume")
            raise
        finally:
            self._release()

    def _loop(self, stop: StopRequests, stop_at: int | None,
              on_step: Callable[[int], None] | None) -> dict[str, Any] | None:
        """The training steps; an interruption's result, or ``None`` once training is done."""
        t = self.cfg.train
        bad = 0
        bar = TrainingBar(t.steps, t.time_limit_s, self.step, self.train_seconds, disable=not self.progress)
        window = _LogWindow(self.data_wait)
        clock = TRAINING_CLOCKS[t.clock]
        try:
            while self.step < t.steps:
                stopping, out_of_time = self.dist.any(  # every process stops at the same step
                    stop.signal is not None or (stop_at is not None and self.step >= stop_at),
                    bool(t.time_limit_s) and self.train_seconds >= t.time_limit_s)
                if stopping:
                    return self._interrupt(stop)
                if out_of_time:
                    self._note(f"time limit of {t.time_limit_s:g} s of training reached at step {self.step}")
                    break
                lr = self._set_lr()
                step_start = clock()
                result = self._train_step()
                self.train_seconds += clock() - step_start
                if result is None:
                    bad = self._skipped(bad + 1, lr, bar)
                    continue
                bad = 0
                self._advance(*result, lr, bar, window)
                if on_step:
                    on_step(self.step)
            if self.dist.any(stop.signal is not None)[0]:
                return self._interrupt(stop)
        finally:
            bar.close()
        self.save()
        return None

    def _skipped(self, bad: int, lr: float, bar: TrainingBar) -> int:
        """Record the ``bad``-th refused step in a row; roll back after ``train.max_bad_steps`` of
        them. Returns the count of refused steps in a row that follows (0 after a rollback)."""
        t = self.cfg.train
        self._note(f"step {self.step + 1}: {self.skip_reason}, step skipped ({bad}/{t.max_bad_steps})")
        event = "skipped_non_finite" if self.skip_reason.startswith("non-finite") else "skipped_uncertified"
        self._write_metrics({"step": self.step + 1, "event": event})
        if bad < t.max_bad_steps:
            return bad
        self._rollback(lr)
        bar.update(self.step, self.train_seconds)
        return 0

    def _advance(self, loss: float, grad_norm: float, lr: float, bar: TrainingBar,
                 window: _LogWindow) -> None:
        """After a step taken: the bar, and the metrics row, test evaluation and checkpoint when due."""
        t = self.cfg.train
        self.step += 1
        window.images += t.batch_size
        bar.update(self.step, self.train_seconds)
        self.last_finite = (self.step, loss)
        if self.step % t.log_every == 0 or self.step == t.steps:
            speed, data_wait = window.rates(self.data_wait, t.batch_size)
            bar.set_postfix(bpd=f"{loss:.3f}", img_s=f"{speed:.0f}")
            self._write_metrics({"step": self.step, "bpd": loss, "lr": lr, "grad_norm": grad_norm,
                                 "images_per_s": speed, "train_s": round(self.train_seconds, 3),
                                 "data_wait_s": round(data_wait, 6), **self.step_metrics})
        if t.eval_every and self.step % t.eval_every == 0 and self.step < t.steps:
            ev = self.evaluate(t.eval_batches)
            self._write_metrics(test_row(self.step, ev, self.train_seconds))
        if self.step % t.checkpoint_every == 0:
            self.save()

    def _interrupt(self, stop: StopRequests) -> dict[str, Any]:
        """Checkpoint at this step boundary and the result of an interrupted run."""
        self.save()
        if stop.signal is None:
            return {"interrupted_at": self.step}
        self._note(f"{stop.name}: stopped at step {self.step}; checkpoint written — continue with --resume")
        return {"interrupted_at": self.step, "signal": stop.name}

    def finish(self) -> dict[str, Any]:
        """The end-of-run report of the evaluation weights (:mod:`attnflow.train.report`): weights,
        test evaluation, samples, certificates, ``results.json`` and plots."""
        end = EndOfRun(self.rundir, self.step, self.train_seconds, self.test_set, self.levels,
                       self.cfg.data, self.contraction)
        return end.write(self.eval_model(), progress=self.progress)


def _example_file(data: DataConfig, split: str) -> str:
    """`` (e.g. FILE)``: the first image file of a folder dataset's ``split``, or nothing."""
    from ..data.folder import IMAGE_SUFFIXES

    folder = Path(os.path.expandvars(os.path.expanduser(data.root))) / split
    if not data.root or not folder.is_dir():
        return ""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return f" (e.g. {files[0]})" if files else ""
