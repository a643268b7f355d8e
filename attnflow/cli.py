"""The ``attnflow`` command: presets, train, eval, sample, reconstruct."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["main"]


def _cmd_presets(args: argparse.Namespace) -> None:
    from .config import _preset_dir, preset_names

    for name in preset_names():
        lines = (_preset_dir() / f"{name}.toml").read_text().splitlines()
        header = []  # the leading comment block is the preset's description
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# ").strip())
        print(f"{name:32s} {' '.join(header)}")


def _cmd_train(args: argparse.Namespace) -> None:
    from .config import resolve_config
    from .train import Trainer

    cfg = resolve_config(args.preset, args.set)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
    result = trainer.run()
    if "interrupted_at" in result:
        sys.exit(130)
    test = result["test"]
    kind = "upper bound on " if test["upper_bound"] else ""
    print(
        f"test {kind}bits/dim: {test['bpd']:.4f} ± {test['bpd_stderr']:.4f} "
        f"({test['n']} images, {result['levels']} levels) after {result['step']} steps"
    )
    print(f"wrote {args.out}/samples.png, {args.out}/loss.png, {args.out}/results.json")


def _load_split(cfg: dict, split: str):
    from .data import load_dataset

    data = cfg["data"]
    return load_dataset(data["name"], split, root=data["root"] or None, n_bits=data["n_bits"] or None)


def _cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_bits_per_dim
    from .evaluate.importance import importance_weighted_bits_per_dim
    from .train import load_run

    torch.manual_seed(args.seed)
    model, cfg = load_run(args.run)
    data = _load_split(cfg, args.split)
    res = evaluate_bits_per_dim(model, data.images, data.levels, batch_size=args.batch_size,
                                seed=args.seed, max_batches=args.max_batches, progress=not args.json)
    res.update({"split": args.split, "dataset": cfg["data"]["name"], "levels": data.levels})
    if res["upper_bound"] and args.importance_samples > 0:
        iw = importance_weighted_bits_per_dim(model, data.images, data.levels, args.importance_samples,
                                              batch_size=args.batch_size, seed=args.seed, max_batches=args.max_batches)
        res["importance_weighted"] = iw
    if args.json:
        print(json.dumps(res))
        return
    kind = " (upper bound: negative ELBO)" if res["upper_bound"] else ""
    print(f"{args.split} bits/dim{kind}: {res['bpd']:.4f} ± {res['bpd_stderr']:.4f} over {res['n']} images")
    if "importance_weighted" in res:
        iw = res["importance_weighted"]
        print(f"{args.split} bits/dim, importance-weighted with k={iw['k']}: {iw['bpd']:.4f} ± {iw['bpd_stderr']:.4f}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from .evaluate import save_image_grid
    from .train import load_run

    model, _ = load_run(args.run)
    gen = torch.Generator().manual_seed(args.seed)
    x = model.sample(args.n, temperature=args.temperature, generator=gen)
    save_image_grid(x, args.out)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {args.out}")


def _run_and_images(args: argparse.Namespace, n: int):
    """The trained model of ``args.run``, the first ``n`` images of ``args.split`` in [0, 1] and
    the data's number of levels."""
    from .data import to_float
    from .train import load_run

    model, cfg = load_run(args.run)
    data = _load_split(cfg, args.split)
    if n > len(data.images):
        raise ValueError(f"{n} images asked for; the {args.split} split has {len(data.images)}")
    return model, to_float(data.images[:n], data.levels), data.levels


def _cmd_reconstruct(args: argparse.Namespace) -> None:
    from .evaluate import save_image_grid

    model, x, _ = _run_and_images(args, args.n)
    with torch.no_grad():
        x_rec = model.decode(model.encode(x))
    err = float((x_rec - x).abs().max())
    save_image_grid(torch.cat([x, x_rec]), args.out, nrow=args.n)
    print(f"wrote real (top) vs reconstructed (bottom) to {args.out}; max reconstruction error {err:.3g}")


def _cmd_interpolate(args: argparse.Namespace) -> None:
    from .evaluate import interpolate, save_image_grid

    model, x, _ = _run_and_images(args, 2 * args.pairs)
    rows = interpolate(model, x[: args.pairs], x[args.pairs :], args.steps)
    save_image_grid(rows.flatten(0, 1), args.out, nrow=args.steps)
    print(f"wrote {args.pairs} interpolations of {args.steps} steps (latent space, end points are real images) to {args.out}")


