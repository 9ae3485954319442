"""Training configs on the command line: every dataclass field becomes a --flag whose default
comes from the chosen preset, so `--help` lists all knobs and the resolved config is explicit."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["add_config_arguments", "invocation", "values_from_args"]


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: Sequence[str] = (),
                         choices: Mapping[str, Sequence[str]] | None = None,
                         help: Mapping[str, str] | None = None) -> None:
    choices, help = choices or {}, help or {}
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{help[f.name]} " if f.name in help else ""
        help_text += f"(default from preset or {f.default!r})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=_parse_bool, default=None, metavar="BOOL", help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, choices=choices.get(f.name), help=help_text)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def values_from_args(args: argparse.Namespace, config_cls: type, presets: Mapping[str, dict]) -> dict[str, Any]:
    """The preset's values overridden by every flag given on the command line."""
    values = dict(presets[args.preset])
    for f in dataclasses.fields(config_cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return values


def invocation() -> str:
    """The command as typed, recorded in every file a training writes."""
    return "landmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
