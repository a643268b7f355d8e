"""Tests of the Lipschitz self-attention modules of ACF (``attnflow/nets/lipschitz_attention.py``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import lambertw
from torch.func import functional_call

from attnflow.nets.lipschitz_attention import (
    DotProductSelfAttention,
    L2MultiheadSelfAttention,
    LipNormSelfAttention,
    exact_spectral_norms,
    inverse_phi,
)
from attnflow.testing import empirical_lipschitz, jacobian_spectral_norm

LIPSCHITZ_CLASSES = (L2MultiheadSelfAttention, LipNormSelfAttention)
ALL_CLASSES = (*LIPSCHITZ_CLASSES, DotProductSelfAttention)


def _make(cls, channels: int, heads: int, seed: int, **kwargs):
    """A float64 module with Gaussian (not orthogonal) weights of unequal scales."""
    module = cls(channels, heads, **kwargs).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(module.named_parameters())):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * (0.5 + 0.4 * i))
    return module


def _empirical_over_scales(module, shape, scales, seed: int = 0) -> float:
    """Empirical Lipschitz estimate of ``module`` around inputs of each scale ``s``
    (``x -> F(s x) / s`` has Jacobian ``J_F(s x)``)."""
    gen = torch.Generator().manual_seed(seed)
    return max(
        empirical_lipschitz(lambda x, s=s: module(s * x) / s, shape, points=4, ascent_steps=60, generator=gen)
        for s in scales
    )


@pytest.mark.parametrize("cls", LIPSCHITZ_CLASSES)
@pytest.mark.parametrize("heads,hw", [(1, 2), (2, 3)])
def test_bound_exceeds_empirical_lipschitz_raw_and_normalized(cls, heads, hw):
    shape = (4, hw, hw)
    raw = _make(cls, 4, heads, seed=heads + hw, normalize=False)
    bound = raw.lipschitz_bound(tokens=hw * hw)
    emp = _empirical_over_scales(raw, shape, scales=(0.1, 1.0, 10.0))
    assert 0.0 < emp <= bound

    normed = _make(cls, 4, heads, seed=heads + hw, normalize=True)
    assert normed.lipschitz_bound() == 1.0
    emp_normed = _empirical_over_scales(normed, shape, scales=(0.1, 1.0, 10.0))
    assert emp_normed <= 1.0 + 1e-9
    x = torch.randn(2, *shape, dtype=torch.float64)
    torch.testing.assert_close(normed(x), raw(x) / bound)


def _direct_l2_bound(module: L2MultiheadSelfAttention, n: int) -> float:
    """Kim et al.'s bound assembled from explicit per-head weight slices (numpy)."""
    c, h = module.channels, module.heads
    d = -(-c // h)  # ceil: heads that do not divide C get a padded inner width h * d
    wq = module.query_weight.detach().numpy()
    wv = module.value_weight.detach().numpy()
    wo = module.out_weight.detach().numpy()
    total = 0.0
    for head in range(h):
        cols = slice(head * d, (head + 1) * d)
        total += np.linalg.norm(wq[:, cols], 2) ** 4 * np.linalg.norm(wv[:, cols], 2) ** 2
    phi_inv = lambertw((n - 1) / math.e).real
    return math.sqrt(n / d) * (4 * phi_inv + 1) * math.sqrt(total) * np.linalg.norm(wo, 2)


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 4, 9])
def test_l2_bound_matches_direct_computation(heads, n):
    """With exact norms the bound is Kim et al.'s formula; the Gram norms used by default are
    certified upper bounds of the exact ones and give a bound at most 0.1% above it."""
    module = _make(L2MultiheadSelfAttention, 4, heads, seed=n, normalize=False)
    direct = _direct_l2_bound(module, n)
    assert module.raw_lipschitz_bound(n, norm=exact_spectral_norms).item() == pytest.approx(direct, rel=1e-12)
    assert direct <= module.raw_lipschitz_bound(n).item() <= direct * 1.001


@pytest.mark.parametrize("n", [1, 2, 4, 9, 1024])
def test_inverse_phi_inverts_phi_and_is_below_acf_constant(n):
    x = inverse_phi(n - 1)
    assert x * math.exp(x + 1) == pytest.approx(n - 1, rel=1e-12, abs=1e-12)
    assert x < lambertw(n / math.e).real  # ACF's W0(N/e) is looser


