"""Latent interpolation between test images (ACF Algorithm 2) with
:func:`attnflow.evaluate.interpolate`.

Random pairs of test images ``(x_1, x_2)`` are encoded to ``z_1, z_2`` and
``delta_i = z_1 + i/N (z_2 - z_1)`` is decoded for i = 0..N (``STEPS = N + 1`` images per strip,
end points included). Algorithm 2 runs i to N + 1, one step past ``z_2`` (an extrapolation); the
strips stop at ``z_2``. The end points must reconstruct the real images (their error is
reported); the bits/dim of every decoded image shows how likely the path stays.

``--run DIR`` interpolates with existing runs; otherwise the experiment trains its preset
within the budget.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..heartbeat import heartbeat
from .plumbing import RunResult, Settings, load_trained, refuse_conditional, say, train_runs
from .protocol import Defaults, Experiment
from .report import markdown_table, pyplot, save_figure, write_outputs

NAME = "interpolation"
DESCRIPTION = ("ACF Algorithm 2: latent interpolation strips between random test pairs, "
               "end-point errors and path bits/dim")
PAIRS = 8
STEPS = 10
METHOD = (f"Random test pairs are encoded to z_1, z_2 and z_1 + i/N (z_2 - z_1) is decoded for i = 0..N "
          f"({STEPS} images per strip, N = {STEPS - 1}); Algorithm 2's last index N + 1 extrapolates past z_2 "
          "and is left out. Decoded images are clamped to [0, 1] for the figure and the bits/dim.")


@torch.no_grad()
def interpolation_strips(model: Any, images: torch.Tensor, levels: int,
                         seed: int = 0) -> tuple[dict[str, Any], torch.Tensor]:
    """Strips ``[PAIRS, STEPS, C, H, W]`` between random pairs of ``images`` (in [0, 1]) and their
    numbers: the pair indices, the end points' largest reconstruction errors, and the mean bits/dim
    of the decoded images at each ``t = i / (STEPS - 1)`` (decoded images clamped to [0, 1])."""
    from ..evaluate import bits_per_dim, interpolate
    from ..evaluate.reconstruction import max_error_per_image

    gen = torch.Generator().manual_seed(seed)
    pairs = min(PAIRS, len(images) // 2)
    order = torch.randperm(len(images), generator=gen)[: 2 * pairs]
    x_a, x_b = images[order[:pairs]], images[order[pairs:]]
    strips = interpolate(model, x_a, x_b, STEPS)
    errors = torch.maximum(max_error_per_image(strips[:, 0], x_a), max_error_per_image(strips[:, -1], x_b))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        finite = torch.isfinite(strips.flatten(2)).all(2)  # [pairs, steps]
        path = [float(bits_per_dim(model, strips[:, i][finite[:, i]].clamp(0, 1), levels).mean())
                if finite[:, i].any() else float("nan") for i in range(STEPS)]
    numbers = {"pairs": [[int(a), int(b)] for a, b in zip(order[:pairs], order[pairs:])], "steps": STEPS,
               "t": torch.linspace(0, 1, STEPS).tolist(), "endpoint_errors": errors.tolist(),
               "max_endpoint_error": float(errors.max()), "path_bpd": path,
               "non_finite_images": int((~finite).sum())}
    return numbers, strips


def run(settings: Settings) -> None:
    from ..data import load_configured, to_float
    from ..device import module_device
    from ..evaluate import save_image_grid

    for what in settings.runs or settings.specs:
        refuse_conditional(what, "interpolation")
    results: list[RunResult] = [] if settings.runs else train_runs(settings, settings.specs)
    run_dirs: list[Path] = list(settings.runs) or [r.dir for r in results if r.ok]
    numbers: dict[str, Any] = {"runs": {}}
    sections = []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, run_dir in enumerate(run_dirs):
        say(f"interpolation: {run_dir}")
        model, cfg = load_trained(run_dir, settings)
        test = load_configured(cfg.data, "test")
        x = to_float(test.images, test.levels).to(module_device(model))
        with heartbeat(f"interpolation: {run_dir}", settings.progress):
            nums, strips = interpolation_strips(model, x, test.levels)
        numbers["runs"][str(run_dir)] = nums
        png = f"interpolation-{i}.png"
        save_image_grid(torch.nan_to_num(strips.flatten(0, 1).cpu(), nan=0.0, posinf=1.0, neginf=0.0),
                        settings.out / png, nrow=STEPS)
        ax.plot(nums["t"], nums["path_bpd"], marker="o", label=run_dir.name)
        rows = [[f"{a}, {b}", f"{e:.3g}"] for (a, b), e in zip(nums["pairs"], nums["endpoint_errors"])]
        sections.append("\n".join([
            f"## {run_dir}", "",
            f"![interpolations of {run_dir.name}]({png})", "",
            f"{len(rows)} strips of {STEPS} images (rows), from one test image to another; "
            f"largest end-point reconstruction error {nums['max_endpoint_error']:.3g}; "
            f"{nums['non_finite_images']} decoded images not finite.", "",
            markdown_table(["test pair", "end-point max error"], rows), "",
            markdown_table(["t", *(f"{t:.2f}" for t in nums["t"])],
                           [["bits/dim", *(f"{b:.4g}" for b in nums["path_bpd"])]]),
        ]))
    ax.set_xlabel("t (z = (1 - t) z_1 + t z_2)")
    ax.set_ylabel("bits/dim of the decoded images (mean over pairs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, settings.out / "interpolation-bpd.png")
    sections.append("## Bits/dim along the paths\n\n![bits/dim along the interpolation paths](interpolation-bpd.png)")
    write_outputs(settings, "Latent interpolation (ACF Algorithm 2)", DESCRIPTION + ". " + METHOD, sections, numbers,
                  results)


# ACF Algorithm 2
DEFAULTS = Defaults(10, seeds=None, digits=("acf-resflow-l2-digits",),
                    fashion=("acf-resflow-l2-fmnist-tiny",))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, takes_runs=True, defaults=DEFAULTS)
