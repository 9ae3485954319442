"""`landmarks bench` end to end on a tiny server: its tables, its JSON and the headline lines it ends with."""

from __future__ import annotations

import json
import shutil

import pytest

HEADLINES = ("overhead", "added_ms", "rpc_floor_ms", "speedup_vs_official", "register_to_served_ms", "mixed_vs_single")


@pytest.mark.parametrize("extra", [[], ["--adapter-size", "16"]], ids=["shipped-size", "smaller-adapters"])
def test_bench_command_smoke(server, store, capsys, tmp_path, extra):
    from landmarks.cli import main

    rc = main(["bench", "--server", f"127.0.0.1:{server.port}", "--core", str(store / "core.safetensors"),
               "--requests", "4", "--concurrency", "1,2", "--categories", "1,2", "--ref-iters", "2", "--rounds", "2",
               "--pairs", "4", "--gap-ms", "1", "--blocks", "2", "--block-size", "3",
               "--json", str(tmp_path / "bench.json"), *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.strip().splitlines()
    tail = dict(line.split(": ") for line in lines[-len(HEADLINES):])
    assert tuple(tail) == HEADLINES  # the output ends with these, in this order, once each
    assert all(sum(line.startswith(f"{h}: ") for line in lines) == 1 for h in HEADLINES)
    assert all(float(tail[h]) > 0 for h in HEADLINES if h != "added_ms")
    assert "register -> first served" in out and "back to back" in out and "machine: " in out
    assert {c.name for c in server.services.registry.list()} == {"cats", "faces"}  # bench categories removed
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["adapter_size"] == (16 if extra else 32)  # the shipped tiny adapters run at the core's 32
    assert all(row["server_p50_ms"]["compute"] > 0 for row in result["rows"])
    headline = result["headline"]
    loop, idle = headline["closed_loop"], headline["after_idle"]
    if headline["bare_backend"] == "onnxruntime":  # the bare session has the threads the server's sessions have
        assert headline["bare_threads"] == server.services.backend.threads
    assert loop["calls"] == 6 and idle["pairs"] == 4 and len(headline["rounds"]) == 2
    assert idle["overhead"] == result["overhead"] > 0 and all(v > 0 for v in idle["overhead_halves"])
    assert idle["added_ms"] == result["added_ms"] == pytest.approx(idle["server_p50_ms"] - idle["bare_p50_ms"])
    assert idle["grpc_round_trip_ms"] == result["rpc_floor_ms"] > 0
    assert loop["overhead"] == result["overhead_back_to_back"] > 0 and all(v > 0 for v in loop["overhead_halves"])
    assert result["register_to_served_ms"] == result["register_to_first_ms"]["p50"] > 0
    for r in headline["rounds"]:
        assert r["speedup_vs_official"] > 0 and r["mixed_categories"] == 2
        assert r["mixed_vs_single"] == pytest.approx(r["mixed_throughput"] / r["server_throughput"])
    assert result["machine"]["cores"] >= 1


def test_the_bench_runs_at_the_size_most_shipped_adapters_run_at(artifacts, tmp_path):
    """Shipped adapters of several input sizes (e.g. faces re-adapted at 128 px beside 64 px ones):
    the bench takes the size most of them run at, the smaller on a tie; no adapter: None (the core's)."""
    from landmarks.adapter_io import load_core, save_adapter
    from serving.bench import shipped_input_size
    from tests.serving.helpers import adapter_tensors

    core = load_core(artifacts.core)
    shutil.copy(artifacts.core, tmp_path / "core.safetensors")
    assert shipped_input_size(tmp_path / "core.safetensors", core) is None
    for name, size in [("a", 32), ("b", 16)]:
        tensors, config = adapter_tensors(artifacts.core, 3, 1)
        save_adapter(tmp_path / f"{name}.safetensors", tensors, config.replace(input_size=size), category=name,
                     core_sha256=core.sha256)
    assert shipped_input_size(tmp_path / "core.safetensors", core) == 16  # a tie: the smaller
    tensors, config = adapter_tensors(artifacts.core, 3, 2)
    save_adapter(tmp_path / "c.safetensors", tensors, config.replace(input_size=32), category="c",
                 core_sha256=core.sha256)
    assert shipped_input_size(tmp_path / "core.safetensors", core) == 32


def test_the_bench_says_when_something_else_uses_the_cpu():
    """A run beside a training reads low and noisy numbers (it happened): the bench measures how busy
    the cores are before it starts (not the load average, which a previous run leaves high) and says so."""
    from serving.bench import busy_warning, cpu_busy, machine

    busy = cpu_busy(0.2)
    assert busy is None or 0.0 <= busy <= 1.0
    assert "busy_before" in machine()
    assert busy_warning(0.1, 2) is None and busy_warning(None, 2) is None
    warning = busy_warning(0.9, 2)
    assert warning.startswith("warning: 90% of the 2 cores were busy") and "scripts/paused.sh" in warning
