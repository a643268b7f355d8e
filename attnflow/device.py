"""Where a model runs: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or
``"cuda:N"``, the values of ``train.device`` and of the CLI's ``--device``."""
from __future__ import annotations

import functools
import os
import re

import torch
from torch import nn

__all__ = ["DEVICE_PATTERN", "DeviceUnavailable", "resolve_device", "module_device", "module_dtype", "available_cpus",
           "auto_threads", "set_threads"]

#: The accepted device names (``train.device`` and ``--device``).
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


class DeviceUnavailable(ValueError):
    """A device was requested that this machine does not have (or a name that is no device)."""


def resolve_device(name: str, fallback_hint: str = "use --device cpu") -> torch.device:
    """The :class:`torch.device` for ``name`` (``"auto"``: ``cuda`` when
    ``torch.cuda.is_available()``, else ``cpu``), or a one-line :class:`DeviceUnavailable` naming
    the problem and ending with ``fallback_hint``."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise DeviceUnavailable(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"{name} requested but torch.cuda.is_available() is False; {fallback_hint}")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceUnavailable(f"{name} requested but only {count} CUDA device(s) are visible; {fallback_hint}")
    return device


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def auto_threads() -> int:
    """CPU threads for this process when none are set (``train.threads = 0``, ``--threads 0``):
    the CPUs it may run on less those busy with other work (the one-minute load average, rounded),
    at least 1; decided once per process, so every model in it computes alike. Torch's default
    (a thread per core) is 13-50x slower on a machine whose cores other jobs keep busy: its
    threads wait for each other."""
    cpus = available_cpus()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, cpus - busy)


def set_threads(threads: int) -> int:
    """Use ``threads`` CPU threads (0: :func:`auto_threads`); returns the number set."""
    threads = threads or auto_threads()
    torch.set_num_threads(threads)
    return threads


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (the CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (float32 for a module without
    one): the dtype its inputs must have."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32
