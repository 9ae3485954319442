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


def _defaults(f: dataclasses.Field, presets: Mapping[str, Mapping[str, Any]]) -> str:
    """What each preset sets a field to: '(default X)' when they agree, else '(cpu: X, paper: Y, ...)'."""
    values = {name: preset.get(f.name, f.default) for name, preset in presets.items()}
    if not values or len({repr(v) for v in values.values()}) == 1:
        return f"(default {next(iter(values.values()), f.default)!r})"
    return "(" + ", ".join(f"{name}: {value!r}" for name, value in values.items()) + ")"


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: Sequence[str] = (),
                         choices: Mapping[str, Sequence[str]] | None = None,
                         help: Mapping[str, str] | None = None,
                         presets: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """One --flag per field; its help says what each preset sets it to (`presets`: name -> values)."""
    choices, help = choices or {}, help or {}
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{help[f.name]} " if f.name in help else ""
        help_text += _defaults(f, presets or {})
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
