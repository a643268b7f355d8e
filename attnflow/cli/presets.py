"""``attnflow presets``: the named configurations, each with its description."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def _cmd_presets(args: argparse.Namespace) -> None:
    from ..presets import preset_dir, preset_names

    for name in preset_names():
        lines = (preset_dir() / f"{name}.toml").read_text().splitlines()
        header = []  # the leading comment block is the preset's description
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# ").strip())
        print(f"{name:32s} {' '.join(header)}")


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("presets", help="list the named configurations").set_defaults(func=_cmd_presets)
