"""The ``attnflow`` command: presets, train, eval, sample, reconstruct, interpolate, perturb,
compare.

Every error a user can cause is one line on stderr naming the problem and the fix, with exit
status 2 (:data:`USER_ERRORS`); numeric options are checked by the configuration schema's
:class:`~attnflow.schema.Field` (:data:`OPTIONS`), like configuration values.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .device import module_device, set_threads
from .heartbeat import heartbeat
from .rundir import RunDir
from .schema import Field

if TYPE_CHECKING:
    from .core import Flow

__all__ = ["main", "OPTIONS", "USER_ERRORS"]


def _option(key: str, kind: type, help: str, **kw: object) -> Field:
    return Field("cli", key, kind, help, **kw)


# The CLI's numeric options, validated as configuration values are.
OPTIONS = {
    "n": _option("n", int, "number of images", lo=1, hi=10**6),
    "pairs": _option("pairs", int, "number of image pairs", lo=1, hi=10**5),
    "steps": _option("steps", int, "images per interpolation, end points included", lo=2, hi=1000),
    "temperature": _option("temperature", float, "scale of the latent noise", lo=0.0, lo_open=True, hi=100.0),
    "batch_size": _option("batch_size", int, "images per batch", lo=1, hi=2**16),
    "max_batches": _option("max_batches", int, "batches to evaluate; 0 = the whole split", lo=0, hi=10**9),
    "importance_samples": _option("importance_samples", int, "noise draws; 0 = off", lo=0, hi=10**4),
    "seed": _option("seed", int, "random seed", lo=0, hi=2**63 - 1),
    "noise_std": _option("noise_std", float, "noise standard deviation", lo=0.0, hi=100.0),
    "tolerance": _option("tolerance", float, "largest per-pixel reconstruction error accepted", lo=0.0,
                         lo_open=True, hi=1.0),
    "temperatures": _option("temperatures", float, "latent temperatures; 0 = the mean output", lo=0.0, hi=100.0),
    "samples": _option("samples", int, "outputs per condition", lo=1, hi=1000),
    "sr_images": _option("sr_images", int, "test images for the super-resolution / translation metrics", lo=1,
                         hi=10**6),
    "budget": _option("budget", float, "minutes of training in all, split evenly over the runs", lo=0.0,
                      lo_open=True, hi=10**6),
    "seeds": _option("seeds", int, "seeds (training runs) per preset", lo=1, hi=1000),
    "heads": _option("heads", int, "attention head counts", lo=1, hi=256),
    "jobs": _option("jobs", int, "training runs at once, each in its own process", lo=1, hi=256),
    "importance_images": _option("importance_images", int, "test images; 0 = the whole test set", lo=0, hi=10**6),
    "test_images": _option("test_images", int, "test images; 0 = the whole test set", lo=0, hi=10**9),
    "search_images": _option("search_images", int, "test images", lo=0, hi=10**4),
    "threads": _option("threads", int, "CPU threads; 0 = the CPUs not busy with other work (load average), at least "
                       "1, as train.threads = 0", lo=0, hi=1024),
}


def _device_name(text: str) -> str:
    """argparse ``type=`` of ``--device``: the name's form is checked here, its availability when
    the command runs (:func:`attnflow.device.resolve_device`)."""
    from .device import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"must be one of: auto, cpu, cuda, cuda:N, got {text!r}")
    return text


def _load(args: argparse.Namespace) -> tuple[Flow, dict[str, Any]]:
    """The trained model of ``args.run`` on ``args.device`` (its EMA weights when kept, unless
    ``--weights live``) and its configuration."""
    from .device import resolve_device
    from .train import load_run

    return load_run(args.run, use_ema=getattr(args, "weights", "ema") == "ema", device=resolve_device(args.device))


class CommandFailed(RuntimeError):
    """The command ran but its result cannot be trusted (non-finite samples, a wrong inverse);
    exit status 1."""


def _cmd_presets(args: argparse.Namespace) -> None:
    from .presets import preset_dir, preset_names

    for name in preset_names():
        lines = (preset_dir() / f"{name}.toml").read_text().splitlines()
        header = []  # the leading comment block is the preset's description
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# ").strip())
        print(f"{name:32s} {' '.join(header)}")


#: Settings a resumed run cannot change: the order of its batches and its random draws follow them.
FIXED_ON_RESUME = ("batch_size", "seed")


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration to train with: the preset with ``--set`` applied; on ``--resume`` the run's
    saved configuration with ``--set`` applied (a ``--preset`` given then must match the run)."""
    from .config import apply_overrides, resolve_config

    run = RunDir(args.out)
    if run.weights.is_file() and not run.has_checkpoint():
        raise ValueError(f"{args.out} holds a trained model ({run.weights.name}) without its {run.checkpoint.name}, "
                         f"so it cannot resume; evaluate it with `attnflow eval {args.out}`, or train into a new --out")
    if not (args.resume and run.is_run()):
        if not args.preset:
            raise ValueError("give --preset NAME (see `attnflow presets`), or --resume to continue the run in --out")
        return resolve_config(args.preset, args.set)
    saved = run.config()
    cfg = apply_overrides(saved, args.set)
    for key in FIXED_ON_RESUME:
        if cfg["train"][key] != saved["train"][key]:
            raise ValueError(f"train.{key} cannot change on --resume (the run in {args.out} was trained with "
                             f"{key} = {saved['train'][key]}, and its batches and random draws follow it); resume "
                             f"without changing it, or train a new run into another --out")
    if args.preset:
        preset = resolve_config(args.preset, args.set)
        for section in ("model", "data"):
            if preset[section] != cfg[section]:
                raise ValueError(f"the run in {args.out} was not trained from preset {args.preset!r} (its [{section}] "
                                 f"differs); resume without --preset: the run's own configuration is used")
    return cfg


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import Trainer

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