def test_l2_bound_holds_for_scaled_query_weights_and_needs_fourth_power():
    """Sharper attention (query weights scaled by t) makes Lip grow like t^2: the bound (with
    ||W^Q||^4 under the root) holds, the printed ||W^Q||^2 version is exceeded."""
    n, shape = 4, (4, 2, 2)
    for t in (3.0, 10.0):
        module = _make(L2MultiheadSelfAttention, 4, 2, seed=3, normalize=False)
        with torch.no_grad():
            module.query_weight.mul_(t)
        emp = _empirical_over_scales(module, shape, scales=(1.0 / t, 1.0))
        assert emp <= module.lipschitz_bound(tokens=n)
        d = 2
        with torch.no_grad():
            q = torch.linalg.matrix_norm(module._head_weights(module.query_weight), ord=2)
            v = torch.linalg.matrix_norm(module._head_weights(module.value_weight), ord=2)
            o = torch.linalg.matrix_norm(module.out_weight, ord=2)
        printed = math.sqrt(n / d) * (4 * inverse_phi(n - 1) + 1) * float(torch.sqrt((q**2 * v**2).sum()) * o)
        if t == 10.0:
            assert emp > printed


def test_l2_value_path_needs_a_h():
    """Why the value path is ``P X A_h W^V`` (Kim et al.) and not ``P X W^V``: with a rank-d query
    map, input components in the null space of ``W^{Q,h}^T`` do not change ``P`` but multiply its
    derivative, so the Jacobian of ``P X W^V`` grows with them."""
    module = _make(L2MultiheadSelfAttention, 4, 2, seed=6, normalize=False)
    wq, wv = (module._head_weights(w).detach()[0] for w in (module.query_weight, module.value_weight))
    null = torch.linalg.svd(wq.T).Vh[2:].T  # [C, C - d], W^{Q,1}^T null = 0

    def without_a(x):
        tokens = x.flatten(2).transpose(1, 2)
        y = tokens @ wq
        sq = y.pow(2).sum(-1)
        attn = torch.softmax(-(sq[..., :, None] + sq[..., None, :] - 2 * y @ y.transpose(-1, -2)) / math.sqrt(2), -1)
        return attn @ tokens @ wv

    gen = torch.Generator().manual_seed(0)
    base = 0.5 * torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=gen)
    away_tokens = torch.randn(1, 4, 2, dtype=torch.float64, generator=gen) @ null.T  # [1, N, C]
    away = away_tokens.transpose(1, 2).reshape(1, 4, 2, 2)
    torch.manual_seed(0)
    estimates = [jacobian_spectral_norm(without_a, base + s * away) for s in (1.0, 100.0)]
    assert estimates[1] > 10.0 * estimates[0]
    assert jacobian_spectral_norm(module, base + 100.0 * away) <= module.lipschitz_bound(tokens=4)


def _isotropic_token(module: DotProductSelfAttention) -> torch.Tensor:
    """Kim et al.'s (Thm 3.1) witness: one nonzero token ``z`` with ``z^T A z = 0`` for
    ``A = W^Q W^K^T``, all other tokens zero. Its scores stay 0 (uniform attention, no saturation)
    at every scale ``s``, while the score gradient grows with ``s``: the Jacobian grows like
    ``s^2``."""
    a = (module.query_weight @ module.key_weight.T).detach()
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    assert evals[0] < 0 < evals[-1], "need an indefinite A for this witness"
    z = (-evals[0]).sqrt() * evecs[:, -1] + evals[-1].sqrt() * evecs[:, 0]
    x = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    x[0, :, 0, 0] = z / z.norm()
    return x


def test_dot_product_is_not_lipschitz():
    module = _make(DotProductSelfAttention, 4, 1, seed=0)
    assert module.lipschitz_bound() == math.inf
    x0 = _isotropic_token(module)
    torch.manual_seed(0)
    estimates = [jacobian_spectral_norm(module, s * x0) for s in (1.0, 10.0, 100.0)]
    assert estimates[1] > 10.0 * estimates[0] and estimates[2] > 10.0 * estimates[1]
    # a certified bound (here the normalised LipNorm module) holds at the same points
    lipnorm = _make(LipNormSelfAttention, 4, 1, seed=0)
    assert max(jacobian_spectral_norm(lipnorm, 100.0 * x0), jacobian_spectral_norm(lipnorm, x0)) <= 1.0


@pytest.mark.parametrize("cls", LIPSCHITZ_CLASSES)
def test_lipschitz_modules_bounded_at_every_scale_unlike_dot_product(cls):
    module = _make(cls, 4, 1, seed=0, normalize=True)
    assert _empirical_over_scales(module, (4, 2, 2), scales=(10.0, 100.0)) <= 1.0 + 1e-9


@pytest.mark.parametrize("cls", LIPSCHITZ_CLASSES)
@pytest.mark.parametrize("heads", [1, 2])
def test_gradients_through_normalization(cls, heads):
    module = _make(cls, 4, heads, seed=1, normalize=True)
    params = dict(module.named_parameters())
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(inp, wq, wv, wo):
        return functional_call(module, {**params, "query_weight": wq, "value_weight": wv, "out_weight": wo}, (inp,))

    weights = [params[k].detach().clone().requires_grad_(True) for k in ("query_weight", "value_weight", "out_weight")]
    assert torch.autograd.gradcheck(fn, (x, *weights))

    module(x).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    bound_grad = torch.autograd.grad(module.raw_lipschitz_bound(4), module.query_weight)[0]
    assert torch.isfinite(bound_grad).all() and bound_grad.abs().sum() > 0


