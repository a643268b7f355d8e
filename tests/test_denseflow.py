"""DenseFlow: Nyström attention, dense coupling network, cross-unit coupling (noise augmentation),
the assembled model, its presets and the importance-weighted likelihood."""
from __future__ import annotations

import math
import tomllib
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from attnflow.core import standard_normal_log_prob
from attnflow.evaluate.importance import importance_weighted_bits_per_dim, importance_weighted_log_prob
from attnflow.evaluate.likelihood import evaluate_bits_per_dim
from attnflow.flows.denseflow_unit import invertible_unit
from attnflow.flows.glow import AffineCoupling
from attnflow.flows.noise_augmentation import CrossUnitCoupling, CrossUnitStage
from attnflow.models.denseflow import DenseFlowModel, denseflow
from attnflow.models.glow import glow
from attnflow.nets.denseflow_coupling_net import DenseBlock, DenseFlowCouplingNet, dense_net_factory
from attnflow.nets.nystrom_attention import NystromAttention, iterative_pinv
from attnflow.testing import brute_force_logdet, check_bijection

TINY = dict(shape=(1, 4, 4), units=(3, 2), modules=(1, 1), growth=2, hidden=4, depth=1, dense_growth=2,
            landmarks=2, noise_depth=1, noise_growth=2)


def perturb_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its initialisation (zero-initialised outputs would make couplings
    and noise networks trivial)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def noise_layers(flow: torch.nn.Module) -> list[CrossUnitCoupling]:
    return [m for m in flow.modules() if isinstance(m, CrossUnitCoupling)]


def tiny_model(**overrides) -> DenseFlowModel:
    flow = denseflow(**{**TINY, **overrides}).double()
    flow.train()
    flow.log_prob(torch.rand(8, *flow.shape, dtype=torch.float64))  # ActNorm data-dependent init
    return perturb_(flow).eval()


# -- Nyström attention -----------------------------------------------------------------------