def _check_trained(result: dict[str, Any], run: RunDir, cfg: dict[str, Any]) -> None:
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
                            f"with a lower train.lr (now {cfg['train']['lr']:g}) into a new --out")


def _load_split(cfg: dict, split: str):
    from .data import load_configured

    return load_configured(cfg["data"], split)


def _print_conditional(res: dict) -> None:
    """The super-resolution / translation metrics of ``attnflow eval`` as a table."""
    rows = [(f"T={t}", m) for t, m in res["temperatures"].items()]
    rows += [("bicubic", res["bicubic"])] if "bicubic" in res else []  # super-resolution only
    keys = [k for k in ("psnr", "ssim", "lr_psnr", "diversity", "non_finite") if any(k in m for _, m in rows)]
    print(f"outputs vs ground truth over {res['n']} images, {res['samples']} per condition "
          f"(PSNR and LR-PSNR in dB, LR-PSNR capped at 100; non-finite outputs counted, not averaged):")
    print(f"{'':10s}" + "".join(f"{k:>11s}" for k in keys))
    for name, m in rows:
        print(f"{name:10s}" + "".join(f"{m[k]:11.4g}" if k in m else f"{'-':>11s}" for k in keys))
    for metric, why in res["unavailable"].items():
        print(f"{metric.upper()}: {why}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_bits_per_dim
    from .data import to_float
    from .data.pairs import condition_batch
    from .evaluate.certificates import certificate_summary, certify, uncertified_message
    from .evaluate.classification import evaluate_hybrid
    from .evaluate.importance import importance_weighted_bits_per_dim
    from .models.hybrid import HybridFlow
    from .evaluate.superres import evaluate_conditional, sr_scale

    torch.manual_seed(args.seed)
    model, cfg = _load(args)
    data = _load_split(cfg, args.split)
    contexts = condition_batch(data)
    if isinstance(model, HybridFlow):  # bits/dim and test accuracy from one pass
        res = evaluate_hybrid(model, data.images, data.labels, data.levels, batch_size=args.batch_size,
                              seed=args.seed, max_batches=args.max_batches, progress=not args.json)
    else:
        res = evaluate_bits_per_dim(model, data.images, data.levels, batch_size=args.batch_size,
                                    seed=args.seed, max_batches=args.max_batches, progress=not args.json,
                                    contexts=contexts)
    if contexts is not None:  # conditional bits/dim -log2 p(x | c) / D, then the output metrics
        k = min(args.sr_images, len(data))
        with heartbeat(f"attnflow eval: output metrics of {k} conditions"):
            res["conditional"] = evaluate_conditional(model, to_float(data.images[:k], data.levels), contexts[:k],
                                                      args.temperatures, args.samples, sr_scale(cfg["data"]),
                                                      seed=args.seed)
    weights = "ema" if args.weights == "ema" and cfg["train"]["ema_decay"] > 0 else "live"  # no EMA kept: live
    res.update({"split": args.split, "dataset": cfg["data"]["name"], "levels": data.levels, "weights": weights})
    report = certify(model)
    if report["blocks"]:  # contractive flows: are the trained blocks certified?
        res["certificates"] = certificate_summary(report)
        if message := uncertified_message(report):
            print(f"attnflow eval: {message}", file=sys.stderr)
    if res["upper_bound"] and args.importance_samples > 0:
        with heartbeat(f"attnflow eval: importance-weighted bits/dim, K = {args.importance_samples}"):
            iw = importance_weighted_bits_per_dim(model, data.images, data.levels, args.importance_samples,
                                                  batch_size=args.batch_size, seed=args.seed,
                                                  max_batches=args.max_batches)
        res["importance_weighted"] = iw
    if args.json:
        print(json.dumps(res))
        return
    kind = " (upper bound: negative ELBO)" if res["upper_bound"] else ""
    kind = " (conditional, -log2 p(x | condition) / D)" if contexts is not None else kind
    print(f"{args.split} bits/dim{kind}: {res['bpd']:.4f} ± {res['bpd_stderr']:.4f} over {res['n']} images")
    if "accuracy" in res:
        print(f"{args.split} accuracy: {res['accuracy']:.4f} ± {res['accuracy_stderr']:.4f} "
              f"(cross-entropy {res['cross_entropy']:.4f} nats)")
    if contexts is not None:
        _print_conditional(res["conditional"])
    if "importance_weighted" in res:
        iw = res["importance_weighted"]
        print(f"{args.split} bits/dim, importance-weighted with k={iw['k']}: {iw['bpd']:.4f} ± {iw['bpd_stderr']:.4f}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from .evaluate import finite_samples, save_image_grid

    model, cfg = _load(args)
    if model.context_shape is not None:  # conditional: several outputs for each of the first test conditions
        from .evaluate.superres import save_comparison_grid, sr_scale

        data = _load_split(cfg, "test")
        with heartbeat("attnflow sample: sampling"):
            save_comparison_grid(model, data, args.out, sr_scale(cfg["data"]), [args.temperature] * 4,
                                 n=min(args.n, 16), seed=args.seed)
        print(f"wrote condition, 4 outputs at temperature {args.temperature} and ground truth (rows) for "
              f"{min(args.n, 16)} test images to {args.out}")
        return
    gen = torch.Generator().manual_seed(args.seed)
    with heartbeat(f"attnflow sample: sampling {args.n} images"):
        x, non_finite = finite_samples(model, args.n, args.temperature, generator=gen)
    if len(x):
        save_image_grid(x, args.out)
        print(f"wrote {len(x)} samples at temperature {args.temperature} to {args.out}")
    if non_finite:
        shown = f"{args.out} holds the {len(x)} finite ones" if len(x) else "no grid written"
        raise CommandFailed(f"{non_finite} ({shown})")


def _cmd_fid(args: argparse.Namespace) -> None:
    from .data import to_float
    from .evaluate import finite_samples
    from .evaluate.fidelity import check_inception_weights, require_torch_fidelity, sample_quality

    require_torch_fidelity()  # both checks before the (long) sampling
    check_inception_weights(args.inception_weights)
    model, cfg = _load(args)
    if model.context_shape is not None:
        raise ValueError("attnflow fid scores unconditional samples; for conditional runs use attnflow eval")
    data = _load_split(cfg, args.split)
    with heartbeat(f"attnflow fid: sampling {args.n} images"):
        x, non_finite = finite_samples(model, args.n, args.temperature,
                                       generator=torch.Generator().manual_seed(args.seed))
    if non_finite:
        raise CommandFailed(f"{non_finite}; FID/KID/IS need {args.n} finite samples")
    reference = to_float(data.images[: args.n], data.levels)
    with heartbeat(f"attnflow fid: Inception features of {len(x)} samples and {len(reference)} images"):
        res = sample_quality(x, reference, args.inception_weights, batch_size=args.batch_size,
                             cuda=module_device(model).type == "cuda")
    res.update(run=str(args.run), temperature=args.temperature, split=args.split)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"FID {res['fid']:.2f}  KID {res['kid']:.4f} ± {res['kid_std']:.4f}  IS {res['inception_score']:.2f} ± "
              f"{res['inception_score_std']:.2f}  ({res['n_samples']} samples at temperature {args.temperature} "
              f"vs {res['n_reference']} {args.split} images)")


def _run_and_images(args: argparse.Namespace, n: int, conditional: bool = False):
    """The trained model of ``args.run``, the first ``n`` images of ``args.split`` in [0, 1], the
    data's number of levels and the images' conditions (``None`` for an unconditional run). A
    command that has no meaning on a conditional run (``conditional=False``) refuses one, naming
    the commands that apply."""
    from .data import to_float
    from .data.pairs import condition_batch

    model, cfg = _load(args)
    if model.context_shape is not None and not conditional:
        raise ValueError(f"{args.run} is a conditional run (data.condition = {cfg['data'].get('condition')!r}): "
                         f"{args.command} works on unconditional runs; use `attnflow sample` or `attnflow sr` for its "
                         f"outputs and `attnflow eval` for its metrics")
    data = _load_split(cfg, args.split)
    if n > len(data.images):
        raise ValueError(f"{n} images asked for; the {args.split} split has {len(data.images)}")
    device = module_device(model)
    contexts = condition_batch(data, slice(0, n))
    return (model, to_float(data.images[:n], data.levels).to(device), data.levels,
            None if contexts is None else contexts.to(device))


def _report_wrong(what: str, errors: torch.Tensor, tolerance: float) -> None:
    """Print each item whose reconstruction error exceeds ``tolerance`` and raise an error
    counting them."""
    wrong = [(i, float(e)) for i, e in enumerate(errors) if e > tolerance]
    for i, e in wrong:
        print(f"{what} {i}: max reconstruction error {e:.3g} > tolerance {tolerance:g}")
    if wrong:
        raise CommandFailed(
            f"{len(wrong)} of {len(errors)} {what}s are not reconstructed within {tolerance:g} (max error "
            f"{max(e for _, e in wrong):.3g}): the inverse returned another preimage, so the model is not "
            "invertible there (e.g. the dot-product ablation); see the list above"
        )


def _cmd_reconstruct(args: argparse.Namespace) -> None:
    from .evaluate import reconstruct, save_image_grid

    model, x, _, contexts = _run_and_images(args, args.n, conditional=True)  # the test images' own conditions
    rec = reconstruct(model, x, contexts)
    if not rec.converged:
        raise CommandFailed(f"the inverse did not converge: {rec.failure}")
    width = min(args.n, 8)  # rows of up to 8 images: real, then reconstructed
    pad = (-args.n) % width
    real, back = (torch.cat([t.cpu(), torch.ones(pad, *t.shape[1:])]) for t in (x, rec.images))
    rows = torch.stack([real.view(-1, width, *x.shape[1:]), back.view(-1, width, *x.shape[1:])], dim=1)
    save_image_grid(rows.flatten(0, 2), args.out, nrow=width)
    print(f"wrote real and reconstructed images (alternate rows) to {args.out}; "
          f"max reconstruction error {float(rec.errors.max()):.3g}")
    _report_wrong("image", rec.errors, args.tolerance)


def _cmd_interpolate(args: argparse.Namespace) -> None:
    from .evaluate import interpolate, save_image_grid
    from .evaluate.reconstruction import max_error_per_image

    model, x, _, _ = _run_and_images(args, 2 * args.pairs)
    x_a, x_b = x[: args.pairs], x[args.pairs :]
    rows = interpolate(model, x_a, x_b, args.steps)
    save_image_grid(rows.flatten(0, 1), args.out, nrow=args.steps)
    print(f"wrote {args.pairs} interpolations of {args.steps} steps (latent space, end points are real images) to {args.out}")
    errors = torch.maximum(max_error_per_image(rows[:, 0], x_a), max_error_per_image(rows[:, -1], x_b))
    _report_wrong("pair", errors, args.tolerance)


def _cmd_perturb(args: argparse.Namespace) -> None:
    from .evaluate import noise_perturbation

    model, x, levels, _ = _run_and_images(args, args.n)
    rows, images = noise_perturbation(model, x, levels, args.noise_stds, torch.Generator().manual_seed(args.seed),
                                      tolerance=args.tolerance)
    if args.out:
        shown = min(args.n, 8)
        labels = [text for r in rows for text in (f"std {r['noise_std']:.0e}", "inverse")]
        _save_labelled_rows(images[:, :, :shown].flatten(0, 2), args.out, shown, labels)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'noise std':>9s}  {'bits/dim':>16s}  inverse (max reconstruction error)")
    for r in rows:
        if r["inverse"] == "did not converge":
            inverse = "did not converge"
        elif r["inverse"] == "inverse wrong":
            inverse = f"inverse wrong for {r['wrong_images']} of {args.n} images ({r['max_reconstruction_error']:.3g})"
        else:
            inverse = f"ok ({r['max_reconstruction_error']:.3g})"
        print(f"{r['noise_std']:9.0e}  {r['bpd']:8.4f} ± {r['bpd_stderr']:.4f}  {inverse}")
    if args.out:
        print(f"wrote perturbed inputs and reconstructions (row pairs, one per noise std) to {args.out}")


