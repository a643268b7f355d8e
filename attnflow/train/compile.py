"""``train.compile = true``: the training step's model forward compiled with ``torch.compile``.

:class:`CompiledForward` wraps a forward function (the trainer's: the model's loss,
:meth:`attnflow.core.Flow.loss`) in ``torch.compile`` with the default inductor backend and static
shapes (``dynamic=False``: a training batch keeps its shape, and inductor's dynamic-shape code
failed on the Flow++, mARFlow and DenseFlow coupling networks here, torch 2.13). The
first calls compile (minutes on a CPU; then again for each new input shape), later ones reuse the
compiled code. The backward graph is compiled during the forward call that builds it
(``force_non_lazy_backward_lowering``), so a part of the model that cannot be compiled fails inside
the wrapper, not later in ``loss.backward()``; the wrapper then warns once, naming that part (the
innermost source line of the model that dynamo reports, or the failing operator), and calls the
eager function from then on. Exceptions that are not compiler failures (a bad input, say)
propagate unchanged. Parts dynamo cannot trace (data-dependent Python control flow, ``.item()``)
are not failures: dynamo runs them eagerly between compiled graphs.

Results equal eager execution to float tolerance (inductor fuses and reorders floating-point
operations); random draws inside a compiled graph (stochastic log-det estimators) come from
inductor's generator, not the eager stream, so such models are equal in distribution only.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo.exc
import torch._functorch.config

__all__ = ["CompiledForward"]

_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _failing_part(exc: BaseException) -> str:
    """Where a compile failure happened: the innermost ``File ..., line ..., in ...`` frame of the
    model's code that dynamo or inductor quotes (``from user code:``, a lowering error's node), else
    dynamo's innermost user frame, else the first line of the underlying error (the failing operator
    or backend)."""
    inner = getattr(exc, "inner_exception", None)
    text = f"{exc}\n{inner}" if inner is not None else str(exc)
    frames = _USER_FRAME.findall(text.split("from user code:", 1)[-1])
    frame = getattr(exc, "innermost_user_frame_summary", None)
    if frames:
        path, line, function = frames[-1]
    elif frame is not None:
        path, line, function = frame.filename, str(frame.lineno), frame.name
    else:
        first = (f"{type(inner).__name__}: {inner}" if inner is not None else str(exc)).strip().splitlines()
        return first[0][:200] if first else type(exc).__name__
    short = path.split("/attnflow/", 1)[-1] if "/attnflow/" in path else path
    return f"{function} ({short}:{line})"


class CompiledForward:
    """``fn`` compiled with ``torch.compile``; on a compiler failure one warning naming the failing
    part of ``what`` and eager calls from then on (module docstring). ``backend``: ``torch.compile``'s."""

    def __init__(self, fn: Callable[..., Any], what: str, backend: str | Callable[..., Any] = "inductor") -> None:
        self.eager = fn
        self.compiled = torch.compile(fn, backend=backend, dynamic=False)
        self.what = what
        self.failure: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is None:
            try:
                with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                    return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:
                self.failure = _failing_part(exc)
                warnings.warn(
                    f"train.compile: torch.compile of {self.what} failed in {self.failure} "
                    f"({type(exc).__name__}); training with the eager model instead (set train.compile = false "
                    "to skip the attempt)", RuntimeWarning, stacklevel=2)
        return self.eager(*args, **kwargs)

