"""Training never hangs, interrupts resume exactly, one training per run directory (issue 12)."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from attnflow.config import resolve_config
from attnflow.schema import ConfigError
from attnflow.train import NonFiniteTraining, Trainer, load_checkpoint
from attnflow.train.runlock import RunLocked
from attnflow.train.signals import StopRequests

TINY = ["model.steps=1", "model.hidden=8", "train.batch_size=16", "train.warmup_steps=5", "train.log_every=5",
        "train.threads=1"]
CLI = [sys.executable, "-m", "attnflow.cli", "train", "--preset", "glow-digits", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_cfg(*extra):
    return resolve_config("glow-digits", TINY + list(extra))


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def events(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl") if line.strip()]


# -- divergence ends -------------------------------------------------------------------------

def test_huge_learning_rate_stops_within_a_minute_with_a_clear_error(tmp_path):
    """`attnflow train --preset glow-digits --set train.lr=1e6` used to roll back forever."""
    start = time.monotonic()
    proc = subprocess.run(CLI + ["--out", str(tmp_path / "run"), "--set", "train.lr=1e6", "--set", "train.threads=1"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert elapsed < 60
    error = [line for line in proc.stderr.splitlines() if line.startswith("attnflow train: error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert re.search(r"training diverged: .*after 5 rollbacks \(learning rate [0-9.e+-]+ at the last try, "
                     r"train.lr=1e\+06\); last finite loss [0-9.]+ bits/dim at step \d+; "
                     r"the checkpoint of step 0 is kept",
                     error[0]), error[0]
    rows = events(tmp_path / "run")
    assert len(rows) <= (5 + 1) * (5 + 1) + 1  # bounded: max_rollbacks x (max_bad_steps + rollback) + diverged
    assert rows[-1]["event"] == "diverged"
    assert load_checkpoint(tmp_path / "run/checkpoint.pt")["step"] == 0  # the last good checkpoint is left


def test_each_rollback_lowers_the_learning_rate_further_then_training_stops(tmp_path):
    cfg = tiny_cfg("train.steps=20", "train.checkpoint_every=2", "train.max_bad_steps=2", "train.max_rollbacks=3")
    trainer = Trainer(cfg, tmp_path, progress=False)
    real_log_prob, calls = trainer.model.log_prob, {"n": 0}

    def diverging(x, context=None):
        calls["n"] += 1
        out = real_log_prob(x, context)
        return out * float("nan") if calls["n"] > 3 else out

    trainer.model.log_prob = diverging
    with pytest.raises(NonFiniteTraining, match=r"after 3 rollbacks .* last finite loss [0-9.]+ bits/dim at step 3; "
                                                r"the checkpoint of step 2 is kept"):
        trainer.run()
    rows = events(tmp_path)
    assert [r["lr_scale"] for r in rows if r.get("event") == "rollback"] == [0.5, 0.25, 0.125]
    assert sum(r.get("event") == "skipped_non_finite" for r in rows) == 2 * 4
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert Trainer(cfg, tmp_path, resume=True, progress=False).step == 2  # lock released, resumable


def test_an_update_that_makes_weights_non_finite_is_never_checkpointed(tmp_path):
    cfg = tiny_cfg("train.steps=6", "train.checkpoint_every=1", "train.max_bad_steps=2")
    trainer = Trainer(cfg, tmp_path, progress=False)
    real_step, calls = trainer.optimizer.step, {"n": 0}

    def poisoning_step(*args, **kwargs):
        calls["n"] += 1
        real_step(*args, **kwargs)
        if calls["n"] == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))

    trainer.optimizer.step = poisoning_step
    assert trainer.run()["step"] == 6
    assert any(r.get("event") == "rollback" for r in events(tmp_path))


# -- interrupts are exact --------------------------------------------------------------------

def test_sigint_in_the_middle_of_a_step_resumes_exactly(tmp_path):
    cfg = tiny_cfg("train.steps=12", "train.checkpoint_every=100", "train.ema_decay=0.9")
    Trainer(cfg, tmp_path / "full", progress=False).run()
    trainer = Trainer(cfg, tmp_path / "cut", progress=False)
    real_step, calls = trainer.optimizer.step, {"n": 0}

    def interrupted_step(*args, **kwargs):  # Ctrl-C arrives between the update and the step count
        real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.optimizer.step = interrupted_step
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even under CI
    try:
        assert trainer.run() == {"interrupted_at": 7, "signal": "SIGINT"}
    finally:
        signal.signal(signal.SIGINT, previous)
    assert load_checkpoint(tmp_path / "cut/checkpoint.pt")["step"] == 7
    Trainer(cfg, tmp_path / "cut", resume=True, progress=False).run()
    full, cut = load_checkpoint(tmp_path / "full/checkpoint.pt"), load_checkpoint(tmp_path / "cut/checkpoint.pt")
    assert_same_params(full["model"], cut["model"])
    assert_same_params(full["ema"], cut["ema"])


def test_sigint_at_a_random_time_then_resume_equals_uninterrupted(tmp_path):
    args = [a for s in TINY + ["train.steps=200", "train.checkpoint_every=1000"] for a in ("--set", s)]
    subprocess.run(CLI + args + ["--out", str(tmp_path / "full")], check=True, capture_output=True, env=ENV)
    delay = random.Random().uniform(0.0, 0.5)
    proc = subprocess.Popen(CLI + args + ["--out", str(tmp_path / "cut")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    metrics, deadline = tmp_path / "cut/metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"bpd"' in metrics.read_text()):
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (delay, stderr[-2000:])
    stopped = load_checkpoint(tmp_path / "cut/checkpoint.pt")["step"]
    assert 0 < stopped < 200 and f"SIGINT: stopped at step {stopped}" in stderr, delay
    subprocess.run(CLI + args + ["--out", str(tmp_path / "cut"), "--resume"], check=True, capture_output=True, env=ENV)
    full = load_checkpoint(tmp_path / "full/checkpoint.pt")["model"]
    assert_same_params(full, load_checkpoint(tmp_path / "cut/checkpoint.pt")["model"])


def test_stop_requests_leave_an_ignored_signal_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job a script started in the background
    try:
        with StopRequests() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stop_requests_count_a_lost_parent_as_sigterm(monkeypatch):
    """A run of `attnflow experiment --jobs N` whose experiment died (it has another parent now)
    stops as on one SIGTERM; with its parent alive, or outside an experiment, nothing is requested."""
    from attnflow.train.signals import PARENT_PID_ENV

    monkeypatch.delenv(PARENT_PID_ENV, raising=False)
    assert StopRequests().signal is None
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getppid()))
    assert StopRequests().signal is None
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getppid() + 1))  # the experiment that started us is gone
    with StopRequests() as stop:
        assert stop.signal == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM"):  # a real signal now is the second one
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)


# -- one training per run directory; stale files; resumed settings -------------------------

@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # the refused lock cleans up
def test_a_second_training_into_a_locked_run_directory_refuses_naming_the_holder(tmp_path):
    cfg = tiny_cfg("train.steps=4")
    first = Trainer(cfg, tmp_path, progress=False)
    with pytest.raises(RunLocked, match=rf"{tmp_path} is in use by attnflow train \(pid {os.getpid()} on .*\); "
                                        "wait for that training to end or choose another --out"):
        Trainer(cfg, tmp_path, resume=True, progress=False)
    first.run()
    assert Trainer(tiny_cfg("train.steps=6"), tmp_path, resume=True, progress=False).run()["step"] == 6


def test_stale_temporary_files_are_removed_on_the_next_start(tmp_path):
    Trainer(tiny_cfg("train.steps=2"), tmp_path, progress=False).run()
    orphan = tmp_path / ".checkpoint.pt.k3j2h1.tmp"  # what a kill during a write leaves
    orphan.write_bytes(b"half a checkpoint")
    Trainer(tiny_cfg("train.steps=3"), tmp_path, resume=True, progress=False).run()
    assert not orphan.exists()


def test_a_resume_that_changes_settings_records_them(tmp_path):
    Trainer(tiny_cfg("train.steps=4"), tmp_path, progress=False).run()
    Trainer(tiny_cfg("train.steps=6", "train.lr=5e-4"), tmp_path, resume=True, progress=False).run()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["steps"] == 6 and saved["train"]["lr"] == 5e-4
    resume = [r for r in events(tmp_path) if r.get("event") == "resume"]
    assert resume == [{"step": 4, "event": "resume", "changed": {"train.steps": [4, 6], "train.lr": [0.002, 5e-4]}}]


def test_a_broken_config_json_is_named_on_resume(tmp_path):
    Trainer(tiny_cfg("train.steps=2"), tmp_path, progress=False).run()
    (tmp_path / "config.json").write_text('{"model": {"family"')
    with pytest.raises(ConfigError, match=f"{tmp_path / 'config.json'} is not a readable JSON configuration"):
        Trainer(tiny_cfg("train.steps=3"), tmp_path, resume=True, progress=False)