def exact_attention(attn: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention with the module's own projections, computed independently."""
    b, c, h, w = x.shape
    d = -(-c // attn.heads)  # heads that do not divide C: padded projection width heads * d
    qkv = F.conv2d(x, attn.qkv.weight, attn.qkv.bias).flatten(2)  # [B, 3 heads d, N]
    q, k, v = (t.reshape(b, attn.heads, d, h * w) for t in qkv.chunk(3, dim=1))
    weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, attn.heads * d, h, w)
    return F.conv2d(out, attn.out.weight, attn.out.bias)


@pytest.mark.parametrize("landmarks,heads", [(9, 2), (20, 2), (9, 3)])  # 3 heads of 4 channels: padded
def test_nystrom_is_exact_attention_when_landmarks_cover_all_tokens(landmarks, heads):
    torch.manual_seed(1)  # A pinv(A) A = A is exact only up to A's conditioning: a fixed, well-conditioned draw
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    attn = NystromAttention(4, heads=heads, landmarks=landmarks, pinv="exact").double()
    torch.testing.assert_close(attn(x), exact_attention(attn, x), atol=1e-10, rtol=1e-8)
    attn.pinv, attn.pinv_iterations = "iterative", 40
    torch.testing.assert_close(attn(x), exact_attention(attn, x), atol=1e-7, rtol=1e-6)


def test_nystrom_with_few_landmarks_approximates():
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    attn = NystromAttention(4, heads=1, landmarks=2, pinv="exact").double()
    out, exact = attn(x), exact_attention(attn, x)
    assert out.shape == exact.shape == x.shape
    assert (out - exact).abs().max() > 1e-6  # a true approximation, not a hidden exact path


def test_iterative_pinv_converges_to_pinv():
    a = torch.softmax(torch.randn(3, 5, 5, dtype=torch.float64) * 2, dim=-1)
    torch.testing.assert_close(iterative_pinv(a, 40), torch.linalg.pinv(a), atol=1e-8, rtol=1e-6)


def test_nystrom_bad_arguments():
    with pytest.raises(ValueError, match=r"heads must be in 1\.\.channels"):
        NystromAttention(6, heads=7)
    with pytest.raises(ValueError, match="landmarks >= 1"):
        NystromAttention(4, landmarks=0)
    with pytest.raises(ValueError, match="pinv"):
        NystromAttention(4, pinv="svd")
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        NystromAttention(4)(torch.randn(2, 3, 4, 4))


# -- dense coupling network and intra-unit coupling ------------------------------------------

def test_dense_block_and_coupling_net_shapes_and_zero_init():
    x = torch.randn(2, 3, 4, 4)
    assert DenseBlock(3, 5, depth=3, growth=2)(x).shape == (2, 5, 4, 4)
    net = DenseFlowCouplingNet(3, 6, hidden=4, depth=2, growth=2, heads=2, landmarks=4)
    assert torch.equal(net(x), torch.zeros(2, 6, 4, 4))  # couplings start at the identity
    with pytest.raises(ValueError, match="dense block sizes"):
        DenseBlock(3, 5, depth=0, growth=2)


def test_dense_coupling_net_without_attention():
    with_attention = DenseFlowCouplingNet(3, 6, hidden=4, depth=2, growth=2, heads=2, landmarks=4)
    without = DenseFlowCouplingNet(3, 6, hidden=4, depth=2, growth=2, heads=0)
    assert without.attention is None and not any(isinstance(m, NystromAttention) for m in without.modules())
    assert sum(p.numel() for p in without.parameters()) < sum(p.numel() for p in with_attention.parameters())
    x = torch.randn(2, 3, 4, 4)
    perturb_(without)
    assert without(x).shape == (2, 6, 4, 4) and without(x).abs().max() > 0
    with pytest.raises(ValueError, match="heads must be >= 0"):
        DenseFlowCouplingNet(3, 6, hidden=4, heads=-1)


def test_denseflow_without_attention_has_no_nystrom_module():
    flow, with_attention = tiny_model(heads=0), tiny_model(heads=2)
    assert not any(isinstance(m, NystromAttention) for m in flow.modules())
    assert any(isinstance(m, NystromAttention) for m in with_attention.modules())
    assert sum(p.numel() for p in flow.parameters()) < sum(p.numel() for p in with_attention.parameters())


def test_affine_coupling_with_dense_net_is_a_bijection():
    factory = dense_net_factory(hidden=4, depth=2, growth=2, heads=2, landmarks=3)
    for mask in ("channel", "channel-inv"):
        layer = perturb_(AffineCoupling(5, mask=mask, net_factory=factory)).double()
        check_bijection(layer, torch.randn(2, 5, 3, 3, dtype=torch.float64))


def test_invertible_unit_is_a_bijection():
    unit = invertible_unit(4, 2, dense_net_factory(hidden=4, depth=1, growth=2, landmarks=2)).double()
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    unit(x)  # ActNorm initialisation
    check_bijection(perturb_(unit), x)
    with pytest.raises(ValueError, match="at least 1 module"):
        invertible_unit(4, 0, dense_net_factory())


# -- cross-unit coupling ---------------------------------------------------------------------

def test_cross_unit_coupling_bound_term_and_exact_inverse():
    layer = perturb_(CrossUnitCoupling(history_channels=3, noise_channels=2, depth=1, growth=2)).double()
    z, history = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    z_aug, bound = layer(z, history)
    assert z_aug.shape == (4, 4, 3, 3)
    assert torch.equal(layer.inverse(z_aug), z)
    mu, log_sigma = layer.noise_parameters(history)
    assert log_sigma.abs().max() > 1e-3  # a non-trivial scale, so the test can tell terms apart
    log_q = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z_aug[:, 2:]).flatten(1).sum(1)
    torch.testing.assert_close(bound, -log_q)  # the bound term is -log q(noise | z)


def test_cross_unit_coupling_is_a_bijection_in_the_noise():
    layer = perturb_(CrossUnitCoupling(history_channels=3, noise_channels=2, depth=1, growth=2)).double()
    z, history = torch.randn(2, 2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    e = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    layer.fixed_noise = e
    _, bound = layer(z, history)
    for b in range(2):
        def noise_map(v, b=b):
            layer.fixed_noise = v
            return layer(z[b : b + 1], history[b : b + 1])[0][:, 2:]

        expected = brute_force_logdet(noise_map, e[b : b + 1])  # log|det d eta / d e| = sum log sigma
        torch.testing.assert_close(bound[b : b + 1] + standard_normal_log_prob(e[b : b + 1]), expected)
    layer.fixed_noise = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="fixed_noise must have shape"):
        layer(z, history)


