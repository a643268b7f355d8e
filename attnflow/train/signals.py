"""Stop requests: SIGINT (Ctrl-C) and SIGTERM end training at the next step boundary.

Inside :class:`StopRequests` the first SIGINT or SIGTERM only sets :attr:`StopRequests.signal`;
the training loop checks it between steps, writes a checkpoint of a whole step and returns, so a
resumed run ends exactly where an uninterrupted one does. A second signal raises
:class:`KeyboardInterrupt` at once (for a step that never ends); the checkpoint on disk is then the
last one written, never the state of a half-done step. Outside the main thread (where Python
cannot install handlers) nothing is installed, and a signal the process ignores (SIGINT of a
job started in the background by a script) stays ignored.

:func:`stop_with_parent` makes a training process that ``attnflow experiment --jobs N`` started
receive SIGTERM when the experiment dies, even by SIGKILL (Linux), so it stops at a step boundary
with a checkpoint instead of training on unattended.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from types import FrameType

__all__ = ["StopRequests", "stop_with_parent", "PARENT_PID_ENV"]

#: Environment variable holding the pid of the process whose death should stop this one.
PARENT_PID_ENV = "ATTNFLOW_STOP_WITH_PARENT"
_PR_SET_PDEATHSIG = 1

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Context manager installing the SIGINT / SIGTERM handlers; the previous handlers come back
    on exit. :attr:`signal` is the number of the first signal received, or ``None``."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signal = signum

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


def stop_with_parent() -> bool:
    """When :data:`PARENT_PID_ENV` names this process's parent, ask the kernel for SIGTERM on the
    parent's death (``prctl(PR_SET_PDEATHSIG)``, Linux only); a parent already gone sends it at
    once. Returns whether the request was made (``False``: no variable, not Linux)."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != int(parent):  # the parent died before the request
        os.kill(os.getpid(), signal.SIGTERM)
    return True
