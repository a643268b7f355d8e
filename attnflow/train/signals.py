"""Stop requests: SIGINT (Ctrl-C) and SIGTERM end training at the next step boundary.

Inside :class:`StopRequests` the first SIGINT or SIGTERM only sets :attr:`StopRequests.signal`;
the training loop checks it between steps, writes a checkpoint of a whole step and returns, so a
resumed run ends exactly where an uninterrupted one does. A second signal raises
:class:`KeyboardInterrupt` at once (for a step that never ends); the checkpoint on disk is then the
last one written, never the state of a half-done step. Outside the main thread (where Python
cannot install handlers) nothing is installed, and a signal the process ignores (SIGINT of a
job started in the background by a script) stays ignored.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["StopRequests"]

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
