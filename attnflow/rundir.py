"""The run directory of ``attnflow train``: the one module that knows its file names and formats.

=====================  ==========================================================================
file                   holds
=====================  ==========================================================================
``config.json``        the resolved configuration (written atomically at the start, and again
                       when a resume changes ``train.*`` settings)
``metrics.jsonl``      one JSON object per line: logged steps, test evaluations and events
                       (skipped steps, rollbacks, resumes); appended to
``checkpoint.pt``      model, optimizer, EMA, RNG states and data position
                       (:mod:`attnflow.train.checkpoint`)
``model.safetensors``  the evaluation weights alone, for sharing
``results.json``       the final report: test evaluation, samples, certificates
                       (:mod:`attnflow.train.report`)
``samples.png``        the sample grid (a conditional model's comparison grid)
``loss.png``           training and test bits/dim curves
``train.log``          an experiment's log of the run's training process or of its error
``.lock``              the lock of the training that writes the directory
                       (:mod:`attnflow.train.runlock`)
=====================  ==========================================================================

Two runs have the same *set-up* when their ``[model]`` and ``[data]`` sections are equal: a run
may be resumed, or reused by an experiment, with other ``[train]`` settings only.

Files are replaced atomically (:func:`atomic_write`: a temporary ``.<name>.*.tmp`` renamed onto
the file), so a crash never leaves half a file; :meth:`RunDir.remove_stale_temporaries` deletes
the temporaries an interrupted write left.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["RunDir", "atomic_write", "read_metrics", "setup_changes", "SETUP_SECTIONS", "CONFIG", "METRICS",
           "RESULTS", "CHECKPOINT", "WEIGHTS", "SAMPLES", "CURVES", "LOG", "LOCK"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
SAMPLES = "samples.png"
CURVES = "loss.png"
LOG = "train.log"
LOCK = ".lock"
#: The configuration sections that make a run's set-up; only ``[train]`` may differ between two
#: runs with the same set-up.
SETUP_SECTIONS = ("model", "data")
#: Free bytes below which a failed write is reported as a full disk.
FULL_DISK_BYTES = 16 * 2**20


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same folder), so a
    crash never leaves a half-written file at ``path``. A write that fails with the disk (nearly)
    full is an ``OSError`` with ``errno.ENOSPC`` naming ``path``, whatever the writer raised
    (``torch.save`` says "unexpected pos ...")."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if not isinstance(exc, OSError) and shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def setup_changes(saved: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """The set-up sections (:data:`SETUP_SECTIONS`) in which configuration ``cfg`` differs from
    ``saved``; empty when the two runs have the same set-up."""
    return [s for s in SETUP_SECTIONS if saved.get(s) != cfg[s]]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines metrics file (blank lines skipped); a line that is not JSON is a
    ``ValueError`` naming the file and the line."""
    return [row for _, row in _metric_lines(Path(path))]


def _metric_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, row)`` for each non-blank line of ``path``."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number} is not JSON ({exc.msg}); delete that line or train a new "
                             "run") from None
    return rows


class RunDir:
    """The files of one run directory (``path``, which need not exist yet)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- where the files are -------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def curves(self) -> Path:
        return self.path / CURVES

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def is_run(self) -> bool:
        """Whether the directory holds a run (its configuration)."""
        return self.config_path.is_file()

    def not_a_run(self) -> str:
        """The start of the error for a directory that holds no run."""
        return f"{self.path} is not a run directory (no {CONFIG})"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def is_finished(self) -> bool:
        """Whether the run has ended and written its report."""
        return self.results_path.is_file()

    # -- config.json -----------------------------------------------------------------------------
    def config(self) -> RunConfig:
        """The saved configuration completed with today's defaults and validated
        (:meth:`attnflow.config.RunConfig.read`); a missing, unreadable or invalid file is a
        :class:`~attnflow.schema.ConfigError` naming it."""
        from .config import RunConfig

        return RunConfig.read(self.config_path)

    def saved_config(self) -> dict[str, Any]:
        """The configuration as it was saved (keys a run saved before they existed are absent);
        a missing or unreadable file is a :class:`~attnflow.schema.ConfigError` naming it
        (:func:`attnflow.config.read_saved_config`)."""
        from .config import read_saved_config

        return read_saved_config(self.config_path)

    def write_config(self, cfg: RunConfig | Mapping[str, Any]) -> None:
        """Save ``cfg`` (checked; a :class:`~attnflow.config.RunConfig` or its JSON form) as JSON,
        atomically; the directory is created if needed."""
        from .config import RunConfig

        text = json.dumps(RunConfig.of(cfg).to_dict(), indent=2)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config_path, lambda tmp: Path(tmp).write_text(text))

    def setup_changes(self, cfg: Mapping[str, Any]) -> list[str]:
        """:func:`setup_changes` from the saved configuration, completed with today's defaults (a
        run saved before a key existed still matches when the key's default is what ``cfg``
        holds) to ``cfg``; empty for the same set-up."""
        return setup_changes(self.config(), cfg)

    # -- metrics.jsonl ---------------------------------------------------------------------------
    def metrics(self) -> list[dict[str, Any]]:
        """The logged rows, in order; a missing file is a ``FileNotFoundError``, a line that is
        not JSON a ``ValueError``, each naming the run."""
        if not self.metrics_path.is_file():
            raise FileNotFoundError(
                f"{self.path} has no {METRICS}; is it a run directory of `attnflow train`?")
        return read_metrics(self.metrics_path)

    def start_metrics(self) -> None:
        """An empty metrics file (a new run)."""
        self.metrics_path.write_text("")

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resume redoes them); the kept lines are kept
        as written."""
        if self.metrics_path.exists():
            kept = [line for line, row in _metric_lines(self.metrics_path) if row.get("step", 0) <= step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))

    # -- results.json ----------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """The report of a finished run."""
        return json.loads(self.results_path.read_text())

    def write_results(self, results: dict[str, Any]) -> None:
        text = json.dumps(results, indent=2)
        atomic_write(self.results_path, lambda tmp: Path(tmp).write_text(text))

    # -- temporaries -----------------------------------------------------------------------------
    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries of interrupted atomic writes (``.*.tmp``); call it only while
        holding the directory's lock. Returns the removed paths."""
        removed = []
        for path in self.path.glob(".*.tmp"):
            if path.is_file():
                path.unlink()
                removed.append(path)
        return removed
