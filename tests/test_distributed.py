"""Data-parallel training under torchrun: 2 Gloo processes on the CPU train exactly as one process
on the same global batch (parameters to float tolerance), a run resumes under another number of
processes, and a batch that does not split over the processes is a one-line error.

The runs use plain SGD: Adam divides each gradient by its own magnitude, so parameters whose exact
gradient is zero (ActNorm biases right after their data initialisation) move by a learning-rate
sized step whose sign is the round-off of a zero; SGD keeps round-off at round-off."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnflow.config import resolve_config
from attnflow.train import Trainer
from attnflow.train.distributed import Distributed, under_torchrun

SMALL = ["model.hidden=8", "train.batch_size=16", "train.threads=1", "train.device=cpu", "train.optimizer=sgd",
         "train.lr=0.05", "train.warmup_steps=0", "train.log_every=1"]
SIZES = {"glow-digits": ["model.steps=1"], "resflow-digits": ["model.blocks=1"],
         "resflow-digits-hybrid": ["model.blocks=1", "model.classifier_hidden=8"]}


def _torchrun(preset: str, out: Path, settings: list[str], resume: bool = False,
              processes: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "attnflow.cli", "train", "--preset", preset, "--out", str(out), "--quiet",
           *[a for s in settings for a in ("--set", s)], *(["--resume"] if resume else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _single(preset: str, out: Path, settings: list[str], resume: bool = False) -> None:
    threads = torch.get_num_threads()
    Trainer(resolve_config(preset, settings), out, resume=resume, progress=False).run()
    torch.set_num_threads(threads)


def _assert_same_parameters(a: Path, b: Path) -> None:
    first = torch.load(a / "checkpoint.pt", weights_only=True)
    second = torch.load(b / "checkpoint.pt", weights_only=True)
    assert first["step"] == second["step"]
    assert first["model"].keys() == second["model"].keys()  # no "module." prefix from DDP
    for key, value in first["model"].items():
        torch.testing.assert_close(second["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert first["sampler"] == second["sampler"]
    assert torch.equal(first["dequant_rng"], second["dequant_rng"])
    assert torch.equal(first["torch_rng"], second["torch_rng"])


@pytest.mark.parametrize("preset", ["glow-digits", pytest.param("resflow-digits", marks=pytest.mark.slow),
                                    pytest.param("resflow-digits-hybrid", marks=pytest.mark.slow)])
def test_two_processes_train_as_one(tmp_path: Path, preset: str) -> None:
    """Glow (ActNorm data initialisation over the global batch), a Residual Flow (Hutchinson
    vectors drawn per sample of the global batch, spectral-norm buffers) and the hybrid model
    (its classifier head's gradients averaged too) after 3 steps."""
    settings = [*SMALL, *SIZES[preset], "train.steps=3"]
    done = _torchrun(preset, tmp_path / "ddp", settings)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test bits/dim") == 1  # rank 0 alone reports
    _single(preset, tmp_path / "one", settings)
    _assert_same_parameters(tmp_path / "one", tmp_path / "ddp")
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert sum('"bpd"' in r for r in rows) == 3  # one writer


def test_resume_under_another_number_of_processes(tmp_path: Path) -> None:
    """2 steps with 2 processes, resumed to 4 with one process, equal 4 steps of one process."""
    settings = [*SMALL, *SIZES["glow-digits"]]
    done = _torchrun("glow-digits", tmp_path / "mixed", [*settings, "train.steps=2"])
    assert done.returncode == 0, done.stderr[-2000:]
    _single("glow-digits", tmp_path / "mixed", [*settings, "train.steps=4"], resume=True)
    _single("glow-digits", tmp_path / "one", [*settings, "train.steps=4"])
    _assert_same_parameters(tmp_path / "one", tmp_path / "mixed")


def test_batch_that_does_not_split_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"train.batch_size=15 does not split evenly over 2 processes; "
                                         r"set train.batch_size to a multiple of 2") as err:
        Distributed(rank=1, world_size=2).split(15)
    assert "\n" not in str(err.value)
    shard = Distributed(rank=1, world_size=2)
    assert shard.split(16) == 8 and shard.rows == slice(8, 16)


def test_one_process_starts_no_process_group(tmp_path: Path) -> None:
    assert not under_torchrun()
    trainer = Trainer(resolve_config("glow-digits", [*SMALL, *SIZES["glow-digits"], "train.steps=1"]), tmp_path,
                      progress=False)
    assert trainer.dist.world_size == 1 and trainer.dist.shard() is None
    assert trainer.ddp is None  # the model itself, no DDP wrapper
    trainer.run()
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_nccl_process_trains_on_cuda(tmp_path: Path) -> None:
    """torchrun with one process on CUDA: the NCCL process group, the model on cuda:0."""
    settings = [*SMALL, *SIZES["glow-digits"], "train.steps=2", "train.device=cuda"]
    done = _torchrun("glow-digits", tmp_path / "nccl", settings, processes=1)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(tmp_path / "nccl" / "checkpoint.pt", weights_only=True)["step"] == 2