@pytest.mark.parametrize("cls", LIPSCHITZ_CLASSES)
def test_zero_input_gives_finite_output_and_gradients(cls):
    module = _make(cls, 4, 2, seed=2)
    x = torch.zeros(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_lipnorm_divisor_is_recomputed_per_sample_and_call():
    """Scores are 0-homogeneous, so the output is 1-homogeneous per sample; batching does not
    mix samples."""
    module = _make(LipNormSelfAttention, 4, 2, seed=4)
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    scales = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64).view(3, 1, 1, 1)
    torch.testing.assert_close(module(scales * x), scales * module(x))
    single = torch.cat([module(x[b : b + 1]) for b in range(3)])
    torch.testing.assert_close(module(x), single)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_tokens_are_spatial_positions(cls):
    """Attention is permutation-equivariant over tokens = spatial positions: permuting the
    pixels permutes the output pixels the same way."""
    module = _make(cls, 4, 2, seed=5)
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permute = lambda t: t.flatten(2)[:, :, perm].reshape(t.shape)  # noqa: E731
    torch.testing.assert_close(module(permute(x)), permute(module(x)))


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_bad_arguments_and_inputs_raise(cls):
    with pytest.raises(ValueError, match=r"heads=5 exceeds channels=4"):
        cls(4, 5)
    with pytest.raises(ValueError, match="channels"):
        cls(0, 1)
    with pytest.raises(ValueError, match="heads"):
        cls(4, 0)
    module = cls(4, 2)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        module(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="channels=3"):
        module(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("cls", LIPSCHITZ_CLASSES)
def test_raw_bound_needs_token_count(cls):
    with pytest.raises(ValueError, match="tokens"):
        cls(4, 2, normalize=False).lipschitz_bound()


@pytest.mark.parametrize("cls", ALL_CLASSES)
@pytest.mark.parametrize("channels,heads", [(4, 3), (5, 2), (7, 5)])
def test_heads_that_do_not_divide_the_channels_pad_the_inner_width(cls, channels, heads):
    """Head width d = ceil(C / heads), inner width heads * d; each head is a plain attention of
    width d over all C channels: the output equals the head-by-head computation."""
    module = _make(cls, channels, heads, seed=7)
    d = -(-channels // heads)
    assert (module.head_dim, module.inner) == (d, heads * d)
    assert module.out_weight.shape == (heads * d, channels)
    x = torch.randn(2, channels, 2, 3, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)
    outs = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        q = tokens @ module.query_weight[:, cols]
        if cls is L2MultiheadSelfAttention:
            scores = -torch.cdist(q, q).pow(2) / math.sqrt(d)
            values = q @ module.query_weight[:, cols].T @ module.value_weight[:, cols] / math.sqrt(d)
        else:
            k, values = tokens @ module.key_weight[:, cols], tokens @ module.value_weight[:, cols]
            divisor = math.sqrt(d) if cls is DotProductSelfAttention else module._score_divisor(q, k, values)
            scores = q @ k.transpose(-1, -2) / divisor
        outs.append(torch.softmax(scores, -1) @ values)
    expected = torch.cat(outs, -1) @ module.out_weight
    if getattr(module, "normalize", False):
        expected = expected / module.raw_lipschitz_bound(6)
    torch.testing.assert_close(module(x), expected.transpose(1, 2).reshape(x.shape))
    lin = module.linearize(x)  # explicit products agree with autograd's
    v, w = torch.randn_like(x), torch.randn_like(x)
    _, jv = torch.autograd.functional.jvp(module, x, v)
    _, vj = torch.autograd.functional.vjp(module, x, w)
    torch.testing.assert_close(lin.jvp(v), jv)
    torch.testing.assert_close(lin.vjp(w), vj)


@pytest.mark.parametrize("cls", LIPSCHITZ_CLASSES)
def test_bound_with_uneven_heads_exceeds_empirical_lipschitz(cls):
    """3 heads of 5 channels (head width 2, padded inner width 6): the certified raw bound still
    upper-bounds an empirical estimate at small, unit and large input scales."""
    raw = _make(cls, 5, 3, seed=11, normalize=False)
    gen = torch.Generator().manual_seed(1)
    emp = max(
        empirical_lipschitz(lambda x, s=s: raw(s * x) / s, (5, 2, 2), points=3, ascent_steps=40, generator=gen)
        for s in (0.1, 1.0, 10.0)
    )
    assert 0.0 < emp <= raw.lipschitz_bound(tokens=4)
