"""The training progress bar: training seconds toward train.time_limit_s when one is set (the
step in the postfix), steps toward train.steps otherwise."""
from attnflow.config import resolve_config
from attnflow.train import Trainer
from attnflow.train.progress import TrainingBar


def test_time_limited_bar_counts_training_seconds(capsys):
    bar = TrainingBar(10**8, 60.0, step=4, seconds=12.0, disable=False)
    bar.set_postfix(bpd="3.210")
    bar.update(5, 15.0)
    bar.update(3, 9.0)  # a rollback moves it back
    assert (bar.bar.total, bar.bar.n) == (60.0, 9.0)
    bar.bar.refresh()
    bar.close()
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "9.0/60.0 s of training" in last and "step=3" in last and "bpd=3.210" in last and "100000000" not in err


def test_step_bar_without_time_limit(capsys):
    bar = TrainingBar(100, 0.0, step=4, seconds=12.0, disable=False)
    bar.update(7, 20.0)
    bar.close()
    assert "7/100" in capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]


def test_trainer_shows_seconds_under_a_time_limit(tmp_path, capsys):
    cfg = resolve_config("glow-digits", ["model.hidden=8", "model.steps=1", "train.steps=100000000",
                                         "train.time_limit_s=0.5", "train.threads=1"])
    Trainer(cfg, tmp_path / "run", progress=True).run()
    err = capsys.readouterr().err
    assert "/0.5 s of training" in err
    assert "/100000000" not in err
