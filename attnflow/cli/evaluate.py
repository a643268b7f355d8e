"""``attnflow eval``, ``certify``, ``compare`` and ``fid``: the numbers of trained runs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..device import module_device
from ..heartbeat import heartbeat
from .common import CommandFailed, device_option, load_model, load_split, number

__all__ = ["register"]


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
    from ..data import to_float
    from ..data.pairs import condition_batch
    from ..evaluate import evaluate_bits_per_dim
    from ..evaluate.certificates import certificate_summary, certify, uncertified_message
    from ..evaluate.classification import evaluate_hybrid
    from ..evaluate.importance import importance_weighted_bits_per_dim
    from ..evaluate.superres import evaluate_conditional, sr_scale
    from ..models.hybrid import HybridFlow

    torch.manual_seed(args.seed)
    model, cfg = load_model(args)
    data = load_split(cfg, args.split)
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
                                                      args.temperatures, args.samples, sr_scale(cfg.data),
                                                      seed=args.seed)
    weights = "ema" if args.weights == "ema" and cfg.train.ema_decay > 0 else "live"  # no EMA kept: live
    res.update({"split": args.split, "dataset": cfg.data.name, "levels": data.levels, "weights": weights})
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


def _cmd_fid(args: argparse.Namespace) -> None:
    from ..data import to_float
    from ..evaluate import finite_samples
    from ..evaluate.fidelity import check_inception_weights, require_torch_fidelity, sample_quality

    require_torch_fidelity()  # both checks before the (long) sampling
    check_inception_weights(args.inception_weights)
    model, cfg = load_model(args)
    if model.context_shape is not None:
        raise ValueError("attnflow fid scores unconditional samples; for conditional runs use attnflow eval")
    data = load_split(cfg, args.split)
    with heartbeat(f"attnflow fid: sampling {args.n} images"):
        x, non_finite = finite_samples(model, args.n, args.temperature,
                                       generator=torch.Generator().manual_seed(args.seed))
    if non_finite:
        raise CommandFailed(f"{non_finite}; FID/KID/IS need {args.n} finite samples")
    reference = to_float(data.images[: args.n], data.levels)
    with heartbeat(f"attnflow fid: Inception features of {len(x)} samples and {len(reference)} images"):
        quality = sample_quality(x, reference, args.inception_weights, batch_size=args.batch_size,
                                 cuda=module_device(model).type == "cuda")
    res: dict[str, Any] = {**quality, "run": str(args.run), "temperature": args.temperature, "split": args.split}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"FID {res['fid']:.2f}  KID {res['kid']:.4f} ± {res['kid_std']:.4f}  IS {res['inception_score']:.2f} ± "
              f"{res['inception_score_std']:.2f}  ({res['n_samples']} samples at temperature {args.temperature} "
              f"vs {res['n_reference']} {args.split} images)")


def _cmd_certify(args: argparse.Namespace) -> None:
    from ..data import dequantize, load_configured
    from ..device import module_device, module_dtype
    from ..evaluate.certificates import certify, uncertified_message

    model, cfg = load_model(args)
    search = None
    if args.search_images:  # the blocks' inputs on the first test images, for the empirical search
        test = load_configured(cfg.data, "test")
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
    from ..evaluate import plot_runs, run_summary

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
        print(f"wrote test curves (by step and by training seconds) to {args.out}",
              file=sys.stderr if args.json else sys.stdout)


def register(sub: argparse._SubParsersAction) -> None:
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
