"""train.compile: the training forward through torch.compile equals eager, and a part that cannot
compile falls back to eager with one warning naming it (attnflow.train.compile)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from attnflow.config import resolve_config
from attnflow.models import build
from attnflow.train import Trainer, load_checkpoint
from attnflow.train.compile import CompiledForward

TINY = ["model.steps=1", "model.hidden=8", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1",
        "train.steps=4", "train.optimizer=sgd", "train.lr=0.01", "train.threads=1", "train.device=cpu",
        "data.test_images=32"]


def _failing_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("this backend cannot compile anything")


def _model_and_batch() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build("glow-digits", steps=1, hidden=8)
    return model, torch.rand(8, *model.shape) * 0.98 + 0.01


def test_failure_warns_once_names_the_part_and_falls_back_to_eager() -> None:
    model, x = _model_and_batch()
    expected = model.log_prob(x)
    forward = CompiledForward(model.log_prob, "the glow model", backend=_failing_backend)
    with pytest.warns(RuntimeWarning, match=r"torch.compile of the glow model failed in .*training with the eager"):
        out = forward(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert forward.failure
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(forward(x), expected, rtol=0, atol=0)


def test_errors_that_are_not_compile_failures_propagate() -> None:
    model, _ = _model_and_batch()
    forward = CompiledForward(model.log_prob, "the glow model", backend="eager")
    with pytest.raises(ValueError, match="shape"):
        forward(torch.rand(2, 3, 5, 5))
    assert forward.failure is None


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_forward_and_gradients_equal_eager(backend: str) -> None:
    """aot_eager: dynamo's graphs and AOT autograd (seconds); inductor: the default, generated C++
    (minutes on a CPU)."""
    model, x = _model_and_batch()
    model.log_prob(x)  # ActNorm's data-dependent initialisation, once
    forward = CompiledForward(model.log_prob, "the glow model", backend=backend)
    compiled = forward(x)
    assert forward.failure is None
    grads = torch.autograd.grad(compiled.sum(), list(model.parameters()))
    eager = model.log_prob(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)
    for g, e in zip(grads, torch.autograd.grad(eager.sum(), list(model.parameters()))):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_with_compile_equals_eager(tmp_path) -> None:
    """Four SGD steps of a tiny Glow: the same losses and final weights to float tolerance."""
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        trainer = Trainer(resolve_config("glow-digits", TINY + [f"train.compile={flag}"]), out, progress=False)
        trainer.run()
        if flag == "true":  # compiled for real, not fallen back to eager
            assert isinstance(trainer.forward, CompiledForward) and trainer.forward.failure is None
        losses = [json.loads(line)["bpd"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if "bpd" in json.loads(line)]
        runs[flag] = losses, load_checkpoint(out / "checkpoint.pt")["model"]
    (eager_losses, eager_state), (compiled_losses, compiled_state) = runs["false"], runs["true"]
    assert len(eager_losses) == 4
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
