"""SIGTERM during traffic, a stuck request cannot hold shutdown, and memory over 200
register/unregister cycles. Servers run in subprocesses where a signal or RSS is measured."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from landmarks.client import LandmarkClient
from tests.serving.helpers import (
    Gate,
    calibrate_for_int8,
    metric_value,
    png_bytes,
    scrape,
    spawn_server,
    start_server,
    wait_for,
)

Code = grpc.StatusCode

# `landmarks serve` with a backend that takes 1 s per forward pass (a stand-in for a heavy model)
SLOW_SERVER = """
import sys, time
from serving.backends import available_backends, backend_class
def slowed(real):
    def slow(self, model, images, boxes):
        time.sleep(1.0)
        return real(self, model, images, boxes)
    return slow
for name in available_backends():  # what serves requests
    backend = backend_class(name)
    backend.locate = slowed(backend.locate)
from landmarks.cli import main
sys.exit(main(["serve"] + sys.argv[1:]))
"""


def test_sigterm_finishes_in_flight_requests_and_exits(store):
    proc, port, mport = spawn_server(["--adapters", str(store), "--metrics-port", "0", "--grace", "30"],
                                     script=SLOW_SERVER)
    try:
        target = f"127.0.0.1:{port}"
        with LandmarkClient(target, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            client.wait_ready(30)
            jobs = [pool.submit(client.detect, png_bytes(seed=i), ("cats", "faces")[i % 2]) for i in range(6)]
            wait_for(lambda: metric_value(scrape(mport), "landmarks_inflight_requests") == 6, "6 requests in flight")
            proc.send_signal(signal.SIGTERM)
            # in-flight requests complete normally
            results = [j.result(60) for j in jobs]
            assert [len(r.points) for r in results] == [4, 6, 4, 6, 4, 6]
            assert proc.wait(60) == 0
        out = proc.stdout.read()
        assert "stopped" in out
        with LandmarkClient(target, timeout=5) as late:  # nothing accepts any more
            with pytest.raises(grpc.RpcError) as exc:
                late.detect(png_bytes(), "cats")
            assert exc.value.code() == Code.UNAVAILABLE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_draining_refuses_new_work_and_stuck_request_cannot_hold_shutdown(store):
    handle = start_server(store)
    gate = Gate(handle)  # the first forward pass never ends on its own: a request stuck in compute
    target = f"127.0.0.1:{handle.port}"
    try:
        with LandmarkClient(target, timeout=60) as client, ThreadPoolExecutor(4) as pool:
            stuck = gate.plug(client, pool)
            done = {}
            stopper = threading.Thread(target=lambda: done.setdefault("finished", handle.shutdown(grace=0.5)))
            stopper.start()
            wait_for(lambda: handle.lifecycle.draining, "draining")
            assert handle.lifecycle.health._server_status[""] == 2  # NOT_SERVING
            stopper.join(60)
            assert not stopper.is_alive() and done["finished"] in (True, False)
            with pytest.raises(grpc.RpcError) as exc:  # the stuck client got an answer, it is not hanging
                stuck.result(60)
            assert exc.value.code() in (Code.CANCELLED, Code.UNAVAILABLE)
            with pytest.raises(grpc.RpcError) as exc:
                client.detect(png_bytes(), "cats")
            assert exc.value.code() == Code.UNAVAILABLE
    finally:
        gate.open()


def rss_bytes(pid: int) -> int:
    import os

    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def corrupt(data: bytes, how: str) -> bytes:
    import json
    import struct

    tensors = st_load(data)
    n = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(data[8:8 + n]).get("__metadata__", {})
    key = next(k for k in tensors if k.endswith(".proj"))
    if how == "nan":
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0] = float("nan")
    else:  # wrong shape
        tensors[key] = torch.zeros(3, 3)
    return st_save(tensors, metadata=meta)


def _int8_cpu() -> bool:
    from landmarks.hardware import cpu_int8_flags
    from serving.backends import DEFAULT_BACKEND

    return DEFAULT_BACKEND == "onnxruntime" and bool(cpu_int8_flags())


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("birds", ["fp32", pytest.param("int8", marks=pytest.mark.skipif(
    not _int8_cpu(), reason="int8 runs by default only with onnxruntime on a CPU with VNNI or AMX"))])
def test_memory_after_200_register_unregister_cycles(store, artifacts, tmp_path, birds):
    """Registering, serving and removing a version 200 times (a quarter of them bad files) leaves the
    server's memory where it was; in int8 too (an int8 session and its graph per registration)."""
    proc, port, _ = spawn_server(["--adapters", str(store)])
    paths = [artifacts.extra["birds-v1"], artifacts.extra["birds-v2"]]
    if birds == "int8":  # calibrated copies: the default precision serves them in int8 here
        paths = [calibrate_for_int8(Path(shutil.copy(p, tmp_path / p.name)), store / "core.safetensors") for p in paths]
    good = [p.read_bytes() for p in paths]
    bad = [corrupt(good[0], "nan"), corrupt(good[0], "shape"), b"not a safetensors file"]
    image = png_bytes()
    outcomes: dict[str, int] = {}

    def cycles(client, n: int, start: int) -> None:
        for i in range(start, start + n):
            try:
                if i % 4 == 3:  # a failed registration
                    client.register("birds", f"v{i}", bad[i % 3])
                else:
                    client.register("birds", f"v{i}", good[i % 2])
                    assert len(client.detect(image, "birds").points) == 3
                    client.unregister("birds")
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except grpc.RpcError as exc:
                assert i % 4 == 3 and exc.code() == Code.INVALID_ARGUMENT, (i, exc.code(), exc.details())
                outcomes["failed"] = outcomes.get("failed", 0) + 1

    try:
        with LandmarkClient(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_ready(30)
            cycles(client, 40, 0)  # warm up allocator pools, lazy imports, gRPC buffers
            client.register("birds", "probe", good[0])
            assert next(c for c in client.categories() if c.name == "birds").versions[0].precision == birds
            client.unregister("birds")
            time.sleep(0.2)
            before = rss_bytes(proc.pid)
            cycles(client, 200, 1000)
            time.sleep(0.2)
            after = rss_bytes(proc.pid)
            assert {c.name for c in client.categories()} == {"cats", "faces"}
            info = client.server_info()
            assert info.cache.entries == 2  # only the shipped categories stay resident
        print(f"RSS before {before / 2**20:.1f} MiB, after 200 cycles {after / 2**20:.1f} MiB; {outcomes}")
        assert outcomes["failed"] == 60
        assert after <= 1.10 * before, (before, after)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001
            proc.kill()