def extended_map(transform, x_shape, noise_shapes, layers):
    """``(x, e_1, ..., e_m) -> z`` as a function of one flat vector: a square, deterministic map."""
    sizes = [math.prod(x_shape)] + [math.prod(s) for s in noise_shapes]

    def fn(v):
        parts = v.split(sizes, dim=1)
        for layer, part, s in zip(layers, parts[1:], noise_shapes):
            layer.fixed_noise = part.reshape(1, *s)
        return transform(parts[0].reshape(1, *x_shape))[0]

    return fn, sum(sizes)


def test_stage_with_fixed_noise_is_a_bijection_of_data_and_noise():
    def unit(c):
        return perturb_(invertible_unit(c, 1, dense_net_factory(hidden=4, depth=1, growth=2, landmarks=2)))

    stage = perturb_(CrossUnitStage(2, units=3, growth=2, unit_factory=unit, noise_depth=1, noise_growth=2))
    stage = stage.double().eval()
    assert stage.out_channels == 6
    layers = noise_layers(stage)
    noise_shapes = [(1, 2, 2, 2)] * 2
    fn, total = extended_map(stage, (2, 2, 2), [s[1:] for s in noise_shapes], layers)
    for _ in range(2):
        v = torch.randn(1, total, dtype=torch.float64)
        x, e = v[:, :8].reshape(1, 2, 2, 2), v[:, 8:].split(8, dim=1)
        for layer, part in zip(layers, e):
            layer.fixed_noise = part.reshape(1, 2, 2, 2)
        z, ld = stage(x)
        torch.testing.assert_close(stage.inverse(z), x, atol=1e-10, rtol=1e-8)  # inverse drops the noise
        log_n_noise = sum(standard_normal_log_prob(part) for part in e)
        torch.testing.assert_close(ld + log_n_noise, brute_force_logdet(fn, v))


# -- the assembled model -----------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 0])
def test_model_with_fixed_noise_matches_brute_force(heads):
    flow = tiny_model(heads=heads)
    assert isinstance(flow, DenseFlowModel) and flow.log_prob_is_bound
    # scale 0: 4 channels at 2x2 widened twice by 2; scale 1: 6 // 2 * 4 = 12 channels at 1x1, once
    noise_shapes = [(2, 2, 2), (2, 2, 2), (2, 1, 1)]
    layers = noise_layers(flow)
    assert len(layers) == 3 and flow.latent_dim == 16 + sum(math.prod(s) for s in noise_shapes)
    fn, total = extended_map(flow.transform, flow.shape, noise_shapes, layers)
    x = torch.rand(1, *flow.shape, dtype=torch.float64) * 0.9 + 0.05
    noise = [torch.randn(1, *s, dtype=torch.float64) for s in noise_shapes]
    v = torch.cat([x.flatten(1)] + [e.flatten(1) for e in noise], dim=1)
    assert v.shape[1] == total
    for layer, e in zip(layers, noise):
        layer.fixed_noise = e
    z, ld = flow.forward_and_logdet(x)
    expected = brute_force_logdet(fn, v) - sum(standard_normal_log_prob(e) for e in noise)
    torch.testing.assert_close(ld, expected)
    torch.testing.assert_close(flow.decode(z), x, atol=1e-10, rtol=1e-8)


def test_decode_encode_sample_and_shapes():
    flow = denseflow(**TINY)
    x = torch.rand(3, *flow.shape)
    z = flow.encode(x)
    assert z.shape == (3, flow.latent_dim) and flow.latent_dim > flow.dim
    torch.testing.assert_close(flow.decode(z), x, atol=1e-5, rtol=1e-5)
    assert not torch.equal(flow.encode(x), z)  # encoding draws fresh noise ...
    torch.testing.assert_close(flow.decode(flow.encode(x)), x, atol=1e-5, rtol=1e-5)  # ... decoding drops it
    samples = flow.sample(4, temperature=0.7)
    assert samples.shape == (4, *flow.shape) and torch.isfinite(samples).all()
    assert flow.log_prob(x).shape == (3,)


