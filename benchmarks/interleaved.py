"""Shared part of ``attention_cost.py`` and ``compile_step.py``: training steps of presets timed
interleaved in one process, and a profile of where one step's time goes.

A step is the trainer's (``attnflow.train.trainer``): the model's log-likelihood of a fixed batch
in [0, 1] as bits/dim, backward, gradient clipping and an Adam update. Interleaving (each round
runs one step of every configuration, the order reversed every other round) shares the machine's
load fairly between the configurations, so their ratios mean something on a loaded machine even
when the absolute times do not. Times are this process's CPU seconds (the clock of the equal
compute table, ``train.clock = cpu``) and wall seconds.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from attnflow.config import resolve_config
from attnflow.evaluate import log_prob_to_bits_per_dim
from attnflow.models import build_from_config
from attnflow.train.compile import CompiledForward

__all__ = ["TrainStep", "interleaved", "profile_steps", "timing_parser"]


class TrainStep:
    """One training step of ``preset`` (with ``overrides``) on a fixed random batch; with
    ``compile`` the forward runs through :class:`attnflow.train.compile.CompiledForward`, as with the
    trainer's ``train.compile = true``."""

    def __init__(self, preset: str, overrides: list[str] = (), batch_size: int = 0, compile: bool = False,
                 seed: int = 0, device: str = "cpu") -> None:
        torch.manual_seed(seed)
        cfg = resolve_config(preset, list(overrides))
        self.name = preset + "".join(f" {o}" for o in overrides)
        self.model = build_from_config(cfg["model"]).to(device)
        shape = (batch_size or cfg["train"]["batch_size"], *self.model.shape)
        self.batch = (torch.rand(shape) * 0.98 + 0.01).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.forward = CompiledForward(self.model.log_prob, self.name) if compile else self.model.log_prob
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.model.train()

    def __call__(self) -> float:
        """One step; returns the loss (a host synchronisation, so wall times include GPU work)."""
        loss = log_prob_to_bits_per_dim(self.forward(self.batch), self.model.dim, 256).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 100.0)
        self.optimizer.step()
        return float(loss.detach())


def interleaved(steps: list[Callable[[], object]], rounds: int, warmup: int) -> list[dict[str, float]]:
    """Median CPU and wall seconds per call of each of ``steps``, timed over ``rounds`` rounds after
    ``warmup`` untimed ones (every round calls each step once; odd rounds in reverse order)."""
    cpu: list[list[float]] = [[] for _ in steps]
    wall: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + rounds):
        order = range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            c0, w0 = time.process_time(), time.perf_counter()
            steps[i]()
            if r >= warmup:
                cpu[i].append(time.process_time() - c0)
                wall[i].append(time.perf_counter() - w0)
    return [{"cpu_s": statistics.median(c), "wall_s": statistics.median(w)} for c, w in zip(cpu, wall)]


def _op_times(step: Callable[[], object]) -> dict[str, float]:
    """Self CPU milliseconds of each operator in one call of ``step`` (``torch.profiler``)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages() if e.self_cpu_time_total > 0}


def profile_steps(steps: list[Callable[[], object]], calls: int = 5) -> list[dict[str, float]]:
    """Median self CPU milliseconds per call of every operator, for each of ``steps``, profiled one
    call at a time and interleaved as :func:`interleaved` times them (so load shifts hit each
    alike)."""
    samples: list[list[dict[str, float]]] = [[] for _ in steps]
    for r in range(calls):
        for i in range(len(steps)) if r % 2 == 0 else reversed(range(len(steps))):
            samples[i].append(_op_times(steps[i]))
    return [{op: statistics.median(call.get(op, 0.0) for call in calls_) for op in set().union(*calls_)}
            for calls_ in samples]


def timing_parser(doc: str, warmup: int) -> argparse.ArgumentParser:
    """A parser with the timing options both benchmarks share: rounds, warm-up rounds, batch size
    and CPU threads (one by default, as the equal-compute table trains)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (one step of each model per round)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    return p
