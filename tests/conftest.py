import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small Glow trained for 30 steps on the bundled digits (a run directory), shared by the
    tests that only read it."""
    from attnflow.config import resolve_config
    from attnflow.train import Trainer

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = resolve_config("glow-digits", ["train.steps=30", "model.hidden=16", "model.steps=2", "train.threads=1"])
    Trainer(cfg, out, progress=False).run()
    torch.set_num_threads(threads)
    return out
