"""Contraction certificates through a real training run of a residual preset (issue 19).

    python benchmarks/certified_training.py --preset resflow-fmnist-tiny --steps 300 [--set KEY=VALUE ...]

Trains the preset with the library's ``Trainer`` into ``--out`` (one thread; test bits/dim over the
first 1000 test images) and, before the first step and after every step, computes independently
the exact operator norm of the weight every spectral-normalised convolution will use in the next step
(:func:`attnflow.testing.exact_conv_norm`: the eigen-decomposition of the operator's Gram matrix in
float64; the normalised weight is a deterministic function of the weights, so this is the weight
the step runs with). Prints one JSON object: the largest used norm over all layers and steps (and
``x coeff``), the worst certified block bound the trainer saw during training (``results.json``),
and per block the final certificate, the largest Jacobian norm ``attnflow certify`` finds from 16
test images and their ratio. Needs the preset's data (Fashion-MNIST: ``apt-get install
dataset-fashion-mnist``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from attnflow.config import resolve_config
from attnflow.data import dequantize, load_configured
from attnflow.evaluate.certificates import certify
from attnflow.nets.lipschitz_layers import SpectralNormConv2d
from attnflow.testing import exact_conv_norm
from attnflow.train import Trainer, load_run


def used_norm_ratios(model: torch.nn.Module) -> list[float]:
    """Exact norm / coeff of every spectral-normalised convolution's next used weight."""
    with torch.no_grad():
        return [exact_conv_norm(m.normalized_weight(), m.input_size, m.padding) / m.coeff
                for m in model.modules() if isinstance(m, SpectralNormConv2d)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="resflow-fmnist-tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    p.add_argument("--set", action="append", default=[], help="more section.key=value overrides")
    a = p.parse_args(argv)
    out = a.out or tempfile.mkdtemp(prefix="certified-") + "/run"
    cfg = resolve_config(a.preset, [f"train.steps={a.steps}", "train.threads=1", "train.eval_every=0",
                                    "data.test_images=1000", *a.set])
    trainer = Trainer(cfg, out, progress=False)
    worst = {"ratio": max(used_norm_ratios(trainer.model)), "step": 1}

    def check(step: int) -> None:
        ratio = max(used_norm_ratios(trainer.model))
        if ratio > worst["ratio"]:
            worst.update(ratio=ratio, step=step + 1)

    started = time.perf_counter()
    trainer.run(on_step=check)
    results = json.loads((trainer.out / "results.json").read_text())
    model, _ = load_run(out)
    test = load_configured(cfg["data"], "test")
    images = dequantize(test.images[:16], test.levels, torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    report = certify(model, images)
    print(json.dumps({
        "preset": a.preset,
        "steps": trainer.step,
        "test_bpd": results["test"]["bpd"],
        "worst_used_norm_over_coeff": worst["ratio"],
        "worst_used_norm_step": worst["step"],
        **{k: results["certificates"][k] for k in
           ("max_block_bound_in_training", "max_block_bound_step", "max_block_bound_block")},
        "blocks": [{k: round(b[k], 4) for k in ("bound", "empirical", "ratio")} | {"name": b["name"]}
                   for b in report["blocks"]],
        "seconds": round(time.perf_counter() - started, 1),
        "run": out,
    }))


if __name__ == "__main__":
    main()
