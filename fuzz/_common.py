"""Shared bits of the harnesses: the repo on sys.path, default libFuzzer flags, known-bug switches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# fuzz_image.py's input layout (fuzz/make_seeds.py writes its seeds in it): 1 mode byte,
# IMAGE_PARAM_LEN parameter bytes, then the payload.
IMAGE_PARAM_LEN = 24
MODE_ENCODED, MODE_RAW, MODE_BOX, MODE_NAMES = 0, 1, 2, 3


def argv_with_defaults(argv: list[str], **defaults: object) -> list[str]:
    """`argv` plus `-name=value` for every default the caller did not set (e.g. max_len)."""
    given = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")}
    return argv + [f"-{k}={v}" for k, v in defaults.items() if f"-{k}" not in given]


def known_bugs() -> set[str]:
    """FUZZ_KNOWN_BUGS=name,name: findings a harness reports as "known" instead of crashing on.

    Only for a bug that is reported and being fixed, so a long run can get past it; each harness
    lists the names it understands (KNOWN_BUG_NAMES) and refuses any other."""
    return {n.strip() for n in os.environ.get("FUZZ_KNOWN_BUGS", "").split(",") if n.strip()}


def check_known_names(names: set[str], understood: tuple[str, ...]) -> None:
    unknown = names - set(understood)
    if unknown:
        sys.exit(
            f"FUZZ_KNOWN_BUGS: {sorted(unknown)} not understood here; this harness knows {list(understood)}"
        )