def _save_labelled_rows(images: torch.Tensor, path: str, nrow: int, labels: list[str]) -> None:
    """An image grid of ``nrow`` images a row, each row labelled on its left."""
    from PIL import Image, ImageDraw

    from .evaluate.images import image_grid

    scale = max(2, 256 // (images.shape[-1] * nrow))
    grid = image_grid(images, nrow=nrow, scale=scale)
    margin, row_h = 64, (grid.shape[0] - scale) / len(labels)
    canvas = Image.new(Image.fromarray(grid).mode, (grid.shape[1] + margin, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(labels):
        draw.text((2, int(i * row_h + row_h / 2) - 5), text, fill=0 if canvas.mode == "L" else (0, 0, 0))
    canvas.save(path)


def _cmd_sr(args: argparse.Namespace) -> None:
    from .data.pairs import bicubic_upscale
    from .evaluate import save_image_grid
    from .evaluate.superres import decode_at_temperature, lr_psnr, read_condition_image, sr_scale

    model, cfg = _load(args)
    scale = sr_scale(cfg["data"])
    if scale is None:
        raise ValueError(f"{args.run} is not a super-resolution run (data.condition is "
                         f"{cfg['data'].get('condition', 'none')!r}, not 'lowres'); train an srflow preset")
    lr = read_condition_image(args.input, model.context_shape)
    gen = torch.Generator().manual_seed(args.seed)
    on_model = lr.to(module_device(model))
    outs = torch.cat([decode_at_temperature(model, on_model, args.temperature, gen).cpu() for _ in range(args.n)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(bicubic_upscale(lr, scale), out / "bicubic.png", nrow=1)
    overflowed = 0
    for i, (img, db) in enumerate(zip(outs, lr_psnr(outs, lr.expand(args.n, -1, -1, -1), scale))):
        if not torch.isfinite(img).all():
            overflowed += 1
            continue
        save_image_grid(img[None], out / f"sr-{i}.png", nrow=1)
        print(f"wrote {out / f'sr-{i}.png'} ({scale}x, temperature {args.temperature}, LR-PSNR {float(db):.2f} dB)")
    print(f"wrote {out / 'bicubic.png'} (the bicubic baseline)")
    if overflowed:  # as `attnflow sample`: non-finite outputs fail the command
        raise CommandFailed(f"{overflowed} of {args.n} outputs overflowed at temperature {args.temperature} and were "
                            "not written; try a lower --temperature")


def _cmd_certify(args: argparse.Namespace) -> None:
    from .data import dequantize, load_configured
    from .device import module_device, module_dtype
    from .evaluate.certificates import certify, uncertified_message

    model, cfg = _load(args)
    search = None
    if args.search_images:  # the blocks' inputs on the first test images, for the empirical search
        test = load_configured(cfg["data"], "test")
        images = test.images[: args.search_images]
        search = dequantize(images, test.levels, torch.Generator().manual_seed(0), module_dtype(model))
        search = search.to(module_device(model))
    report = certify(model, search, progress=not args.json)
    if args.json:
        print(json.dumps(report))
    elif not report["blocks"]:
        print(f"{args.run} has no contractive residual blocks: nothing to certify")
    else:
        searched = search is not None
        print(f"{'block':40s} certified Lip(g)" + ("  largest |J| found  certificate/found" if searched else ""))
        for b in report["blocks"]:
            found = f"  {b['empirical']:17.6f}  {b['ratio']:17.3f}" if searched else ""
            print(f"{b['name']:40s} {b['bound']:16.6f}{found}")
        print(f"largest certified block bound: {report['max_block_bound']:.6f}")
        print(f"largest operator norm of a normalised layer as used: {report['max_layer_norm']:.6f} "
              f"({report['max_layer_norm_over_coeff']:.6f} x its coeff; {len(report['layers'])} layers)")
    if message := uncertified_message(report):
        print(f"attnflow certify: {message}", file=sys.stderr)
        sys.exit(1)


def _cmd_compare(args: argparse.Namespace) -> None:
    from .evaluate import plot_runs, run_summary

    rows = [run_summary(r) for r in args.runs]
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'run':28s} {'family':10s} {'steps':>6s} {'train s':>8s}  test bits/dim")
        for r in rows:
            bound = "≤ " if r["upper_bound"] else ""
            bpd = "-" if r["test_bpd"] is None else f"{bound}{r['test_bpd']:.4f} ± {r['test_bpd_stderr']:.4f}"
            secs = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
            print(f"{Path(r['run']).name:28s} {r['family']:10s} {r['steps']:6d} {secs:>8s}  {bpd}")
    if args.out:
        plot_runs(args.runs, args.out)
        print(f"wrote test curves (by step and by training seconds) to {args.out}", file=sys.stderr if args.json else sys.stdout)


def _cmd_experiment(args: argparse.Namespace) -> None:
    from .experiments import listing, make_settings, run_experiment
    from .experiments.plumbing import ExperimentFailed, ExperimentInterrupted, command_line

    if args.list:
        print("\n".join(listing(args.data)))
        return
    if not args.name or not args.out:
        raise ValueError("give an experiment NAME and --out DIR (or --list to see the experiments)")
    given = [("--preset", args.preset), ("--set", args.set), ("--heads", args.heads), ("--run", args.run)]
    argv = ["experiment", args.name, "--out", args.out, "--data", args.data]
    argv += [a for flag, values in given for v in values or () for a in (flag, str(v))]
    argv += [a for flag, v in (("--budget", args.budget), ("--seeds", args.seeds), ("--clock", args.clock),
                               ("--device", args.device), ("--jobs", args.jobs if args.jobs > 1 else None),
                               ("--importance-samples", args.importance_samples),
                               ("--importance-images", args.importance_images), ("--test-images", args.test_images))
             if v is not None for a in (flag, str(v))]
    settings = make_settings(args.name, args.out, budget=args.budget, data=args.data, presets=args.preset,
                             seeds=args.seeds, clock=args.clock, device=args.device, overrides=args.set,
                             head_counts=args.heads, runs=args.run, command=command_line(argv),
                             progress=not args.quiet, jobs=args.jobs, importance_samples=args.importance_samples,
                             importance_images=args.importance_images, test_images=args.test_images)
    try:
        run_experiment(settings)
    except ExperimentInterrupted as exc:
        _fail("experiment", exc, 130)
    except ExperimentFailed as exc:
        _fail("experiment", exc, 1)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): the problem, then where to read more."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="attnflow", description="Normalizing flows with attention on images.")
    p.add_argument("--version", action="version", version=f"attnflow {__version__} (torch {torch.__version__})")
    sub = p.add_subparsers(dest="command", required=True)

    def number(parser: argparse.ArgumentParser, flag: str, option: str, default: object, help: str | None = None,
               **kw: object) -> None:
        """An option checked by ``OPTIONS[option]``; its help gives the valid values."""
        field = OPTIONS[option]
        text = f"{help or field.help}: {field.describe()} (default {default})"
        parser.add_argument(flag, type=field.argparse_type(), default=default, help=text, **kw)

    def device_option(parser: argparse.ArgumentParser) -> None:
        """``--device``, default ``cpu``: a command's numbers and inverse verdicts are then the
        same on every machine (CUDA's TF32 convolutions would change them in the 3rd digit);
        ``auto`` or ``cuda`` opt into the GPU."""
        parser.add_argument("--device", type=_device_name, default="cpu",
                            help="device to run on: auto (CUDA when available), cpu, cuda or cuda:N (default cpu)")

    sub.add_parser("presets", help="list the named configurations").set_defaults(func=_cmd_presets)

    t = sub.add_parser("train", help="train a preset into a run directory")
    t.add_argument("--preset", help="preset name (see `attnflow presets`); with --resume not needed: the run's saved "
                   "configuration is used, with any --set applied")
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
    number(e, "--batch-size", "batch_size", 256)
    number(e, "--max-batches", "max_batches", 0)
    number(e, "--seed", "seed", 0, "dequantization seed")
    number(e, "--importance-samples", "importance_samples", 16,
           "for models whose likelihood is a bound (DenseFlow): also report the importance-weighted estimate "
           "with K noise draws", metavar="K")
    number(e, "--temperatures", "temperatures", [0.0, 0.5, 0.8], "conditional models: temperatures of the "
           "output metrics", nargs="+")
    number(e, "--samples", "samples", 3, "conditional models: outputs per condition")
    number(e, "--sr-images", "sr_images", 500, "conditional models: test images for PSNR, SSIM, LR-PSNR")
    e.add_argument("--weights", default="ema", choices=["ema", "live"],
                   help="ema: the run's EMA weights when it kept them (default); live: the trained weights themselves")
    device_option(e)
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("sample", help="write a grid of samples")
    s.add_argument("run")
    number(s, "--n", "n", 64)
    number(s, "--temperature", "temperature", 1.0)
    number(s, "--seed", "seed", 0)
    s.add_argument("--out", default="samples.png")
    device_option(s)
    s.set_defaults(func=_cmd_sample)

    f = sub.add_parser("fid", help="FID, KID and Inception Score of a run's samples against its test images "
                       "(torch-fidelity with a local Inception-v3 weights file; nothing is downloaded)")
    f.add_argument("run", help="run directory")
    f.add_argument("--inception-weights", required=True, metavar="PATH",
                   help="torch-fidelity's Inception-v3 state dict (pt_inception-2015-12-05-6726825d.pth)")
    number(f, "--n", "n", 10000, "samples, and reference images (at most the split's size)")
    number(f, "--temperature", "temperature", 1.0)
    number(f, "--seed", "seed", 0)
    number(f, "--batch-size", "batch_size", 64)
    f.add_argument("--split", default="test", choices=["train", "test"], help="reference images (default test)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    device_option(f)
    f.set_defaults(func=_cmd_fid)

    def image_command(name: str, help: str, func, out: str, out_help: str | None = None) -> argparse.ArgumentParser:
        """A subcommand on the images of a trained run: ``run``, ``--split``, ``--out`` and the
        ``--tolerance`` its inverse is judged by."""
        c = sub.add_parser(name, help=help)
        c.add_argument("run")
        c.add_argument("--split", default="test", choices=["train", "test"])
        c.add_argument("--out", default=out, help=out_help)
        number(c, "--tolerance", "tolerance", 1e-3)
        device_option(c)
        c.set_defaults(func=func)
        return c

    r = image_command("reconstruct", "real vs reconstructed test images", _cmd_reconstruct, "recon.png")
    number(r, "--n", "n", 8)

    i = image_command("interpolate", "latent interpolations between test images", _cmd_interpolate, "interpolations.png")
    number(i, "--pairs", "pairs", 4)
    number(i, "--steps", "steps", 8)

    n = image_command("perturb", "noise-perturbation analysis: bits/dim and reconstructions of noisy test images",
                      _cmd_perturb, "", "PNG grid of the perturbed inputs and their reconstructions (first 8 images)")
    number(n, "--sigmas", "noise_std", [1e-5, 1e-3, 1e-2, 1e-1, 1.0], "noise standard deviations (not variances)",
           nargs="+", dest="noise_stds")
    number(n, "--n", "n", 64, "test images")
    number(n, "--seed", "seed", 0)
    n.add_argument("--json", action="store_true")

    v = sub.add_parser("sr", help="super-resolve a low-resolution image with a trained srflow run")
    v.add_argument("run")
    v.add_argument("--input", required=True, help="low-resolution PNG/JPEG of the run's input size")
    number(v, "--temperature", "temperatures", 0.8)
    number(v, "--n", "n", 4, "super-resolutions")
    number(v, "--seed", "seed", 0)
    v.add_argument("--out", default="sr", help="output folder")
    device_option(v)
    v.set_defaults(func=_cmd_sr)

    cert = sub.add_parser("certify", help="certified Lipschitz bounds of a contractive run's blocks and layers "
                                          "(exit status 1 when a block is not certified)")
    cert.add_argument("run", help="run directory")
    cert.add_argument("--json", action="store_true", help="print one JSON object with every block and layer")
    number(cert, "--search-images", "search_images", 16,
           "test images whose block inputs start the search for large Jacobian norms (0: no search)")
    device_option(cert)
    cert.set_defaults(func=_cmd_certify)

    c = sub.add_parser("compare", help="table and test curves of several runs")
    c.add_argument("runs", nargs="+", help="run directories")
    c.add_argument("--json", action="store_true", help="print one JSON list")
    c.add_argument("--out", default="", help="PNG of the test curves by step and by training seconds")
    c.set_defaults(func=_cmd_compare)

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
    for name, command in sub.choices.items():
        if name == "train":
            command.add_argument("--threads", type=OPTIONS["threads"].argparse_type(), default=None,
                                 help="sets train.threads (CPU threads; 0 = the CPUs not busy with other work); default: "
                                      "the configuration's train.threads")
        elif name != "presets":
            number(command, "--threads", "threads", 0)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from .evaluate.fidelity import FidelityUnavailable
    from .flows.residual_block import InverseDidNotConverge
    from .train import CheckpointError, NonFiniteTraining
    from .train.runlock import RunLocked

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
    args = build_parser().parse_args(argv)
    try:
        _expand_paths(args)
        _check_out(args)
        if args.command == "train" and args.threads is not None:
            args.set.append(f"train.threads={args.threads}")
        elif args.command != "presets":
            set_threads(args.threads)
        args.func(args)
    except CommandFailed as exc:
        _fail(args.command, exc, 1)
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


if __name__ == "__main__":
    main()