def _cmd_perturb(args: argparse.Namespace) -> None:
    from .evaluate import noise_perturbation, save_image_grid

    model, x, levels = _run_and_images(args, args.n)
    rows, images = noise_perturbation(model, x, levels, args.sigmas, torch.Generator().manual_seed(args.seed))
    if args.out:
        shown = min(args.n, 8)
        save_image_grid(images[:, :, :shown].flatten(0, 2), args.out, nrow=shown)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'sigma':>8s}  {'bits/dim':>16s}  max reconstruction error")
    for r in rows:
        err = f"{r['max_reconstruction_error']:.3g}" if r["inverse_converged"] else "inverse did not converge"
        print(f"{r['sigma']:8.0e}  {r['bpd']:8.4f} ± {r['bpd_stderr']:.4f}  {err}")
    if args.out:
        print(f"wrote perturbed inputs and reconstructions (row pairs, one per sigma) to {args.out}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from .evaluate import plot_runs, run_summary

    rows = [run_summary(r) for r in args.runs]
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'run':28s} {'family':10s} {'steps':>6s} {'train s':>8s}  test bits/dim")
        for r in rows:
            bpd = "-" if r["test_bpd"] is None else f"{r['test_bpd']:.4f} ± {r['test_bpd_stderr']:.4f}"
            secs = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
            print(f"{Path(r['run']).name:28s} {r['family']:10s} {r['steps']:6d} {secs:>8s}  {bpd}")
    if args.out:
        plot_runs(args.runs, args.out)
        print(f"wrote test curves (by step and by training seconds) to {args.out}", file=sys.stderr if args.json else sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnflow", description="Normalizing flows with attention on images.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("presets", help="list the named configurations").set_defaults(func=_cmd_presets)

    t = sub.add_parser("train", help="train a preset into a run directory")
    t.add_argument("--preset", required=True, help="preset name (see `attnflow presets`)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset field, e.g. train.steps=500 (repeatable)")
    t.add_argument("--out", required=True, help="run directory (checkpoint, metrics, figures)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="bits/dim of a trained run")
    e.add_argument("run", help="run directory")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--max-batches", type=int, default=0, help="0 = the whole split")
    e.add_argument("--seed", type=int, default=0, help="dequantization seed")
    e.add_argument("--importance-samples", type=int, default=16, metavar="K",
                   help="for models whose likelihood is a bound (DenseFlow): also report the "
                        "importance-weighted estimate with K noise draws (0 = off)")
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("sample", help="write a grid of samples")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png")
    s.set_defaults(func=_cmd_sample)

    def image_command(name: str, help: str, func, out: str, out_help: str | None = None) -> argparse.ArgumentParser:
        """A subcommand on the images of a trained run: ``run``, ``--split`` and ``--out``."""
        c = sub.add_parser(name, help=help)
        c.add_argument("run")
        c.add_argument("--split", default="test", choices=["train", "test"])
        c.add_argument("--out", default=out, help=out_help)
        c.set_defaults(func=func)
        return c

    r = image_command("reconstruct", "real vs reconstructed test images", _cmd_reconstruct, "recon.png")
    r.add_argument("--n", type=int, default=8)

    i = image_command("interpolate", "latent interpolations between test images", _cmd_interpolate, "interpolations.png")
    i.add_argument("--pairs", type=int, default=4)
    i.add_argument("--steps", type=int, default=8)

    n = image_command("perturb", "noise-perturbation analysis: bits/dim and reconstructions of noisy test images",
                      _cmd_perturb, "", "PNG grid of the perturbed inputs and their reconstructions (first 8 images)")
    n.add_argument("--sigmas", type=float, nargs="+", default=[1e-5, 1e-3, 1e-2, 1e-1, 1.0])
    n.add_argument("--n", type=int, default=64, help="test images")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--json", action="store_true")

    c = sub.add_parser("compare", help="table and test curves of several runs")
    c.add_argument("runs", nargs="+", help="run directories")
    c.add_argument("--json", action="store_true", help="print one JSON list")
    c.add_argument("--out", default="", help="PNG of the test curves by step and by training seconds")
    c.set_defaults(func=_cmd_compare)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    from .train import CheckpointError

    args = build_parser().parse_args(argv)
    if getattr(args, "out", None) and args.command in ("sample", "reconstruct", "interpolate", "compare", "perturb"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as exc:
        print(f"attnflow {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
