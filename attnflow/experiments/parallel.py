"""Training runs in child processes, at most ``--jobs`` at once (``attnflow experiment --jobs N``).

Each run trains in its own ``python -m attnflow.cli train --quiet ...`` process, so a crash, an
out-of-memory kill or a diverging run ends that process only; its stdout and stderr go to the run
directory's ``train.log`` (appended to, after a ``$ attnflow train ...`` line), and a failed run's
error is the last line its process wrote there.

Signals: the children run in their own process group, so a terminal's Ctrl-C reaches the
experiment alone, which sends the first SIGINT / SIGTERM it receives on to every running child
once: each stops at its next step boundary with a checkpoint (``attnflow train`` exits with 130 /
143), no further run starts, and rerunning the experiment resumes them. A second signal is sent
on too and stops the children at once (each keeps its last checkpoint). A child that stops on a
signal the experiment did not receive counts as failed (it resumes when the experiment is rerun).
An experiment killed outright (SIGKILL) cannot forward anything: each child is given the
experiment's pid (:data:`attnflow.train.signals.PARENT_PID_ENV`) and, once orphaned, stops at its
next step boundary with a checkpoint as if it had received SIGTERM.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..train.signals import PARENT_PID_ENV, StopRequests

__all__ = ["ChildRun", "run_children", "child_threads", "INTERRUPTED"]

#: Exit statuses of ``attnflow train`` stopped by SIGINT / SIGTERM at a step boundary.
INTERRUPTED = (130, 143)
_POLL_S = 0.2
_ERROR_PREFIX = "attnflow train: error: "


def child_threads(jobs: int) -> int:
    """``train.threads`` of each of ``jobs`` runs sharing this process's CPUs:
    ``max(1, cpus // jobs)`` (``cpus``: the CPUs this process may run on)."""
    from ..device import available_cpus

    return max(1, available_cpus() // jobs)


@dataclass
class ChildRun:
    """One ``attnflow ARGV...`` process writing into ``log``."""

    argv: list[str]
    log: Path

    def start(self) -> tuple[subprocess.Popen, int]:
        """Start the process; returns it and the log's size before its output."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"$ attnflow {shlex.join(self.argv)}\n".encode())
            offset = log.tell()
            proc = subprocess.Popen([sys.executable, "-m", "attnflow.cli", *self.argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0,
                                    env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
        return proc, offset

    def error(self, status: int, offset: int) -> str:
        """A failed process's message: the last line it wrote (without ``attnflow train``'s
        error prefix), or its exit status when it wrote nothing."""
        with open(self.log, "rb") as log:
            log.seek(offset)
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        if status > 0 and lines:
            return lines[-1].removeprefix(_ERROR_PREFIX)
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        return how + (f"; its last line: {lines[-1]}" if lines else "")


def run_children(runs: Sequence[ChildRun], jobs: int, started: Callable[[int], None],
                 finished: Callable[[int, str], None]) -> list[int]:
    """Run ``runs`` at most ``jobs`` at a time, in order. ``started(i)`` is called as run ``i``
    starts, ``finished(i, error)`` as it ends (``error`` empty on success). Returns the indices
    of the runs stopped by a SIGINT / SIGTERM the experiment received (empty when none came);
    runs not started then are not started."""
    waiting = list(range(len(runs)))
    running: dict[int, tuple[subprocess.Popen, int]] = {}
    stopped: list[int] = []
    forwarded = False
    try:
        with StopRequests() as stop:
            while running or (waiting and stop.signal is None):
                while waiting and len(running) < jobs and stop.signal is None:
                    i = waiting.pop(0)
                    running[i] = runs[i].start()
                    started(i)
                if stop.signal is not None and not forwarded:
                    for proc, _ in running.values():
                        proc.send_signal(stop.signal)
                    forwarded = True
                for i, (proc, offset) in list(running.items()):
                    status = proc.poll()
                    if status is None:
                        continue
                    del running[i]
                    if forwarded and status in INTERRUPTED:
                        stopped.append(i)
                    else:
                        finished(i, "" if status == 0 else runs[i].error(status, offset))
                time.sleep(_POLL_S)
    finally:  # a second signal (KeyboardInterrupt) or an error here: stop the children, keep their checkpoints
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in running.values():
            proc.wait()
    return stopped
