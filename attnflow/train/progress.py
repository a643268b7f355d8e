"""The training loop's progress bar (tqdm): steps toward ``train.steps``, or, when
``train.time_limit_s`` is set, training seconds toward that limit with the step in the postfix;
and :func:`note`, a line on stderr beside the bar.

A time-limited run (the experiments set ``train.steps`` to 10^8 so that the limit ends them)
would otherwise show ``4/100000000`` steps and an ETA of years; its bar instead fills as the
training seconds (``train.clock``: elapsed or CPU, evaluation excluded) approach the limit. When
``train.steps`` ends such a run first, its bar stops short of the limit.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["TrainingBar", "note"]


def note(message: str) -> None:
    """A line on stderr (with the progress bar), not mixed into the command's results on stdout."""
    tqdm.write(message, file=sys.stderr)


class TrainingBar:
    """The bar of a run at ``step`` after ``seconds`` of training, toward ``steps`` or, when
    ``time_limit_s > 0``, toward ``time_limit_s`` seconds; :meth:`update` moves it to a new
    step and training time (also backwards, after a rollback)."""

    def __init__(self, steps: int, time_limit_s: float, step: int, seconds: float, disable: bool) -> None:
        self.by_time = time_limit_s > 0
        self.step = step
        self.postfix: dict[str, Any] = {}
        if self.by_time:
            self.bar = tqdm(total=time_limit_s, initial=min(seconds, time_limit_s), unit="s", disable=disable,
                            dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of training "
                                       "[{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=steps, initial=step, unit="step", disable=disable, dynamic_ncols=True)
        self._show()

    def update(self, step: int, seconds: float) -> None:
        self.step = step
        if self.by_time:
            self._show()
            self.bar.update(min(seconds, self.bar.total) - self.bar.n)
        else:
            self.bar.update(step - self.bar.n)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the bar (e.g. ``bpd``), kept until replaced."""
        self.postfix = values
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix({"step": self.step, **self.postfix} if self.by_time else self.postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
