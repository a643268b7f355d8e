"""Device handling: random draws on the generator's device, masks identical on every device,
and (with CUDA) models that build, run and sample on the GPU with CPU-seeded generators."""
from __future__ import annotations

import pytest
import torch

from attnflow.evaluate.perturbation import noise_perturbation
from attnflow.models.glow import glow
from attnflow.nn.invattn import ISDP

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
