"""train.precision = "bf16": bfloat16 autocast inside the inner networks only (CPU autocast supports
bfloat16, so these run without a GPU); parameters, log-dets, contractive branches and evaluation
stay float32, and a bf16-trained model is still an exact bijection."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attnflow.config import resolve_config
from attnflow.flows.glow import AffineCoupling
from attnflow.nets.denseflow_coupling_net import DenseFlowCouplingNet
from attnflow.precision import inner_network, mixed_precision
from attnflow.testing import check_bijection
from attnflow.train import Trainer

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = ["model.hidden=8", "train.batch_size=16", "train.threads=1", "train.warmup_steps=0", "train.log_every=1",
        "train.precision=bf16"]
SIZES = {"glow-digits": ["model.steps=1"], "denseflow-digits": ["model.units=[1, 1]", "model.modules=[1, 1]"],
         "resflow-digits": ["model.blocks=1"]}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _record_dtypes(model: nn.Module, kind: type) -> list[torch.dtype]:
    """The output dtypes of the first layer with parameters inside every ``kind`` module, as it runs."""
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, kind):
            first = next(m for m in module.modules()
                         if m is not module and next(m.parameters(recurse=False), None) is not None)
            first.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    return seen


def _train(preset: str, out: Path, steps: int = 2, device: str = "cpu") -> Trainer:
    cfg = resolve_config(preset, [*TINY, *SIZES[preset], f"train.device={device}", f"train.steps={steps + 1}"])
    return Trainer(cfg, out, progress=False)


@pytest.mark.parametrize("preset, net", [("glow-digits", AffineCoupling), ("denseflow-digits", DenseFlowCouplingNet)])
def test_bf16_training_step(tmp_path: Path, preset: str, net: type) -> None:
    """The inner networks compute in bfloat16, the loss is finite, the parameters stay float32."""
    trainer = _train(preset, tmp_path)
    seen = _record_dtypes(trainer.model, net)
    trainer.run(stop_at=2)
    assert seen and set(seen) == {torch.bfloat16}
    rows = [r for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"bpd"' in r]
    assert len(rows) == 2 and all("NaN" not in r and "Infinity" not in r for r in rows)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    seen.clear()
    with torch.no_grad():  # evaluation: float32, no autocast
        trainer.model.eval().log_prob(torch.rand(2, 1, 8, 8))
    assert set(seen) == {torch.float32}


def test_bf16_trained_glow_is_an_exact_bijection(tmp_path: Path) -> None:
    """Inverse and float64 brute-force log-det of the trained transform (evaluation has no autocast)."""
    trainer = _train("glow-digits", tmp_path)
    trainer.run(stop_at=2)
    assert any(bool(p.detach().abs().max() > 0) for n, p in trainer.model.named_parameters() if "net.4" in n)
    transform = trainer.model.transform.double().eval()
    check_bijection(transform, torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.9 + 0.05)


def test_bf16_keeps_contractive_branches_float32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A residual preset under bf16: its branches compute in float32 with autocast off (the
    branch output and the autocast state seen where each block linearizes its branch), also
    under a caller's own autocast."""
    from attnflow.flows import residual_block

    seen: list[tuple[torch.dtype, bool]] = []
    linearize = residual_block.linearize

    def recording(branch: nn.Module, x: torch.Tensor):
        lin = linearize(branch, x)
        seen.append((lin.output.dtype, torch.is_autocast_enabled("cpu")))
        return lin

    monkeypatch.setattr(residual_block, "linearize", recording)
    trainer = _train("resflow-digits", tmp_path, steps=1)
    trainer.run(stop_at=1)
    assert seen and set(seen) == {(torch.float32, False)}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        trainer.model.eval().log_prob(torch.rand(2, 1, 8, 8))
    assert seen and set(seen) == {(torch.float32, False)}


def test_inner_network_without_context_is_the_plain_call() -> None:
    net = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.rand(2, 2, 4, 4)
    assert torch.equal(inner_network(net, x), net(x))
    with mixed_precision("bf16"):
        out = inner_network(net, x)
    assert out.dtype == torch.float32 and not torch.equal(out, net(x))  # computed in bf16, returned as float32
    torch.testing.assert_close(out, net(x), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid: fp32, bf16"):
        with mixed_precision("fp16"):
            pass


@requires_cuda
def test_bf16_training_step_on_cuda(tmp_path: Path) -> None:
    trainer = _train("glow-digits", tmp_path, device="cuda")
    seen = _record_dtypes(trainer.model, AffineCoupling)
    trainer.run(stop_at=2)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.is_cuda and torch.isfinite(p).all() for p in trainer.model.parameters())
