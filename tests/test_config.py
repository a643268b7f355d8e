"""Presets and --set overrides."""
import pytest

from attnflow.config import parse_override, resolve_config
from attnflow.models import build, build_from_config, presets


def test_every_preset_resolves_and_builds_small_ones():
    for name in presets():
        cfg = resolve_config(name)
        assert cfg["model"]["family"]
        if "digits" in name:
            build_from_config(cfg["model"])


def test_override_types():
    cfg = resolve_config("glow-digits",
                         ["train.lr=1e-4", "train.steps=7", "model.shape=[1, 8, 8]", "train.optimizer=adamax"])
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["steps"] == 7 and cfg["train"]["optimizer"] == "adamax"
    assert resolve_config("glow-digits", ["train.lr=1"])["train"]["lr"] == 1.0  # int accepted for float


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.nope=1", "valid train keys: .*batch_size"),
        ("model.widht=3", "valid keys of model family .glow.: .*hidden"),
        ("train.steps=1.5", "train.steps must be an integer"),
        ("train.steps=abc", "train.steps must be an integer"),
        ("model.hidden=true", "model.hidden must be an integer"),
        ("bogus.x=1", "valid sections"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ValueError, match=match):
        resolve_config("glow-digits", [override])


def test_parse_override():
    assert parse_override("train.lr=3e-4") == ("train", "lr", 3e-4)
    assert parse_override("data.name=digits") == ("data", "name", "digits")


def test_build_with_overrides():
    small = build("glow-digits", steps=1, hidden=4)
    default = build("glow-digits")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(default)
    assert len(small.transform.layers[1].layers) == 3  # squeeze + 1 step + factor-out


def test_retired_power_iteration_keys(tmp_path):
    """A run saved with the power-iteration keys of earlier versions loads without them; setting
    them now is refused as an unknown key."""
    import json

    from attnflow.config import read_config
    from attnflow.schema import ConfigError

    cfg = resolve_config("resflow-digits")
    cfg["model"].update(power_tol=1e-3, power_max_iter=1000)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = read_config(tmp_path / "config.json")
    assert "power_tol" not in loaded["model"] and loaded["model"] == resolve_config("resflow-digits")["model"]
    with pytest.raises(ConfigError, match="power_tol"):
        resolve_config("resflow-digits", ["model.power_tol=1e-3"])
