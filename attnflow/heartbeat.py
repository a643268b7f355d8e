"""A line on stderr every few seconds while a long step runs that has no progress bar of its own
(sampling by a fixed-point inverse, Inception features, an experiment's evaluation), so that a
slow command on a loaded machine does not look hung."""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EVERY_S", "heartbeat"]

#: seconds between two lines
EVERY_S = 5.0


@contextmanager
def heartbeat(what: str, enabled: bool = True, every: float = EVERY_S) -> Iterator[None]:
    """While the ``with`` block runs, print ``"{what}: still working, N s"`` on stderr every
    ``every`` seconds (nothing when ``enabled`` is false or the block is quicker)."""
    if not enabled:
        yield
        return
    start, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while not done.wait(every):
            print(f"{what}: still working, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