def test_bad_inputs_and_arguments():
    flow = denseflow(**TINY)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.log_prob(torch.rand(2, *flow.shape) + 1.0)
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="latents of shape"):
        flow.decode(torch.randn(2, flow.dim))  # the noise dimensions are part of the latent
    with pytest.raises(ValueError, match="same length"):
        denseflow(**{**TINY, "modules": (1,)})
    with pytest.raises(ValueError, match="multiples of 8"):
        denseflow(**{**TINY, "units": (1, 1, 1), "modules": (1, 1, 1)})
    with pytest.raises(ValueError, match=r"heads=5 must be in 0\.\.hidden=4"):
        denseflow(**{**TINY, "heads": 5})
    with pytest.raises(ValueError, match=">= 1 unit"):
        denseflow(**{**TINY, "units": (0, 1)})
    with pytest.raises(ValueError, match="growth"):
        denseflow(**{**TINY, "growth": 0})


# -- importance-weighted likelihood ------------------------------------------------------------

def test_importance_weighted_estimate_is_logmeanexp_of_elbos_and_above_their_mean():
    flow, x, k = tiny_model(), torch.rand(5, 1, 4, 4, dtype=torch.float64), 6
    torch.manual_seed(3)
    iw = importance_weighted_log_prob(flow, x, k)
    torch.manual_seed(3)
    elbos = flow.log_prob(x.repeat(k, 1, 1, 1)).view(k, 5)  # the same k noise draws
    assert elbos.std(0).min() > 1e-3  # the bound varies with the noise
    torch.testing.assert_close(iw, torch.logsumexp(elbos, 0) - math.log(k))
    assert (iw >= elbos.mean(0)).all() and (iw <= elbos.max(0).values).all()
    assert importance_weighted_log_prob(flow, x, 5, chunk=2).shape == (5,)
    with pytest.raises(ValueError, match="k"):
        importance_weighted_log_prob(flow, x, 0)


def test_importance_weighted_estimate_increases_with_k():
    flow = tiny_model()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        bound = torch.stack([importance_weighted_log_prob(flow, x, 1) for _ in range(64)])  # [64, 8]
        iw16 = torch.stack([importance_weighted_log_prob(flow, x, 16) for _ in range(8)])  # [8, 8]
    gap = iw16.mean(0) - bound.mean(0)  # per image
    stderr = (iw16.var(0) / 8 + bound.var(0) / 64).sqrt()
    assert gap.mean() > 3 * stderr.mean(), (gap, stderr)
    assert (gap > -3 * stderr).all()


def test_importance_weighted_bits_per_dim():
    images = torch.randint(0, 17, (12, 1, 4, 4), dtype=torch.uint8)
    flow = tiny_model().float()
    res = importance_weighted_bits_per_dim(flow, images, 17, k=4, batch_size=5)
    assert res["n"] == 12 and res["k"] == 4 and res["upper_bound"] is True
    assert math.isfinite(res["bpd"]) and res["bpd_stderr"] > 0
    assert importance_weighted_bits_per_dim(flow, images, 17, k=4, batch_size=5) == res  # seeded
    # without noise every draw is the exact likelihood: the figure equals evaluate_bits_per_dim
    plain = glow(shape=(1, 4, 4), scales=1, steps=1, hidden=4)
    exact = evaluate_bits_per_dim(plain, images, 17, batch_size=5)
    iw = importance_weighted_bits_per_dim(plain, images, 17, k=3, batch_size=5)
    assert iw["upper_bound"] is False
    assert iw["bpd"] == pytest.approx(exact["bpd"], rel=1e-6)


# -- presets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["denseflow-digits", "denseflow-fmnist-tiny", "denseflow-74-10-cifar10",
                                  "denseflow-74-10-imagenet32"])
def test_presets_build(name):
    text = (resources.files("attnflow") / "presets" / f"{name}.toml").read_text()
    model = dict(tomllib.loads(text)["model"])
    assert model.pop("family") == "denseflow"
    if "74-10" in name:
        assert sum(u * m for u, m in zip(model["units"], model["modules"])) == 74 and model["growth"] == 10
        with torch.device("meta"):  # paper size: check the arguments without allocating 123M weights
            flow = denseflow(**model)
    else:
        flow = denseflow(**model)
        assert flow.log_prob(torch.rand(2, *flow.shape)).shape == (2,)
    assert flow.shape == tuple(model["shape"]) and flow.latent_dim > flow.dim
