"""Trainer: exact resume, atomic safe checkpoints, non-finite recovery."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from attnflow.config import resolve_config
from attnflow.train import CheckpointError, Trainer, load_checkpoint, load_run, save_checkpoint

TINY = ["model.steps=1", "model.hidden=8", "train.batch_size=16", "train.warmup_steps=5", "train.log_every=5"]


def tiny_cfg(*extra):
    return resolve_config("glow-digits", TINY + list(extra))


def final_params(run_dir):
    return load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["model"]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_resume_in_process_equals_uninterrupted(tmp_path):
    cfg = tiny_cfg("train.steps=24", "train.checkpoint_every=5", "train.ema_decay=0.9")
    Trainer(cfg, tmp_path / "full", progress=False).run()
    interrupted = Trainer(cfg, tmp_path / "cut", progress=False).run(stop_at=13)
    assert interrupted == {"interrupted_at": 13}
    Trainer(cfg, tmp_path / "cut", resume=True, progress=False).run()
    full, cut = load_checkpoint(tmp_path / "full/checkpoint.pt"), load_checkpoint(tmp_path / "cut/checkpoint.pt")
    assert_same_state(full["model"], cut["model"])
    assert_same_state(full["ema"], cut["ema"])
    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut/metrics.jsonl")
             if "bpd" in line and "test" not in line]
    assert steps == sorted(set(steps))  # no duplicated metric lines after resume


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    """A training process killed with SIGKILL mid-run, then resumed, ends where an
    uninterrupted run ends."""
    args = [a for s in TINY + ["train.steps=150", "train.checkpoint_every=10"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "attnflow.cli", "train", "--preset", "glow-digits", "--quiet", *args]
    subprocess.run(cmd + ["--out", str(tmp_path / "full")], check=True, capture_output=True)

    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "cut/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(line).get("step", 0) >= 25
                                    for line in metrics.read_text().splitlines() if line):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(tmp_path / "cut/checkpoint.pt")["step"]
    assert 0 < killed_at < 150, "the process must be killed mid-run"
    subprocess.run(cmd + ["--out", str(tmp_path / "cut"), "--resume"], check=True, capture_output=True)
    assert_same_state(final_params(tmp_path / "full"), final_params(tmp_path / "cut"))


def test_non_finite_steps_are_skipped_then_rolled_back(tmp_path):
    cfg = tiny_cfg("train.steps=12", "train.checkpoint_every=4", "train.max_bad_steps=3")
    trainer = Trainer(cfg, tmp_path, progress=False)
    real_log_prob, calls = trainer.model.log_prob, {"n": 0}

    def flaky(x, context=None):
        calls["n"] += 1
        out = real_log_prob(x, context)
        return out * float("nan") if 6 <= calls["n"] <= 8 else out

    trainer.model.log_prob = flaky
    trainer.run()
    events = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert sum(e.get("event") == "skipped_non_finite" for e in events) == 3
    rollback = [e for e in events if e.get("event") == "rollback"]
    assert len(rollback) == 1 and rollback[0]["lr_scale"] == 0.5 and rollback[0]["step"] == 4
    assert all(torch.isfinite(v).all() for v in final_params(tmp_path).values() if v.is_floating_point())
    assert trainer.step == 12


def test_non_finite_checkpoint_is_never_written(tmp_path):
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.tensor([float("nan")])}, "step": 1})
    assert not (tmp_path / "c.pt").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_corrupt_and_missing_checkpoints(tmp_path):
    cfg = tiny_cfg("train.steps=3")
    Trainer(cfg, tmp_path, progress=False).run()
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path / "nothing")


def test_checkpoint_loads_without_code_execution(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": {}, "step": 0, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_existing_run_needs_resume_and_same_model(tmp_path):
    cfg = tiny_cfg("train.steps=2")
    Trainer(cfg, tmp_path, progress=False).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="model"):
        Trainer(tiny_cfg("train.steps=2", "model.hidden=4"), tmp_path, resume=True, progress=False)
    # more steps on resume is allowed and continues from step 2
    more = Trainer(tiny_cfg("train.steps=4"), tmp_path, resume=True, progress=False)
    assert more.step == 2
    assert more.run()["step"] == 4


def test_shape_mismatch_is_explained(tmp_path):
    with pytest.raises(ValueError, match="model.shape=\\[1, 8, 8\\]"):
        Trainer(tiny_cfg("model.shape=[1, 4, 4]"), tmp_path, progress=False)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_time_limit_ends_training_early_and_counts_across_resume(tmp_path, clock):
    cfg = tiny_cfg("train.steps=100000", "train.time_limit_s=0.5", "train.checkpoint_every=10", f"train.clock={clock}")
    results = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert 0 < results["step"] < 100000
    assert 0.5 <= results["train_seconds"] < 5.0
    timed = [json.loads(line) for line in open(tmp_path / "run/metrics.jsonl") if "train_s" in line]
    assert timed and all(a["train_s"] <= b["train_s"] for a, b in zip(timed, timed[1:]))
    # the spent time is part of the checkpoint: resuming with the same limit trains no further
    again = Trainer(cfg, tmp_path / "run", resume=True, progress=False).run()
    assert again["step"] == results["step"]


def test_ema_is_bias_corrected_average_of_the_updates():
    """e_t = sum_i d^(t-i) (1-d) p_i / (1 - d^t): no share of the initial weights, e_1 = p_1."""
    from attnflow.train import ExponentialMovingAverage

    layer = torch.nn.Linear(3, 2).double()
    ema, d = ExponentialMovingAverage(layer, 0.9), 0.9
    seen = []
    for t in range(1, 8):
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_()
        seen.append([p.detach().clone() for p in layer.parameters()])
        ema.update(layer)
        for j, (name, _) in enumerate(layer.named_parameters()):
            expected = sum(d ** (t - i) * (1 - d) * ps[j] for i, ps in enumerate(seen, 1)) / (1 - d**t)
            torch.testing.assert_close(ema.shadow[name], expected)
    assert ema.updates == 7


def test_trainer_ema_averages_the_trained_weights_only(tmp_path):
    """The evaluation weights of a 10-step run at decay 0.999 are the bias-corrected average of
    the 10 updated weights (uncorrected, they would be 99% the initial ones)."""
    d = 0.999
    trainer = Trainer(tiny_cfg("train.steps=10", "train.ema_decay=0.999"), tmp_path / "run", progress=False)
    seen: list[dict[str, torch.Tensor]] = []
    trainer.run(on_step=lambda step: seen.append({k: p.detach().clone() for k, p in trainer.model.named_parameters()}))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["ema_updates"] == len(seen) == 10
    t = len(seen)
    for k in seen[0]:
        expected = sum(d ** (t - i) * (1 - d) * ps[k] for i, ps in enumerate(seen, 1)) / (1 - d**t)
        torch.testing.assert_close(state["ema"][k], expected, rtol=1e-4, atol=1e-6, msg=k)
