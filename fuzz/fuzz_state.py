"""Fuzz the adapter store's per-category state file parser, `parse_state(bytes)`.

(`serving.store.parse_state`; `serving.registry.parse_state` before the store had its own module.)

    .venv/bin/python fuzz/fuzz_state.py fuzz/corpus/fuzz_state -runs=20000
    .venv/bin/python fuzz/fuzz_state.py NEW_DIR fuzz/corpus/fuzz_state -dict=fuzz/state.dict \
        -max_total_time=300

Each input is parsed twice: as the file's bytes, and as the choices of a JSON object with the two
keys holding strings near the patterns' edges ('/', NUL, newline, non-ASCII digits, upper-case
hex), other types, or missing (FuzzedDataProvider), since the JSON scanner itself is C code that
gives libFuzzer no coverage to follow.

Contract (anything else is a finding): parse_state raises nothing but ValueError, and what it
returns is a dict with exactly the keys "active" (None or a str that `VERSION_RE` fully matches,
and, checked independently, a safe file name: ASCII, at most 64 characters, no leading '.', no
'/', '\\', NUL or newline) and "shipped_removed" (None or 64 lower-case hex digits).
"""

from __future__ import annotations

import json
import re
import sys

import _common  # noqa: F401  puts the repository root on sys.path
import atheris
import grpc  # noqa: F401  not instrumented: native, not under test

with atheris.instrument_imports(include=["serving.store", "serving.names"]):
    from serving.names import VERSION_RE
    from serving.store import parse_state

SHA256 = re.compile(r"[0-9a-f]{64}")
# characters near the edges of the name and digest patterns
ALPHABET = "aZ09f._-/\\\n\x00 \u00e9\u0661\uff10ABCDEFabcdef"


@atheris.instrument_func  # coverage of the generator's choices guides libFuzzer too
def fuzz_string(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeBool():
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 70))
    n = fdp.ConsumeIntInRange(0, 70)
    return "".join(ALPHABET[i] for i in fdp.ConsumeIntListInRange(n, 0, len(ALPHABET) - 1))


@atheris.instrument_func  # coverage of the generator's choices guides libFuzzer too
def fuzz_value(fdp: atheris.FuzzedDataProvider) -> object:
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind < 4:
        return fuzz_string(fdp)
    return (None, fdp.ConsumeInt(2), [fuzz_string(fdp)], fdp.ConsumeBool())[kind - 4]


@atheris.instrument_func  # coverage of the generator's choices guides libFuzzer too
def structured(data: bytes) -> bytes:
    """The input's bytes as choices of a JSON object with both keys (and maybe another one)."""
    fdp = atheris.FuzzedDataProvider(data)
    state = {key: fuzz_value(fdp) for key in ("active", "shipped_removed") if fdp.ConsumeIntInRange(0, 3)}
    if fdp.ConsumeBool():
        state[fuzz_string(fdp)] = fuzz_value(fdp)
    return json.dumps(state, ensure_ascii=fdp.ConsumeBool()).encode()


def check(data: bytes) -> None:
    try:
        state = parse_state(data)
    except ValueError:
        return
    if not isinstance(state, dict) or set(state) != {"active", "shipped_removed"}:
        raise AssertionError(f"parse_state returned {state!r}")
    active, removed = state["active"], state["shipped_removed"]
    if active is not None and not (isinstance(active, str) and VERSION_RE.fullmatch(active)):
        raise AssertionError(f"active {active!r} is not a version name")
    # and, independently of the pattern, a safe file name
    if active is not None and (
        not active.isascii()
        or len(active) > 64
        or active.startswith(".")
        or any(c in active for c in "/\\\x00\n")
    ):
        raise AssertionError(f"active {active!r} is not safe as a file name")
    if removed is not None and not (isinstance(removed, str) and SHA256.fullmatch(removed)):
        raise AssertionError(f"shipped_removed {removed!r} is not a sha256 hex digest")


def TestOneInput(data: bytes) -> None:
    check(data)  # the bytes as a file
    check(structured(data))  # the bytes as choices of a plausible file


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
