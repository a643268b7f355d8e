"""Noise perturbation of contractive flows with and without Lipschitz attention (ACF supplement,
Sec. 5, Table 5 and Fig. 2): plain dot-product attention (the non-Lipschitz ablation), L2,
LipNorm and none.

Test images are perturbed with additive white Gaussian noise whose **variance** is sigma, as the
ACF supplement states ("Gaussian noises of different variances (sigma)"):
``x_sigma = clip(x + sqrt(sigma) * eps, 0, 1)``, ``eps ~ N(0, I)``, for sigma in
{1e-4, 1e-3, 1e-2, 1e-1, 1} (standard deviations 0.01 to 1, on images scaled to [0, 1]). For
each sigma it reports, through :func:`attnflow.evaluate.noise_perturbation`: the bits/dim of
``x_sigma``, its log-likelihood ``log p(x_sigma)`` (nats per image) and the log-det of the flow at
``x_sigma``; the reconstruction ``decode(encode(x_sigma))``, its bits/dim (the figure of Table 5),
its largest error, whether the fixed-point inverse converged and whether it is right (error within
the tolerance).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..heartbeat import heartbeat
from .plumbing import Settings, load_trained, refuse_conditional, say, train_runs
from .protocol import Defaults, Experiment
from .report import markdown_table, pyplot, save_figure, write_outputs

NAME = "perturbation"
DESCRIPTION = ("ACF Table 5 / Fig. 2: bits/dim, log-likelihood, log-det and reconstruction of test images "
               "with Gaussian noise of variance sigma, for dot / L2 / LipNorm / no attention")
VARIANCES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
N_IMAGES = 64
SHOWN = 8  # images per row of the figures


@torch.no_grad()
def perturbation_rows(model: Any, x: torch.Tensor, levels: int,
                      seed: int = 0) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """The rows of :func:`attnflow.evaluate.noise_perturbation` at standard deviation
    ``sqrt(sigma)`` for each variance sigma in :data:`VARIANCES`, each with ``variance``,
    ``log_likelihood`` (mean nats per image, from the bits/dim), ``logdet`` (mean) and
    ``reconstruction_bpd`` (``None`` when the inverse did not converge) added; and the images
    ``[len(VARIANCES), 2, B, C, H, W]`` (noisy inputs, reconstructions)."""
    from ..evaluate import bits_per_dim, noise_perturbation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # stochastic log-det estimators
        rows, images = noise_perturbation(model, x, levels, [math.sqrt(v) for v in VARIANCES],
                                          torch.Generator().manual_seed(seed))
        dim = model.dim
        for row, variance, (noisy, back) in zip(rows, VARIANCES, images):
            row["variance"] = variance
            row["log_likelihood"] = dim * math.log(levels) - row["bpd"] * dim * math.log(2.0)
            row["logdet"] = float(model.forward_and_logdet(noisy)[1].mean())
            row["reconstruction_bpd"] = (float(bits_per_dim(model, back, levels).mean())
                                         if row["inverse_converged"] else None)
    return rows, images


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


def run(settings: Settings) -> None:
    from ..data import load_configured, to_float
    from ..device import module_device
    from ..evaluate import save_image_grid

    for spec in settings.specs:
        refuse_conditional(spec, "perturbation")
    results = train_runs(settings, settings.specs)
    numbers: dict[str, Any] = {"noise": "x + sqrt(sigma) * N(0, I), clipped to [0, 1]; sigma is the variance",
                               "variances": list(VARIANCES), "images": None, "models": {}}
    sections, table5 = [], {}
    for r in [r for r in results if r.ok]:
        say(f"perturbation: evaluating {r.spec.text}")
        model, cfg = load_trained(r, settings)
        test = load_configured(cfg.data, "test")
        n = min(N_IMAGES, len(test))
        numbers["images"] = n
        x = to_float(test.images[:n], test.levels).to(module_device(model))
        with heartbeat(f"perturbation: {r.spec.text}", settings.progress):
            rows, images = perturbation_rows(model, x, test.levels)
        numbers["models"][r.spec.text] = rows
        table5[r.spec.text] = [_fmt(row["reconstruction_bpd"]) for row in rows]
        png = f"perturbation-{r.spec.slug}.png"
        save_image_grid(images[:, :, :SHOWN].flatten(0, 2).cpu(), settings.out / png, nrow=min(SHOWN, n))
        detail = [[f"{row['variance']:g}", f"{math.sqrt(row['variance']):.3g}",
                   f"{_fmt(row['bpd'])} ± {_fmt(row['bpd_stderr'])}", _fmt(row["reconstruction_bpd"]),
                   _fmt(row["log_likelihood"]), _fmt(row["logdet"]), _fmt(row["max_reconstruction_error"]),
                   "yes" if row["inverse_converged"] else "no",
                   f"{row['inverse']} ({row['wrong_images']} of {n} off)" if row["inverse_converged"] else "-"]
                  for row in rows]
        sections.append("\n".join([
            f"## {r.spec.text}", "", markdown_table(
                ["sigma (variance)", "noise std", "bits/dim of x_sigma", "bits/dim of reconstruction",
                 "log p(x_sigma), nats/image", "log-det", "max reconstruction error", "inverse converged",
                 "inverse right"], detail), "",
            f"![perturbed inputs and reconstructions of {r.spec.text}]({png})", "",
            f"Row pairs, one per sigma from {VARIANCES[0]:g} to {VARIANCES[-1]:g}: the noisy inputs, then their "
            "reconstructions (black when the inverse did not converge).",
        ]))
    _plot(numbers["models"], settings)
    summary = "\n".join([
        "## Table 5: bits/dim of the reconstructions", "",
        f"Noise: `x_sigma = clip(x + sqrt(sigma) * eps, 0, 1)`, `eps ~ N(0, I)`: **sigma is the variance** of the "
        f"Gaussian noise, as in the ACF supplement; images are scaled to [0, 1]. First {numbers['images']} test "
        "images. An inverse is right when every image is reconstructed within 1e-3 (max abs error).", "",
        markdown_table(["sigma (variance)", *table5], [[f"{v:g}", *(col[i] for col in table5.values())]
                                                       for i, v in enumerate(VARIANCES)]), "",
        "![bits/dim, log-likelihood and log-det against sigma](perturbation.png)",
    ])
    write_outputs(settings, "Noise perturbation (ACF supplement Table 5, Fig. 2)", DESCRIPTION + ".",
                  [summary, *sections], numbers, results)


def _plot(models: dict[str, list[dict[str, Any]]], settings: Settings) -> None:
    plt = pyplot()
    keys = (("bpd", "bits/dim of x_sigma"), ("reconstruction_bpd", "bits/dim of the reconstruction"),
            ("log_likelihood", "log p(x_sigma) (nats/image)"), ("logdet", "log-det at x_sigma"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    for ax, (key, title) in zip(axes, keys):
        for label, rows in models.items():
            pts = [(row["variance"], row[key]) for row in rows if row[key] is not None and math.isfinite(row[key])]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("sigma (noise variance)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, settings.out / "perturbation.png")


# ACF supplement Table 5 / Fig. 2: dot (not Lipschitz), L2, LipNorm, none
DEFAULTS = Defaults(40, seeds=None, digits=(
    "acf-resflow-dot-digits", "acf-resflow-l2-digits", "acf-resflow-lipnorm-digits", "resflow-digits"), fashion=(
    "acf-resflow-l2-fmnist-tiny+model.attention=dot", "acf-resflow-l2-fmnist-tiny",
    "acf-resflow-lipnorm-fmnist-tiny", "resflow-fmnist-tiny"))

EXPERIMENT = Experiment(NAME, DESCRIPTION, run, defaults=DEFAULTS)
