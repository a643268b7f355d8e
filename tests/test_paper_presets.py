"""Presets and their attention-free baselines: each ``*-noattn`` preset is its attention preset
with only the attention switched off, and builds a model without attention modules."""
from __future__ import annotations

import pytest
import torch

from attnflow.config import preset_names, resolve_config
from attnflow.models import build_from_config
from attnflow.nn.attention import DotProductSelfAttention
from attnflow.nn.nystrom import NystromAttention

# the [model] key that switches a family's coupling-network attention off (its value 0)
ATTENTION_OFF = {"flowpp": "coupling_heads", "marflow": "coupling_heads", "denseflow": "heads"}
NOATTN = ["flowpp-digits-noattn", "denseflow-digits-noattn", "flowpp-fmnist-tiny-noattn",
          "marflow-fmnist-tiny-noattn", "denseflow-fmnist-tiny-noattn"]


@pytest.mark.parametrize("name", NOATTN)
def test_noattn_preset_is_its_attention_preset_without_attention(name):
    assert name in preset_names()
    base, plain = resolve_config(name.removesuffix("-noattn")), resolve_config(name)
    key = ATTENTION_OFF[plain["model"]["family"]]
    assert plain["model"][key] == 0 and base["model"][key] > 0
    assert {**plain["model"], key: base["model"][key]} == base["model"]
    assert plain["data"] == base["data"] and plain["train"] == base["train"]
    with torch.device("meta"):
        model = build_from_config(plain["model"])
    assert not any(isinstance(m, (DotProductSelfAttention, NystromAttention)) for m in model.modules())


def test_heads_zero_is_valid_only_where_it_means_no_attention():
    assert resolve_config("denseflow-digits", ["model.heads=0"])["model"]["heads"] == 0
    assert resolve_config("marflow-digits", ["model.coupling_heads=0"])["model"]["coupling_heads"] == 0
    for preset in ("glow-digits-isdp", "acf-resflow-l2-digits", "flowpp-digits"):
        with pytest.raises(ValueError, match=r"model.heads must be an integer in 1\.\.256"):
            resolve_config(preset, ["model.heads=0"])
