"""``attnflow train``: a preset, a configuration file or a resumed run's saved configuration,
with ``--set`` applied, trained into a run directory; a broken run fails the command."""
from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, Any

from ..rundir import RunDir
from .common import OPTIONS, CommandFailed

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["register", "FAR_WORSE_BITS"]


def _train_config(args: argparse.Namespace) -> RunConfig:
    """The configuration to train with: the preset (or the configuration file) with ``--set``
    applied. On ``--resume``: the run's saved configuration with ``--set`` applied; a ``--preset``
    given then must match the run's set-up; a ``--config`` file given must match it too, and the
    ``[train]`` keys it sets replace the saved ones (it is how an experiment hands its runs their
    configuration)."""
    from ..config import RunConfig, read_config_file

    run = RunDir(args.out)
    if run.weights.is_file() and not run.has_checkpoint():
        raise ValueError(f"{args.out} holds a trained model ({run.weights.name}) without its {run.checkpoint.name}, "
                         f"so it cannot resume; evaluate it with `attnflow eval {args.out}`, or train into a new --out")
    tables = read_config_file(args.config) if args.config else None
    given = (RunConfig.from_tables(tables, args.config) if tables is not None else
             RunConfig.from_preset(args.preset) if args.preset else None)
    given = None if given is None else given.with_overrides(args.set)
    if not (args.resume and run.is_run()):
        if given is None:
            raise ValueError("give --preset NAME (see `attnflow presets`) or --config FILE, or --resume to continue "
                             "the run in --out")
        return given
    saved = run.config()
    if given is not None:
        what = f"--config {args.config}" if args.config else f"preset {args.preset!r}"
        if changed := run.setup_changes(given):
            raise ValueError(f"the run in {args.out} was not trained from {what} (its [{changed[0]}] differs); resume "
                             f"without {'--config' if args.config else '--preset'}: the run's own configuration is "
                             "used")
    resumed = saved.replace(train=tables["train"]) if tables is not None else saved
    return resumed.with_overrides(args.set)  # the trainer refuses what a resume cannot change


def _cmd_train(args: argparse.Namespace) -> None:
    from ..train import Trainer

    cfg = _train_config(args)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
    result = trainer.run()
    if "interrupted_at" in result:
        sys.exit(143 if result.get("signal") == "SIGTERM" else 130)
    if not trainer.dist.is_main:  # under torchrun rank 0 evaluates and reports
        return
    test = result["test"]
    kind = "upper bound on " if test["upper_bound"] else ""
    print(
        f"test {kind}bits/dim: {test['bpd']:.4f} ± {test['bpd_stderr']:.4f} "
        f"({test['n']} images, {result['levels']} levels) after {result['step']} steps"
    )
    if "accuracy" in test:
        print(f"test accuracy: {test['accuracy']:.4f} ± {test['accuracy_stderr']:.4f}")
    run = RunDir(args.out)
    written = [str(path) for path in (run.samples, run.curves, run.results_path) if path.is_file()]
    print(f"wrote {', '.join(written)}")
    _check_trained(result, run, cfg)


#: Test bits/dim more than this above the uniform model's ``log2(levels)`` mean training failed.
FAR_WORSE_BITS = 1.0


def _check_trained(result: dict[str, Any], run: RunDir, cfg: RunConfig) -> None:
    """A broken run is not a success: test bits/dim far above the uniform model's, or not one
    finite sample, fail the command (exit 1); the run directory stays as it is."""
    bpd, uniform = result["test"]["bpd"], math.log2(result["levels"])
    problems = []
    if not math.isfinite(bpd) or bpd > uniform + FAR_WORSE_BITS:
        problems.append(f"test bits/dim {bpd:.4f} are far worse than the uniform model's {uniform:.4f}")
    if not run.samples.is_file():
        problems.append(f"no sample is finite (no {run.samples.name})")
    if problems:
        raise CommandFailed(f"training failed: {'; '.join(problems)}. The run in {run.path} is kept; train again "
                            f"with a lower train.lr (now {cfg.train.lr:g}) into a new --out")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a preset into a run directory")
    given = t.add_mutually_exclusive_group()
    given.add_argument("--preset", help="preset name (see `attnflow presets`); with --resume not needed: the run's "
                       "saved configuration is used, with any --set applied")
    given.add_argument("--config", metavar="FILE", help="a configuration file instead of a preset: TOML with [model], "
                       "[data] and [train] tables, or a run's config.json")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset field, e.g. train.steps=500 (repeatable)")
    t.add_argument("--out", required=True, help="run directory (checkpoint, metrics, figures)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--threads", type=OPTIONS["threads"].argparse_type(), default=None,
                   help="sets train.threads (CPU threads; 0 = the CPUs not busy with other work); default: the "
                        "configuration's train.threads")
    t.set_defaults(func=_cmd_train)
