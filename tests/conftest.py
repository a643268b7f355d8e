import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache(tmp_path_factory):
    """Dataset caches go to a temporary directory, never beside a dataset in the source tree or
    under /usr/share (subprocesses inherit the variable)."""
    from attnflow.data.cache import CACHE_ENV

    patch = pytest.MonkeyPatch()
    patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("dataset-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _keep_threads():
    """Commands run in-process set torch's thread count (``--threads``); the next test gets it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
