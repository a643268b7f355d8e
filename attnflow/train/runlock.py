"""One training at a time per run directory.

:class:`RunLock` holds an exclusive ``fcntl.flock`` on the run directory's lock file
(:attr:`attnflow.rundir.RunDir.lock`) while a training writes to the directory; a second training
refuses with an error naming the holder (its pid, host and start time, written into the lock
file). The kernel releases the lock when the holder exits, even when it is killed, so a lock never
goes stale; a lock file left behind holds no lock.

While it holds the lock the trainer also removes the temporary files that an interrupted atomic
write left behind (:meth:`attnflow.rundir.RunDir.remove_stale_temporaries`).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time

from ..rundir import RunDir

__all__ = ["RunLock", "RunLocked"]


class RunLocked(RuntimeError):
    """Another process is training into the run directory."""


class RunLock:
    """Exclusive lock of a run directory (created if needed), released by :meth:`release`, when
    the object is collected, or when the process ends."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self._fd: int | None = None
        self.path = RunDir(run_dir).lock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by {holder}; wait for that training to end or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"attnflow train (pid {os.getpid()} on {socket.gethostname()}, since {stamp})".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()

