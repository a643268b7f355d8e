"""The ``attnflow`` command, one module per command group, each registering its sub-parser and
running it:

=================  ==========================================================================
module             commands
=================  ==========================================================================
presets.py         ``presets``: the named configurations
train.py           ``train``: a preset (or a resumed run) into a run directory
evaluate.py        ``eval`` (bits/dim, accuracy, conditional metrics), ``certify`` (Lipschitz
                   certificates), ``compare`` (runs side by side), ``fid`` (FID, KID, IS)
images.py          ``sample``, ``reconstruct``, ``interpolate``, ``perturb``, ``sr``
experiment.py      ``experiment``: the papers' experiments (``--list``)
__main__.py        ``python -m attnflow.cli``
common.py          the numeric options (:data:`OPTIONS`), ``--device``, loading a run,
                   :class:`CommandFailed`
=================  ==========================================================================

Every command but ``presets`` takes ``--threads``; ``attnflow --version`` prints the versions.
Every error a user can cause is one line on stderr naming the problem and the fix, with exit
status 2 (:data:`USER_ERRORS`); a result that cannot be trusted exits 1 (:class:`CommandFailed`);
numeric options are checked by the configuration schema's :class:`~attnflow.schema.Field`
(:data:`OPTIONS`), like configuration values.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..device import set_threads
from . import evaluate, experiment, images, presets, train
from .common import OPTIONS, CommandFailed, number
from .train import (
    FAR_WORSE_BITS,
    _check_trained as _check_trained,  # re-exported: tests call it
)

__all__ = ["main", "build_parser", "OPTIONS", "USER_ERRORS", "CommandFailed", "FAR_WORSE_BITS"]

#: the command groups, in the order of ``attnflow --help``
GROUPS = (presets, train, evaluate, images, experiment)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): the problem, then where to read more."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")



def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = _Parser(prog="attnflow", description="Normalizing flows with attention on images.")
    p.add_argument("--version", action="version", version=f"attnflow {__version__} (torch {torch.__version__})")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    for name, command in sub.choices.items():
        if name not in ("train", "presets"):  # train's --threads sets train.threads
            number(command, "--threads", "threads", 0)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..evaluate.fidelity import FidelityUnavailable
    from ..flows.residual_block import InverseDidNotConverge
    from ..train import CheckpointError, NonFiniteTraining
    from ..train.runlock import RunLocked

    return (ValueError, FileNotFoundError, FileExistsError, CheckpointError, NonFiniteTraining, RunLocked,
            InverseDidNotConverge, NotADirectoryError, PermissionError, IsADirectoryError, FidelityUnavailable)


USER_ERRORS = _user_errors()


#: Commands whose ``--out`` is a folder, and those whose ``--out`` is one image file.
FOLDER_OUT = ("train", "sr", "experiment")


IMAGE_OUT = ("sample", "reconstruct", "interpolate", "compare", "perturb")


def _expand_paths(args: argparse.Namespace) -> None:
    """``~`` and environment variables in the path arguments, as a shell would expand them."""
    for name in ("out", "run", "input", "inception_weights"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expandvars(os.path.expanduser(value)))
    if isinstance(getattr(args, "runs", None), list):
        args.runs = [os.path.expandvars(os.path.expanduser(r)) for r in args.runs]


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` of the right kind, its folder created: a folder for runs and experiments, an
    image file name with a known extension for image commands."""
    out = getattr(args, "out", None)
    if not out:
        return
    path = Path(out)
    if args.command in FOLDER_OUT and path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (new, or a run/experiment folder to continue)")
    if args.command in IMAGE_OUT:
        from PIL import Image

        known = sorted(e for e, f in Image.registered_extensions().items() if f in Image.SAVE)
        if path.is_dir() or path.suffix.lower() not in known:
            raise ValueError(f"--out {out} must be an image file name ending in .png (or another image extension: "
                             f"{', '.join(e for e in known if e in ('.jpg', '.bmp', '.tif', '.webp'))})")
        path.parent.mkdir(parents=True, exist_ok=True)


def _os_error(command: str, exc: OSError) -> str:
    """A file-system error in one line: what failed, on which file, and what to do."""
    if exc.strerror is None:  # raised with a message of its own
        return str(exc)
    text = f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    if exc.errno == errno.ENOSPC:
        resume = "; the last checkpoint is intact: continue with `attnflow train --resume`" * (command == "train")
        return f"{text}: the disk is full; free space and rerun{resume}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{text}: cannot write there; choose a writable --out"
    return text


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # as given: the command an experiment's report records
    try:
        _expand_paths(args)
        _check_out(args)
        if args.command == "train" and args.threads is not None:
            args.set.append(f"train.threads={args.threads}")
        elif args.command != "presets":
            set_threads(args.threads)
        args.func(args)
    except CommandFailed as exc:
        _fail(args.command, exc, exc.status)
    except OSError as exc:  # file-system errors, and the library's own FileNotFoundError messages
        _fail(args.command, _os_error(args.command, exc), 2)
    except USER_ERRORS as exc:
        _fail(args.command, exc, 2)
    except KeyboardInterrupt:
        _fail(args.command, "interrupted", 130)


def _fail(command: str, exc: BaseException | str, status: int) -> None:
    """Print the error in one line and exit with ``status``. Under ``torchrun`` a user error
    (status 2: every process reads the same command line) is printed by rank 0 alone."""
    message = " ".join(str(exc).split()) or type(exc).__name__  # always one line
    if status != 2 or os.environ.get("RANK", "0") == "0":
        print(f"attnflow {command}: error: {message}", file=sys.stderr)
    sys.exit(status)
