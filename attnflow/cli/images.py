"""``attnflow sample``, ``reconstruct``, ``interpolate``, ``perturb`` and ``sr``: images of trained runs."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..device import module_device
from ..heartbeat import heartbeat
from .common import CommandFailed, device_option, load_model, load_split, number

if TYPE_CHECKING:
    from ..core import Flow

__all__ = ["register"]


def _cmd_sample(args: argparse.Namespace) -> None:
    from ..evaluate import finite_samples, save_image_grid

    model, cfg = load_model(args)
    if model.context_shape is not None:  # conditional: several outputs for each of the first test conditions
        from ..evaluate.superres import save_comparison_grid, sr_scale

        data = load_split(cfg, "test")
        with heartbeat("attnflow sample: sampling"):
            save_comparison_grid(model, data, args.out, sr_scale(cfg.data), [args.temperature] * 4,
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


def _run_and_images(args: argparse.Namespace, n: int,
                    conditional: bool = False) -> tuple[Flow, torch.Tensor, int, torch.Tensor | None]:
    """The trained model of ``args.run``, the first ``n`` images of ``args.split`` in [0, 1], the
    data's number of levels and the images' conditions (``None`` for an unconditional run). A
    command that has no meaning on a conditional run (``conditional=False``) refuses one, naming
    the commands that apply."""
    from ..data import to_float
    from ..data.pairs import condition_batch

    model, cfg = load_model(args)
    if model.context_shape is not None and not conditional:
        raise ValueError(f"{args.run} is a conditional run (data.condition = {cfg.data.condition!r}): "
                         f"{args.command} works on unconditional runs; use `attnflow sample` or `attnflow sr` for its "
                         f"outputs and `attnflow eval` for its metrics")
    data = load_split(cfg, args.split)
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
    from ..evaluate import reconstruct, save_image_grid

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
    from ..evaluate import interpolate, save_image_grid
    from ..evaluate.reconstruction import max_error_per_image

    model, x, _, _ = _run_and_images(args, 2 * args.pairs)
    x_a, x_b = x[: args.pairs], x[args.pairs :]
    rows = interpolate(model, x_a, x_b, args.steps)
    save_image_grid(rows.flatten(0, 1), args.out, nrow=args.steps)
    print(f"wrote {args.pairs} interpolations of {args.steps} steps "
          f"(latent space, end points are real images) to {args.out}")
    errors = torch.maximum(max_error_per_image(rows[:, 0], x_a), max_error_per_image(rows[:, -1], x_b))
    _report_wrong("pair", errors, args.tolerance)


def _cmd_perturb(args: argparse.Namespace) -> None:
    from ..evaluate import noise_perturbation

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

    from ..evaluate.images import image_grid

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
    from ..data.pairs import bicubic_upscale
    from ..evaluate import save_image_grid
    from ..evaluate.superres import decode_at_temperature, lr_psnr, read_condition_image, sr_scale

    model, cfg = load_model(args)
    scale = sr_scale(cfg.data)
    if scale is None or model.context_shape is None:
        raise ValueError(f"{args.run} is not a super-resolution run (data.condition is "
                         f"{cfg.data.condition!r}, not 'lowres'); train an srflow preset")
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


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="write a grid of samples")
    s.add_argument("run")
    number(s, "--n", "n", 64)
    number(s, "--temperature", "temperature", 1.0)
    number(s, "--seed", "seed", 0)
    s.add_argument("--out", default="samples.png")
    device_option(s)
    s.set_defaults(func=_cmd_sample)

    def image_command(name: str, help: str, func: Callable[[argparse.Namespace], None], out: str,
                      out_help: str | None = None) -> argparse.ArgumentParser:
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

    i = image_command("interpolate", "latent interpolations between test images", _cmd_interpolate,
                      "interpolations.png")
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
