"""Paper-size presets and the attention-free baselines.

Every paper-size preset names its source row in its leading comment and records the paper's size
in a comment line, ``# paper_parameters = N`` (a parameter count, ACF supplement) or
``# paper_size_mb = X`` (AttnFlow's "Parameters (MB)" column, read as megabytes of float32
weights); the model it builds is within 10% of it (built on the ``meta`` device: no memory is
allocated). Each ``*-noattn`` preset is its attention preset with only the attention switched off.
"""
from __future__ import annotations

import re
from importlib import resources

import pytest
import torch

from attnflow.config import preset_names, resolve_config
from attnflow.flows.invertible_attention import ISDP, IMap
from attnflow.models import build_from_config
from attnflow.nets.lipschitz_attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from attnflow.nets.nystrom_attention import NystromAttention

# the [model] key that switches a family's attention off, and its "off" value
ATTENTION_OFF = {"flowpp": ("coupling_heads", 0), "marflow": ("coupling_heads", 0), "denseflow": ("heads", 0),
                 "residual": ("attention", "none")}
ATTENTION_MODULES = (DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention, NystromAttention, IMap,
                     ISDP)
SIZE = re.compile(r"^# paper_(parameters|size_mb) = ([0-9.e+]+)$", re.M)


def _comment(name: str) -> str:
    text = (resources.files("attnflow") / "presets" / f"{name}.toml").read_text()
    return text[: text.index("[model]")]


def _paper_presets() -> dict[str, tuple[str, float]]:
    found = {}
    for name in preset_names():
        match = SIZE.search(_comment(name))
        if match:
            found[name] = (match.group(1), float(match.group(2)))
    return found


PAPER = _paper_presets()


def _build_on_meta(model_cfg: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return build_from_config(model_cfg)


def test_the_papers_rows_have_presets():
    acf = {f"acf-{m}-{d}" for m, d in [("iresnet-l2", "mnist"), ("iresnet-l2", "cifar10"), ("resflow-l2", "mnist"),
                                        ("resflow-l2", "cifar10"), ("resflow-l2", "imagenet32"),
                                        ("idensenet-l2", "cifar10"), ("resflow-lipnorm", "mnist"),
                                        ("resflow-lipnorm", "cifar10")]}
    attnflow = {f"marflow-cifar10-{c}{a}" for c in (96, 256) for a in ("", "-imap", "-isdp")}
    assert acf | attnflow <= set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_preset_matches_its_source_row(name):
    assert "Source: " in _comment(name) and "Table" in _comment(name)
    kind, paper = PAPER[name]
    model = _build_on_meta(resolve_config(name)["model"])
    count = sum(p.numel() for p in model.parameters())
    size = count if kind == "parameters" else count * 4 / 1e6
    assert abs(size / paper - 1) <= 0.10, (name, size, paper)
    if name.endswith(("-imap", "-isdp")):  # AttnFlow rows: the mARFlow row of the same size is the baseline
        cfg, base = resolve_config(name)["model"], resolve_config(name.rsplit("-", 1)[0])["model"]
        assert base.get("attention", "none") == "none" and cfg["attention"] == name.rsplit("-", 1)[1]
        attention_keys = ("attention", "positions", "heads", "patches")
        assert {k: v for k, v in cfg.items() if k not in attention_keys} == {
            k: v for k, v in base.items() if k not in attention_keys}
        assert any(isinstance(m, (IMap, ISDP)) for m in model.modules())
    elif resolve_config(name)["model"].get("attention", "none") != "none":
        assert f"{name}-noattn" in preset_names()


NOATTN = sorted(n for n in preset_names() if n.endswith("-noattn"))


def test_noattn_presets_exist():
    assert {"flowpp-digits-noattn", "denseflow-digits-noattn", "flowpp-fmnist-tiny-noattn",
            "marflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny-noattn"} <= set(NOATTN)
    assert {f"{n}-noattn" for n in PAPER if n.startswith("acf-")} <= set(NOATTN)


@pytest.mark.parametrize("name", NOATTN)
def test_noattn_preset_is_its_attention_preset_without_attention(name):
    base, plain = resolve_config(name.removesuffix("-noattn")), resolve_config(name)
    key, off = ATTENTION_OFF[plain["model"]["family"]]
    assert plain["model"][key] == off and base["model"][key] != off
    assert {**plain["model"], key: base["model"][key]} == base["model"]
    assert plain["data"] == base["data"] and plain["train"] == base["train"]
    assert not any(isinstance(m, ATTENTION_MODULES) for m in _build_on_meta(plain["model"]).modules())


def test_heads_zero_is_valid_only_where_it_means_no_attention():
    assert resolve_config("denseflow-digits", ["model.heads=0"])["model"]["heads"] == 0
    assert resolve_config("marflow-digits", ["model.coupling_heads=0"])["model"]["coupling_heads"] == 0
    for preset in ("glow-digits-isdp", "acf-resflow-l2-digits", "flowpp-digits"):
        with pytest.raises(ValueError, match=r"model.heads must be an integer in 1\.\.256"):
            resolve_config(preset, ["model.heads=0"])
