"""Device handling: random draws on the generator's device, masks identical on every device,
and (with CUDA) models that build, run and sample on the GPU with CPU-seeded generators."""
from __future__ import annotations

import pytest
import torch

from attnflow.cli import main
from attnflow.config import resolve_config
from attnflow.device import DeviceUnavailable, resolve_device
from attnflow.evaluate.perturbation import noise_perturbation
from attnflow.flows.invertible_attention import ISDP
from attnflow.models.glow import glow
from attnflow.schema import ConfigError
from attnflow.train import Trainer, load_checkpoint, load_run

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")

TINY = ["model.steps=1", "model.hidden=8", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=2",
        "train.threads=1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _small_glow(attention: str = "isdp") -> torch.nn.Module:
    torch.manual_seed(0)
    return glow(shape=(1, 8, 8), scales=1, steps=1, hidden=8, attention=attention, positions=[4])


def test_sample_draws_latents_from_the_generator() -> None:
    """The latents come from the generator's own stream, whatever the model's device."""
    flow = _small_glow().eval()
    a = flow.sample(3, generator=torch.Generator().manual_seed(5))
    b = flow.sample(3, generator=torch.Generator().manual_seed(5))
    z = torch.randn(3, flow.latent_dim, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a, flow.decode(z).clamp(0, 1))


def test_mask_does_not_depend_on_global_generator() -> None:
    layer = ISDP(2, patches=4, seed=11)
    first = layer.feature_mask(4, 4).clone()
    layer._masks.clear()
    torch.manual_seed(123)
    assert torch.equal(layer.feature_mask(4, 4), first)


@requires_cuda
def test_isdp_builds_and_runs_under_a_cuda_default_device() -> None:
    """The bug of issue 9: a CPU generator paired with a CUDA tensor at build time."""
    cpu_mask = ISDP(2, patches=4, seed=3).feature_mask(4, 4)
    with torch.device("cuda"):
        layer = ISDP(2, patches=4, seed=3)
        mask = layer.feature_mask(4, 4)
        flow = _small_glow()
    assert mask.device.type == "cuda"
    assert torch.equal(mask.cpu(), cpu_mask)
    x = torch.rand(2, 1, 8, 8, device="cuda")
    assert torch.isfinite(flow.log_prob(x)).all()
    torch.testing.assert_close(flow.decode(flow.encode(x)), x, atol=1e-4, rtol=1e-4)


@requires_cuda
def test_sample_and_perturbation_on_cuda_with_cpu_generators() -> None:
    flow = _small_glow().eval()
    cpu = flow.sample(2, generator=torch.Generator().manual_seed(1))
    flow = flow.to("cuda")
    gpu = flow.sample(2, generator=torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    x = torch.rand(2, 1, 8, 8, device="cuda")
    rows, images = noise_perturbation(flow, x, 256, [0.0, 0.05], torch.Generator().manual_seed(2))
    assert images.device.type == "cuda" and len(rows) == 2


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_train_device_cpu_trains_and_resumes_as_before(tmp_path) -> None:
    """``train.device=cpu`` is the CPU path unchanged: same weights as the default (``auto``,
    the CPU on this machine) and an interrupted, resumed run ends where the full one ends."""
    default = resolve_config("glow-digits", TINY + ["train.steps=6", "train.checkpoint_every=2"])
    on_cpu = resolve_config("glow-digits", TINY + ["train.steps=6", "train.checkpoint_every=2", "train.device=cpu"])
    assert default["train"]["device"] == "auto" and on_cpu["train"]["device"] == "cpu"
    Trainer(default, tmp_path / "default", progress=False).run()
    Trainer(on_cpu, tmp_path / "full", progress=False).run()
    assert Trainer(on_cpu, tmp_path / "cut", progress=False).run(stop_at=3) == {"interrupted_at": 3}
    Trainer(on_cpu, tmp_path / "cut", resume=True, progress=False).run()
    final = {name: load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("default", "full", "cut")}
    if not torch.cuda.is_available():
        _states_equal(final["default"], final["full"])
    _states_equal(final["full"], final["cut"])


def test_bad_device_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.device must be one of: auto, cpu, cuda, cuda:N"):
        resolve_config("glow-digits", ["train.device=gpu"])
    with pytest.raises(DeviceUnavailable, match="unknown device 'cuda:x'"):
        resolve_device("cuda:x")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@without_cuda
def test_unavailable_cuda_is_a_one_line_error(tmp_path, capsys, trained_run) -> None:
    with pytest.raises(DeviceUnavailable, match=r"^cuda requested but torch.cuda.is_available\(\) is False; "
                                                  r"set train.device=cpu$"):
        Trainer(resolve_config("glow-digits", TINY + ["train.device=cuda"]), tmp_path / "run", progress=False)
    for argv in (["eval", str(trained_run), "--device", "cuda"],
                 ["sample", str(trained_run), "--device", "cuda:1", "--out", str(tmp_path / "s.png")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exc.value.code == 2
        assert lines == [f"attnflow {argv[0]}: error: {argv[3]} requested but torch.cuda.is_available() is "
                         "False; use --device cpu"]
    with pytest.raises(SystemExit) as exc:
        main(["certify", str(trained_run), "--device", "gpu"])
    assert exc.value.code == 2 and "must be one of: auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_checkpoint_is_mapped_to_the_requested_device(trained_run) -> None:
    """``map_location`` places every tensor where asked, whatever device wrote them (``meta``
    stands in for a device this machine may lack), and ``load_run`` builds the model there."""
    path = trained_run / "checkpoint.pt"
    on_cpu = load_checkpoint(path)["model"]
    on_meta = load_checkpoint(path, map_location="meta")["model"]
    assert on_meta.keys() == on_cpu.keys() and all(t.is_meta for t in on_meta.values())
    model, _ = load_run(trained_run, device=torch.device("cpu"))
    _states_equal(model.state_dict(), load_checkpoint(path, map_location=torch.device("cpu"))["model"])


@requires_cuda
def test_cuda_run_evaluates_on_the_cpu_and_back(tmp_path) -> None:
    """A run trained and resumed on CUDA loads on the CPU (and a CPU run on CUDA) with equal weights."""
    cfg = resolve_config("glow-digits", TINY + ["train.steps=4", "train.checkpoint_every=2", "train.device=cuda"])
    trainer = Trainer(cfg, tmp_path / "gpu", progress=False)
    assert next(trainer.model.parameters()).device.type == "cuda"
    trainer.run(stop_at=2)
    Trainer(cfg, tmp_path / "gpu", resume=True, progress=False).run()
    cpu_model, _ = load_run(tmp_path / "gpu", device="cpu")
    gpu_model, _ = load_run(tmp_path / "gpu", device="cuda")
    assert next(cpu_model.parameters()).device.type == "cpu"
    for (k, a), b in zip(cpu_model.state_dict().items(), gpu_model.state_dict().values()):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu()), k
