"""Bounded runs of the atheris fuzz harnesses in fuzz/ (fuzz/README.md has the long runs).

Each harness runs as a subprocess for a fixed number of executions (libFuzzer -runs, fixed
-seed, so a run is repeatable) over a copy of its seed corpus in a tmp dir: the committed corpus
is never written. Every saved reproducer under fuzz/regressions/<harness>/ is replayed as well;
those listed in that folder's OPEN file (found, not fixed yet) are expected to fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "atheris", reason="atheris is not installed (pip install -e '.[dev]'; Linux x86_64 wheels only)"
)

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"

# executions per harness: together about a minute on a 2-core machine (docs/fuzzing.md)
RUNS = {"fuzz_image": 50_000, "fuzz_artifact": 3_000, "fuzz_state": 50_000}
TAIL = 4000  # characters of the harness's output in a failure message


def _run(harness: str, args: list[str], workdir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("FUZZ_KNOWN_BUGS", None)  # CI checks the full contract
    cmd = [
        sys.executable,
        str(FUZZ / f"{harness}.py"),
        *args,
        f"-artifact_prefix={workdir}/",
        "-timeout=60",
        "-rss_limit_mb=4096",
    ]
    return subprocess.run(
        cmd, check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )


def _failure(harness: str, proc: subprocess.CompletedProcess, workdir: Path, what: str) -> str:
    saved = sorted(
        p for p in workdir.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "slow-unit-"))
    )
    replay = f".venv/bin/python fuzz/{harness}.py {saved[0]}" if saved else "(no input saved)"
    return (
        f"{harness} {what} exited {proc.returncode}; saved input(s): {[str(p) for p in saved] or 'none'}\n"
        f"replay: {replay}\n"
        f"keep it as fuzz/regressions/{harness}/<short-name> once understood\n"
        f"--- output tail ---\n{(proc.stdout + proc.stderr)[-TAIL:]}"
    )


@pytest.mark.parametrize("harness", sorted(RUNS))
def test_harness_bounded_run(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / harness, corpus)
    proc = _run(harness, [str(corpus), f"-runs={RUNS[harness]}", "-seed=1"], tmp_path)
    assert proc.returncode == 0, _failure(harness, proc, tmp_path, f"-runs={RUNS[harness]}")
    assert f"Done {RUNS[harness]} runs" in proc.stderr, proc.stderr[-TAIL:]


def _reproducers(harness: str) -> tuple[list[Path], list[Path]]:
    """(fixed, open): the saved inputs of fuzz/regressions/<harness>/, those named in its OPEN file
    being findings not fixed yet."""
    folder = FUZZ / "regressions" / harness
    if not folder.is_dir():
        return [], []
    listed = (folder / "OPEN").read_text().splitlines() if (folder / "OPEN").is_file() else []
    still_open = {line.split("#")[0].strip() for line in listed} - {""}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in ("README.md", "OPEN"))
    return [p for p in files if p.name not in still_open], [p for p in files if p.name in still_open]


@pytest.mark.parametrize("harness", sorted(RUNS))
def test_regressions_replay(harness: str, tmp_path: Path) -> None:
    inputs = _reproducers(harness)[0]
    if not inputs:
        pytest.skip(f"no saved reproducers of fixed findings in fuzz/regressions/{harness}/")
    proc = _run(harness, [str(p) for p in inputs], tmp_path)
    assert proc.returncode == 0, _failure(harness, proc, tmp_path, f"replaying {len(inputs)} reproducer(s)")


OPEN = [
    pytest.param(h, p, id=f"{h}/{p.name}", marks=pytest.mark.xfail(reason="open finding, see its README.md"))
    for h in sorted(RUNS)
    for p in _reproducers(h)[1]
]


@pytest.mark.parametrize(
    ("harness", "reproducer"), OPEN or [pytest.param(None, None, marks=pytest.mark.skip)]
)
def test_open_findings(harness: str, reproducer: Path, tmp_path: Path) -> None:
    """Each finding listed in fuzz/regressions/<harness>/OPEN, expected to fail until it is fixed;
    once it passes (XPASS), delete its line from OPEN so the replay above guards it."""
    proc = _run(harness, [str(reproducer)], tmp_path)
    assert proc.returncode == 0, _failure(harness, proc, tmp_path, f"replaying {reproducer.name}")
