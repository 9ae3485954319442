"""`landmarks bench` end to end on a tiny server: its tables, its JSON and the headline lines it ends with."""

from __future__ import annotations

import json
import re
import shutil

import pytest

HEADLINES = ("speedup_vs_official", "speedup_vs_official_batched", "overhead_vs_bare_ort", "added_ms", "overhead",
             "rpc_floor_ms", "register_to_served_ms", "mixed_vs_single")
TARGETED = HEADLINES[:4]


@pytest.mark.parametrize("extra", [[], ["--adapter-size", "16"]], ids=["shipped-size", "smaller-adapters"])
def test_bench_command_smoke(server, store, capsys, tmp_path, extra):
    from landmarks.cli import main

    rc = main(["bench", "--server", f"127.0.0.1:{server.port}", "--core", str(store / "core.safetensors"),
               "--requests", "4", "--concurrency", "1,2", "--categories", "1,2", "--ref-iters", "2", "--rounds", "2",
               "--pairs", "4", "--gap-ms", "1", "--blocks", "2", "--block-size", "3",
               "--json", str(tmp_path / "bench.json"), *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads((tmp_path / "bench.json").read_text())
    lines = out.strip().splitlines()
    tail = dict(line.split(": ", 1) for line in lines[-len(HEADLINES):])
    assert tuple(tail) == HEADLINES  # the output ends with these, in this order, once each
    assert all(sum(line.startswith(f"{h}: ") for line in lines) == 1 for h in HEADLINES)
    values = {h: float(tail[h].split()[0]) for h in HEADLINES}
    assert all(values[h] > 0 for h in HEADLINES if h != "added_ms")
    for h in TARGETED:  # each of the four says its target and whether it is met
        assert re.fullmatch(r"-?[\d.]+ \(target (>=|<=) [\d.]+: (met|missed)\)", tail[h]), tail[h]
        assert result[h] == pytest.approx(values[h], abs=0.006)
    assert "register -> first served" in out and "back to back" in out and "machine: " in out
    assert {c.name for c in server.services.registry.list()} == {"cats", "faces"}  # bench categories removed
    assert "bench: the bench categories run in fp32 (server --precision auto" in out and "--precision int8" in out
    assert result["served_precision"]["precision"] == "fp32" == result["headline"]["bare_precision"]
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
    assert headline["workers"] == 2 and headline["worker_batches"] == [1]  # concurrency 2 over 2 workers
    for r in headline["rounds"]:
        assert r["speedup_vs_official"] > 0 and r["mixed_categories"] == 2
        assert r["speedup_vs_official_batched"] == pytest.approx(r["server_throughput"] / r["official_batched_throughput"])
        assert r["overhead_vs_bare_ort"] == pytest.approx(r["bare_throughput"] / r["server_throughput"])
        assert r["bare_throughput"] == max(r["bare_throughput_by_worker_batch"].values())
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


def test_the_bare_baseline_tries_each_workers_batch_up_to_its_share_of_the_load():
    from serving.bench import worker_batches

    assert worker_batches(16, 2, 16) == [1, 2, 4, 8]  # 16 in flight over 2 workers: up to 8 each
    assert worker_batches(16, 1, 16) == [1, 2, 4, 8, 16]
    assert worker_batches(16, 2, 4) == [1, 2, 4]  # never past the server's --max-batch
    assert worker_batches(1, 2, 16) == [1]
    assert worker_batches(12, 2, 16) == [1, 2, 4]


def test_bare_throughput_runs_the_servers_workers_on_one_prepared_model(artifacts):
    """The bare baseline on a tiny synthetic core: every worker runs its calls on its batch, and the
    figure is crops per second over all of them."""
    import numpy as np

    from landmarks.adapter_io import load_adapter, load_core
    from serving.backends import make_backend
    from serving.bench import bare_throughput

    core = load_core(artifacts.core)
    adapter = load_adapter(artifacts.shipped["faces"], core)
    backend = make_backend("onnxruntime", core, threads=1, precision="fp32")
    folded = backend.prepare(adapter)
    calls = []
    locate = backend.locate

    def counting(model, pixels, boxes):
        calls.append(len(pixels))
        return locate(model, pixels, boxes)

    backend.locate = counting
    size = adapter.config.input_size
    pixels = np.zeros((1, size, size, 3), np.uint8)
    boxes = np.array([[0.0, 0.0, size, size]])
    rate = bare_throughput(backend, folded, pixels, boxes, workers=2, per_worker=4, calls=3)
    assert rate > 0
    assert calls == [4] * 8  # 2 workers x (1 warm-up + 3 timed calls) of 4 crops each


def test_the_four_figures_say_their_target():
    from serving.bench import TARGETS, precision_note, target_line

    assert set(TARGETS) == {"speedup_vs_official", "speedup_vs_official_batched", "overhead_vs_bare_ort", "added_ms"}
    assert target_line("speedup_vs_official", 5.2) == "speedup_vs_official: 5.20 (target >= 5: met)"
    assert target_line("speedup_vs_official_batched", 2.9).endswith("(target >= 3: missed)")
    assert target_line("overhead_vs_bare_ort", 1.2).endswith("(target <= 1.15: missed)")
    assert target_line("added_ms", 1.4).endswith("(target <= 1.5: met)")
    # the noise-calibrated bench adapters: int8 only under an explicit --precision int8, and the bench says so
    note = precision_note("int8", {"precision": "int8", "reason": "--precision int8"})
    assert note.startswith("bench: the bench categories run in int8 (server --precision int8") and "noise" in note
    note = precision_note("auto", {"precision": "fp32", "reason": "no passed check"})
    assert "run in fp32" in note and "start the server with --precision int8" in note


def test_an_int8_server_runs_the_bench_categories_in_int8_and_the_bench_says_so(store, capsys, tmp_path):
    """The bench's noise-calibrated adapters run in int8 only on a server started with --precision int8;
    the four figures then compare that server with the bare int8 model."""
    from landmarks.cli import main
    from tests.serving.helpers import start_server

    server = start_server(store, precision="int8")
    try:
        rc = main(["bench", "--server", f"127.0.0.1:{server.port}", "--core", str(store / "core.safetensors"),
                   "--requests", "4", "--concurrency", "1,4", "--categories", "1", "--ref-iters", "2", "--rounds", "1",
                   "--pairs", "2", "--gap-ms", "1", "--blocks", "1", "--block-size", "2", "--max-batch", "2",
                   "--json", str(tmp_path / "bench.json")])
    finally:
        server.shutdown(grace=0)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bench: the bench categories run in int8 (server --precision int8" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["served_precision"]["precision"] == "int8" and result["headline"]["bare_precision"] == "int8"
    assert result["headline"]["max_batch"] == 2 and result["headline"]["worker_batches"] == [1, 2]
    assert result["overhead_vs_bare_ort"] > 0 and result["speedup_vs_official_batched"] > 0
