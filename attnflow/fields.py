"""The ``[data]`` and ``[train]`` keys of a run configuration (a ``[model]`` key is declared by
its family's builder signature, see :mod:`attnflow.models.registry`).

Upper bounds on sizes are generous sanity limits (well above the papers' settings) that keep a
typo such as ``train.batch_size=640000`` from becoming an out-of-memory crash.
"""
from __future__ import annotations

from .device import DEVICE_PATTERN
from .precision import PRECISIONS
from .schema import Field

__all__ = ["section_fields", "section_defaults"]


def _dataset_names() -> tuple[str, ...]:
    from .data import dataset_names

    return tuple(dataset_names())


def _conditions() -> tuple[str, ...]:
    from .data.pairs import CONDITIONS

    return CONDITIONS


_SECTION_FIELDS: tuple[Field, ...] = (
    # -- [data] -------------------------------------------------------------------------------
    Field("data", "name", str, "dataset", choices=_dataset_names, default="digits"),
    Field("data", "root", str, "folder or file of the dataset; empty = its default place", default=""),
    Field("data", "n_bits", int, "reduce to 2**n_bits grey levels; 0 = keep the dataset's", lo=0, hi=8, default=0),
    Field("data", "train_on", str, "images trained on: train, or train+test (AttnFlow Tables 2-3; test bits/dim "
          "are then on seen images)", choices=("train", "train+test"), default="train"),
    Field("data", "test_images", int, "test images evaluated: at most the first N of the test split; 0 = all of them",
          lo=0, hi=10**9, default=0),
    # -- [train] ------------------------------------------------------------------------------
    Field("train", "steps", int, "optimizer steps", lo=1, hi=10**9, default=1000),
    Field("train", "batch_size", int, "images per step", lo=1, hi=2**16, default=64),
    Field("train", "optimizer", str, "optimizer (sgd: plain steps, runs compare to float tolerance)",
          choices=("adam", "adamax", "sgd"), default="adam"),
    Field("train", "lr", float, "learning rate", lo=0.0, lo_open=True, hi=1e6, default=1e-3),
    Field("train", "weight_decay", float, "weight decay", lo=0.0, hi=1e3, default=0.0),
    Field("train", "warmup_steps", int, "linear learning-rate warm-up; 0 = off", lo=0, hi=10**9, default=100),
    Field("train", "grad_clip", float, "max global gradient norm; 0 = off", lo=0.0, default=100.0),
    Field("train", "ema_decay", float, "EMA of the weights for evaluation; 0 = off", lo=0.0, hi=1.0, hi_open=True,
          default=0.0),
    Field("train", "seed", int, "random seed", lo=0, hi=2**63 - 1, default=0),
    Field("train", "checkpoint_every", int, "steps between checkpoints", lo=1, hi=10**9, default=200),
    Field("train", "log_every", int, "steps between metric lines", lo=1, hi=10**9, default=10),
    Field("train", "eval_every", int, "steps between test evaluations; 0 = only at the end", lo=0, hi=10**9,
          default=0),
    Field("train", "eval_batches", int, "batches per evaluation during training; 0 = whole test set", lo=0,
          hi=10**9, default=0),
    Field("train", "max_bad_steps", int, "consecutive non-finite steps before a rollback to the checkpoint",
          lo=1, hi=10**6, default=5),
    Field("train", "max_rollbacks", int, "rollbacks before training stops as diverged", lo=0, hi=1000, default=5),
    Field("train", "rollback_lr_factor", float, "learning-rate factor at each rollback", lo=0.0, hi=1.0,
          lo_open=True, hi_open=True, default=0.5),
    Field("train", "device", str, "device to train on; auto = CUDA when available", pattern=DEVICE_PATTERN,
          pattern_text="auto, cpu, cuda, cuda:N", default="auto"),
    Field("train", "precision", str, "training autocast of the coupling / dense inner networks; log-dets, priors, "
          "Lipschitz layers and inverses stay float32", choices=tuple(PRECISIONS), default="fp32"),
    Field("train", "threads", int, "torch CPU threads; 0 = torch's default", lo=0, hi=1024, default=0),
    Field("train", "time_limit_s", float, "seconds of training steps before stopping; 0 = no limit", lo=0.0,
          default=0.0),
    Field("train", "compile", bool, "torch.compile the training forward (minutes of compilation first; falls back "
          "to eager with one warning when a part cannot compile)", default=False),
    Field("train", "clock", str, "what train.time_limit_s counts: wall = elapsed seconds; cpu = this process's CPU "
          "seconds (equal compute for runs sharing a machine)", choices=("wall", "cpu"), default="wall"),
    # conditional flows (srflow, fullglow) and their paired data
    Field("data", "condition", str, "condition image paired with each image: lowres (super-resolution), "
          "labelmap (label-to-image toy), paired (folder-pairs sources); none = unconditional",
          choices=_conditions, default="none"),
    Field("data", "scale", int, "downscaling factor of data.condition=lowres", lo=2, hi=64, default=2),
    Field("data", "pad", int, "zero-pad the images to pad x pad; 0 = no padding", lo=0, hi=4096, default=0),
)


def section_fields(section: str) -> dict[str, Field]:
    """The fields of the ``[data]`` or ``[train]`` section by key."""
    return {f.key: f for f in _SECTION_FIELDS if f.section == section}


def section_defaults(section: str) -> dict[str, object]:
    """Defaults of the ``[data]`` or ``[train]`` section."""
    return {k: f.default for k, f in section_fields(section).items()}


for _f in _SECTION_FIELDS:  # a default that its own field refuses is a bug, found at import
    _f.check(_f.default)
