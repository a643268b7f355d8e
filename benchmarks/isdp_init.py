"""Bits/dim at initialisation of glow-fmnist-tiny and glow-fmnist-tiny-isdp with each iSDP
initialisation (``model.isdp_init``), on the same first 64 Fashion-MNIST test images (after
ActNorm's data initialisation on them, as the first training step does). Needs the Fashion-MNIST
files (Debian's dataset-fashion-mnist) or ``--set data.root=...``.

    python benchmarks/isdp_init.py

Prints one JSON line per model. The equal-CPU-time comparison behind the preset's default is in
the leading comment of ``attnflow/presets/glow-fmnist-tiny-isdp.toml``.
"""
from __future__ import annotations

import json

import torch

from attnflow.config import resolve_config
from attnflow.data import dequantize, load_configured
from attnflow.evaluate import log_prob_to_bits_per_dim
from attnflow.models import build_from_config

MODELS = [("glow-fmnist-tiny", None), ("glow-fmnist-tiny-isdp", "paper"), ("glow-fmnist-tiny-isdp", "gated")]


def main() -> None:
    torch.set_num_threads(1)
    test = load_configured(resolve_config("glow-fmnist-tiny")["data"], "test")
    x = dequantize(test.images[:64], test.levels, generator=torch.Generator().manual_seed(0))
    for preset, init in MODELS:
        torch.manual_seed(0)
        model = build_from_config(resolve_config(preset, [f"model.isdp_init={init}"] if init else [])["model"])
        model.train()
        model.log_prob(x)  # ActNorm's data-dependent initialisation
        model.eval()
        with torch.no_grad():
            bpd = float(log_prob_to_bits_per_dim(model.log_prob(x), model.dim, test.levels).mean())
        print(json.dumps({"preset": preset, "isdp_init": init, "initial_bpd": round(bpd, 3), "images": 64}))


if __name__ == "__main__":
    main()
