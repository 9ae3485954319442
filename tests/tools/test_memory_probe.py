"""tools/memory_probe.py: each operation runs against a real in-process server and the report says
what changed."""

from __future__ import annotations

import importlib.util
import tracemalloc

import pytest

from tests.tools.test_soak import ROOT, tiny_store


def _probe():
    spec = importlib.util.spec_from_file_location("memory_probe", ROOT / "tools" / "memory_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["register", "cancel", "deadline", "bad", "detect"])
def test_each_operation_runs_and_is_reported(kind, tmp_path, capsys):
    probe = _probe()
    assert probe.main([kind, "5", "--adapters", str(tiny_store(tmp_path / "store"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{kind} x5 in ") and "RSS " in lines[0] and "KB per operation" in lines[0]
    assert lines[1].startswith("Python heap ")
    assert not tracemalloc.is_tracing()  # left on, it slowed every later test in the process ~20x
