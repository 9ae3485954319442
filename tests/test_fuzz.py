"""Bounded runs of the atheris fuzz harnesses in fuzz/ (fuzz/README.md has the long runs).

Each harness runs as a subprocess for a fixed number of executions (libFuzzer -runs, fixed
-seed, so a run is repeatable) over a copy of its seed corpus in a tmp dir: the committed corpus
is never written. Every saved reproducer under fuzz/regressions/<harness>/ is replayed as well.
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
RUNS = {"fuzz_image": 50_000, "fuzz_artifact": 3_000, "fuzz_state": 100_000}
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


@pytest.mark.parametrize("harness", sorted(RUNS))
def test_regressions_replay(harness: str, tmp_path: Path) -> None:
    folder = FUZZ / "regressions" / harness
    inputs = (
        sorted(p for p in folder.glob("*") if p.is_file() and not p.name.endswith(".md"))
        if folder.is_dir()
        else []
    )
    if not inputs:
        pytest.skip(f"no saved reproducers in fuzz/regressions/{harness}/")
    proc = _run(harness, [str(p) for p in inputs], tmp_path)
    assert proc.returncode == 0, _failure(harness, proc, tmp_path, f"replaying {len(inputs)} reproducer(s)")
