"""Tests of the invertible attention bijections iMap and iSDP (attnflow.flows.invertible_attention)."""
from __future__ import annotations

import pytest
import torch

from attnflow.flows.invertible_attention import ISDP, IMap, build_invertible_attention
from attnflow.testing import check_bijection

DT = torch.float64


def _randomize(layer: torch.nn.Module, seed: int, std: float = 1.0) -> None:
    """Move every parameter far from its initial value so the tests are not near-identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def _input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("c,h,w", [(2, 2, 2), (3, 3, 5), (2, 5, 4), (4, 3, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_imap_is_bijection(c: int, h: int, w: int, seed: int) -> None:
    layer = IMap(c, seed=seed).double()
    _randomize(layer, seed)
    check_bijection(layer, _input((2, c, h, w), seed))


def test_imap_at_init_is_bijection() -> None:
    layer = IMap(3, seed=4).double()
    check_bijection(layer, _input((2, 3, 4, 4), 4))


@pytest.mark.parametrize(
    "c,h,w,heads,patches",
    [(2, 2, 2, 1, 1), (3, 3, 5, 1, 1), (2, 4, 4, 1, 4), (2, 4, 2, 2, 4), (3, 2, 2, 1, 4), (2, 4, 4, 2, 16),
     (1, 4, 4, 1, 4),
     (2, 4, 4, 3, 4), (3, 3, 5, 7, 1), (5, 2, 2, 5, 4)],  # uneven head groups: 8 features / 3, 45 / 7, 5 / 5
)
@pytest.mark.parametrize("seed", [0, 1])
def test_isdp_is_bijection(c: int, h: int, w: int, heads: int, patches: int, seed: int) -> None:
    layer = ISDP(c, heads=heads, patches=patches, seed=seed).double()
    _randomize(layer, seed)
    check_bijection(layer, _input((2, c, h, w), seed))


def test_isdp_at_init_is_bijection() -> None:
    layer = ISDP(2, heads=2, patches=4, seed=3).double()
    check_bijection(layer, _input((2, 2, 4, 4), 3))


def test_isdp_extreme_parameters_stay_invertible() -> None:
    """Near-hard attention (tiny d, large Q/K weights) and c at its floor: still finite and exact."""
    layer = ISDP(2, heads=1, patches=16, seed=5).double()
    _randomize(layer, 5, std=4.0)
    with torch.no_grad():
        layer.log_d.fill_(-6.0)
        layer.offset_raw.fill_(-40.0)
    x = _input((2, 2, 4, 4), 5)
    z, logdet = layer(x)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    check_bijection(layer, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isdp_mixing_matrix_bounds(seed: int) -> None:
    """The documented guarantee: |eig(A + cI)| >= c - 1, ||(A + cI)^-1||_inf <= 1/(c - 1), det > 0."""
    layer = ISDP(2, heads=2, patches=16, seed=seed).double()
    _randomize(layer, seed, std=3.0)
    with torch.no_grad():
        layer.offset_raw.fill_(-3.0)
    mixing = layer.attention(_input((3, 2, 4, 4), seed))
    c = layer.offset.item()
    attn = mixing - c * torch.eye(mixing.shape[-1], dtype=DT)
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))
    assert (attn >= 0).all()
    assert (torch.linalg.eigvals(mixing).abs() >= c - 1 - 1e-12).all()
    inv_norm = torch.linalg.inv(mixing).abs().sum(-1).amax(-1)
    assert (inv_norm <= 1 / (c - 1) + 1e-12).all()
    assert (torch.linalg.det(mixing) > 0).all()


@pytest.mark.parametrize("make", [lambda: IMap(3, seed=7), lambda: ISDP(3, heads=1, patches=4, seed=7)])
def test_attention_depends_only_on_masked_half(make) -> None:
    layer = make().double()
    _randomize(layer, 7)
    x = _input((2, 3, 4, 4), 7)
    mask = layer.mask(4, 4)
    assert 0 < mask.sum() < mask.numel()
    noise = _input((2, 3, 4, 4), 8)
    before = layer.attention(x)
    torch.testing.assert_close(layer.attention(x + noise * ~mask), before, rtol=0, atol=0)
    assert not torch.allclose(layer.attention(x + noise * mask), before)
    z, _ = layer(x)
    if isinstance(layer, IMap):  # masked elements only get their channel's fixed scale
        expected = x * (torch.sigmoid(layer.s) + layer.eps).view(3, 1, 1)
    else:  # masked features pass through unchanged
        expected = x
    torch.testing.assert_close(z[:, mask], expected[:, mask])


def test_masks_are_seeded_half_splits_and_survive_state_dict() -> None:
    a, b = IMap(3, seed=11), IMap(3, seed=12)
    ma = a.mask(3, 5)
    assert ma.shape == (3, 3, 5) and ma.sum() == (45 + 1) // 2
    assert torch.equal(ma, IMap(3, seed=11).mask(3, 5))
    assert not torch.equal(ma, b.mask(3, 5))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.mask(3, 5), ma)
    isdp = ISDP(2, patches=4, seed=1)
    fmask = isdp.feature_mask(4, 6)
    assert fmask.shape == (2, 2, 3)
    assert torch.equal(isdp.mask(4, 6)[:, 2:, 3:], fmask)


def test_default_seeds_differ_between_layers() -> None:
    torch.manual_seed(0)
    assert not torch.equal(IMap(4).mask(4, 4), IMap(4).mask(4, 4))


def test_logdet_has_gradients() -> None:
    for layer in (IMap(2, seed=0), ISDP(2, heads=2, patches=4, seed=0)):
        layer = layer.double()
        _randomize(layer, 0)
        z, logdet = layer(_input((2, 2, 4, 4), 0))
        (z.square().sum() - logdet.sum()).backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="channels"):
        IMap(3)(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        IMap(3)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        ISDP(3).inverse(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="H=3, W=4"):
        ISDP(2, patches=4)(torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="heads=9 exceeds the 8 features per token"):
        ISDP(2, heads=9, patches=4)(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="perfect square"):
        ISDP(2, patches=2)
    with pytest.raises(ValueError, match="eps"):
        IMap(2, eps=0.0)


def test_factory() -> None:
    assert build_invertible_attention("none", 4) is None
    assert isinstance(build_invertible_attention("imap", 4), IMap)
    layer = build_invertible_attention("isdp", 4, heads=2, patches=16)
    assert isinstance(layer, ISDP) and layer.heads == 2 and layer.grid == 4
    with pytest.raises(ValueError, match="none, imap, isdp"):
        build_invertible_attention("sdp", 4)


def test_isdp_uneven_heads_attend_within_their_feature_groups() -> None:
    """3 heads of 8 features per token: groups of 3, 3 and 2 contiguous features; each head's
    mixing matrix comes from its own group's query/key features only."""
    layer = ISDP(2, heads=3, patches=4, seed=4).double()
    _randomize(layer, 4)
    x = _input((2, 2, 4, 4), 4)
    x_masked = x * layer.mask(4, 4).to(x.dtype)
    q, k = layer._tokens(layer.query(x_masked)), layer._tokens(layer.key(x_masked))
    groups = [slice(0, 3), slice(3, 6), slice(6, 8)]
    eye = torch.eye(4, dtype=x.dtype)
    expected = torch.stack(
        [torch.softmax(q[..., g] @ k[..., g].transpose(-1, -2) / layer.log_d.exp(), -1) + layer.offset * eye
         for g in groups],
        dim=1,
    )
    torch.testing.assert_close(layer.attention(x), expected)
    unmasked = (~layer.feature_mask(4, 4)).flatten()
    assert layer._unmasked_per_head(layer.feature_mask(4, 4)).tolist() == [int(unmasked[g].sum()) for g in groups]
