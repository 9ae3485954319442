"""Fuzz the adapter store's per-category state file parser, `parse_state(bytes)`.

(`serving.store.parse_state`; `serving.registry.parse_state` before the store had its own module.)

    .venv/bin/python fuzz/fuzz_state.py fuzz/corpus/fuzz_state -runs=20000
    .venv/bin/python fuzz/fuzz_state.py NEW_DIR fuzz/corpus/fuzz_state -dict=fuzz/state.dict \
        -max_total_time=300

Contract (anything else is a finding): parse_state raises nothing but ValueError, and what it
returns is a dict with exactly the keys "active" (None or a str that `VERSION_RE` fully matches)
and "shipped_removed" (None or 64 lower-case hex digits).
"""

from __future__ import annotations

import re
import sys

import _common  # noqa: F401  puts the repository root on sys.path
import atheris
import grpc  # noqa: F401  not instrumented: native, not under test

with atheris.instrument_imports(include=["serving.store", "serving.registry", "serving.names"]):
    try:
        from serving.names import VERSION_RE
        from serving.store import parse_state
    except ImportError:  # before the store moved out of serving.registry
        from serving.registry import VERSION_RE, parse_state

SHA256 = re.compile(r"[0-9a-f]{64}")


def TestOneInput(data: bytes) -> None:
    try:
        state = parse_state(data)
    except ValueError:
        return
    if not isinstance(state, dict) or set(state) != {"active", "shipped_removed"}:
        raise AssertionError(f"parse_state returned {state!r}")
    active, removed = state["active"], state["shipped_removed"]
    if active is not None and not (isinstance(active, str) and VERSION_RE.fullmatch(active)):
        raise AssertionError(f"active {active!r} is not a version name")
    if removed is not None and not (isinstance(removed, str) and SHA256.fullmatch(removed)):
        raise AssertionError(f"shipped_removed {removed!r} is not a sha256 hex digest")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
