"""``attnflow experiment``: one of the papers' experiments into a directory (``--list`` describes them).
Its options become one typed :class:`~attnflow.experiments.ExperimentOptions` here; the report
records the command line as given (shell-quoted), which reruns the experiment: repeatable options
accumulate, so each value given is kept."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import CommandFailed, _device_name, number

__all__ = ["register"]


def _cmd_experiment(args: argparse.Namespace) -> None:
    from ..experiments import ExperimentOptions, listing, resolve_settings, run_experiment
    from ..experiments.plumbing import ExperimentFailed, ExperimentInterrupted
    from ..experiments.report import command_line

    if args.list:
        print("\n".join(listing(args.data)))
        return
    if not args.name or not args.out:
        raise ValueError("give an experiment NAME and --out DIR (or --list to see the experiments)")
    options = ExperimentOptions(
        args.name, Path(args.out), budget=args.budget, data=args.data, presets=tuple(args.preset), seeds=args.seeds,
        clock=args.clock, device=args.device, overrides=tuple(args.set),
        heads=None if args.heads is None else tuple(args.heads), runs=tuple(Path(r) for r in args.run),
        command=command_line(args.argv), progress=not args.quiet, jobs=args.jobs,
        importance_samples=args.importance_samples, importance_images=args.importance_images,
        test_images=args.test_images)
    try:
        run_experiment(resolve_settings(options))
    except ExperimentInterrupted as exc:
        raise CommandFailed(str(exc), status=130) from None
    except ExperimentFailed as exc:
        raise CommandFailed(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("experiment", help="run one of the papers' experiments into a directory: report.md, "
                                          "PNG figures, results.json (--list describes them)")
    x.add_argument("name", nargs="?", help="experiment name (see --list)")
    x.add_argument("--list", action="store_true", help="list the experiments with their default budgets and number "
                   "of runs on --data")
    x.add_argument("--out", help="experiment directory; rerunning into it reuses finished runs and resumes the others")
    number(x, "--budget", "budget", None, "minutes of training in all, split evenly over the runs (evaluation "
           "extra); default: the experiment's")
    x.add_argument("--data", default="fashion-mnist", choices=["digits", "fashion-mnist"],
                   help="digits (bundled 8x8) or fashion-mnist (default; dataset-fashion-mnist)")
    x.add_argument("--preset", nargs="+", action="extend", default=[], metavar="PRESET[+section.key=value...]",
                   help="run specifications replacing the experiment's defaults (repeatable)")
    number(x, "--seeds", "seeds", None, "seeds per preset; default: the experiment's")
    x.add_argument("--clock", default=None, choices=["wall", "cpu"],
                   help="what the budget counts: elapsed (wall) or each run's process CPU seconds (default wall; "
                        "cpu with --jobs > 1, so runs sharing the cores get equal compute)")
    number(x, "--jobs", "jobs", 1, "training runs at once; above 1 each in its own `attnflow train` process with "
           "train.threads = max(1, cpus // N) unless set, its output in its run directory's train.log")
    x.add_argument("--device", type=_device_name, default=None,
                   help="train and evaluate on auto, cpu, cuda or cuda:N (default: the presets' train.device, auto)")
    x.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override applied to every run whose model family uses the key (repeatable)")
    number(x, "--heads", "heads", None, "heads experiment: head counts for every base preset (repeatable)", nargs="+",
           action="extend")
    x.add_argument("--run", nargs="+", action="extend", default=[], metavar="DIR",
                   help="interpolation / samples: use these trained run directories instead of training (repeatable)")
    number(x, "--importance-samples", "importance_samples", None, "table: noise draws K of the importance-weighted "
           "bits/dim of rows whose bits/dim are a bound (0 = none; default 16)")
    number(x, "--importance-images", "importance_images", None, "table: the first N test images for the "
           "importance-weighted bits/dim (default 0, the whole test set)")
    number(x, "--test-images", "test_images", None, "each run's test bits/dim over at most the first N test "
           "images (0 = all; default: the experiment's, see --list)")
    x.add_argument("--quiet", action="store_true", help="no progress bars")
    x.set_defaults(func=_cmd_experiment)
