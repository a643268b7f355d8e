"""Training-step speed and memory of Glow steps with invertible attention (AttnFlow) at each
position: ``none``, then ``imap`` and ``isdp`` at positions 1-4 (1 before ActNorm, 2 after
ActNorm, 3 after the 1x1 convolution, 4 after the coupling).

    python benchmarks/glow_attention.py [--preset glow-digits] [--threads 2] [--batch-size 64]

Each configuration runs in its own process (so that its peak memory is its own) through
``train_step.py``; prints one JSON object per line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TRAIN_STEP = Path(__file__).with_name("train_step.py")


def configurations(kinds: list[str], positions: list[int]) -> list[list[str]]:
    configs = [["model.attention=none", "model.positions=[]"]]
    for kind in kinds:
        configs += [[f"model.attention={kind}", f"model.positions=[{p}]"] for p in positions]
    return configs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="glow-digits")
    p.add_argument("--kinds", nargs="+", default=["imap", "isdp"])
    p.add_argument("--positions", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args(argv)
    baseline = None
    for overrides in configurations(a.kinds, a.positions):
        cmd = [sys.executable, str(TRAIN_STEP), "--preset", a.preset, "--threads", str(a.threads),
               "--runs", str(a.runs)]
        cmd += [arg for o in overrides for arg in ("--set", o)]
        if a.batch_size:
            cmd += ["--batch-size", str(a.batch_size)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        baseline = baseline or result["train_step_s_median"]
        result["step_time_vs_none"] = round(result["train_step_s_median"] / baseline, 3)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
