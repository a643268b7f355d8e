"""Stop requests: SIGINT (Ctrl-C) and SIGTERM end training at the next step boundary.

Inside :class:`StopRequests` the first SIGINT or SIGTERM only sets :attr:`StopRequests.signal`;
the training loop checks it between steps, writes a checkpoint of a whole step and returns, so a
resumed run ends exactly where an uninterrupted one does. A second signal raises
:class:`KeyboardInterrupt` at once (for a step that never ends); the checkpoint on disk is then the
last one written, never the state of a half-done step. Outside the main thread (where Python
cannot install handlers) nothing is installed, and a signal the process ignores (SIGINT of a
job started in the background by a script) stays ignored.

A training process that ``attnflow experiment --jobs N`` started (its parent's pid in
:data:`PARENT_PID_ENV`) treats the experiment's death, even by SIGKILL, as a SIGTERM: it stops at
its next step boundary with a checkpoint instead of training on unattended. It watches its parent
pid between steps rather than asking the kernel for a parent-death signal, which comes again each
time an orphan's new parent thread exits and would count as the second, stop-at-once signal.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["StopRequests", "PARENT_PID_ENV"]

#: Environment variable holding the pid of the process whose death should stop this one.
PARENT_PID_ENV = "ATTNFLOW_STOP_WITH_PARENT"

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Context manager installing the SIGINT / SIGTERM handlers; the previous handlers come back
    on exit. :attr:`signal` is the number of the first signal received, or ``None``.

    In a process whose environment names its parent in :data:`PARENT_PID_ENV` (a training run of
    ``attnflow experiment --jobs N``), the parent's death counts as a SIGTERM: :attr:`signal`
    becomes ``SIGTERM`` once this process has been handed to another parent (the experiment was
    killed outright, e.g. by SIGKILL, and could not forward a signal)."""

    def __init__(self) -> None:
        self._signal: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        parent = os.environ.get(PARENT_PID_ENV)
        self._parent = int(parent) if parent else None

    @property
    def signal(self) -> int | None:
        if self._signal is None and self._parent is not None and os.getppid() != self._parent:
            self._signal = signal.SIGTERM
        return self._signal

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self._signal = signum

    @property
    def name(self) -> str | None:
        """``"SIGINT"`` / ``"SIGTERM"`` once a signal came, else ``None``."""
        return None if self.signal is None else signal.Signals(self.signal).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a background job stays ignored
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
