"""Where a loaded server's CPU goes: `landmarks serve` (ONNX Runtime, default threads) on an empty
store with one random category at 128 px, closed-loop Detect calls at concurrency 16 from this
process, and for each block the CPU seconds per second of the server and of this load generator
(/proc), the server's CPU per request, and beside it the CPU per crop of the same session run bare
here (batch 8, one thread, as a batch worker's). With py-spy installed (`pip install py-spy`, not
a dependency) the server's CPU is also split by Python thread name for one block.

    python scripts/server_cpu_split.py                 # extra `landmarks serve` flags may follow
    python scripts/server_cpu_split.py --session-threads 2

Pause a background training first (scripts/paused.sh).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

from landmarks.adapter_io import load_adapter, load_core
from landmarks.client import LandmarkClient
from serving.backends import make_backend
from serving.bench import random_adapters
from serving.load import load_row

PORT, SIZE, CONCURRENCY, REQUESTS = 50097, 128, 16, 1000


def cpu_s(pid: int, task: str | None = None) -> float:
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_thread(pid: int, seconds: float) -> dict[str, float]:
    """CPU cores used by each of the server's Python threads (by name) over `seconds`; native ones together."""
    tasks = os.listdir(f"/proc/{pid}/task")
    before = {t: cpu_s(pid, t) for t in tasks}
    time.sleep(seconds)
    after = {t: cpu_s(pid, t) for t in tasks if os.path.exists(f"/proc/{pid}/task/{t}")}
    dump = subprocess.run([shutil.which("py-spy"), "dump", "-p", str(pid)], capture_output=True, text=True,
                          check=False).stdout  # no py-spy output: threads are counted as native
    names = {m.group(1): m.group(2) for m in re.finditer(r'Thread (\d+) \(\w+\): "([^"]+)"', dump)}
    cores: dict[str, float] = defaultdict(float)
    for t, v in after.items():
        cores[re.sub(r"[_-]\d+$", "", names.get(t, "native threads (ONNX Runtime pool, gRPC core)"))] += (v - before[t]) / seconds
    return dict(cores)


def main() -> None:
    core = load_core("adapters/core.safetensors")
    data = random_adapters(core, 1, input_size=SIZE)[0]
    backend = make_backend("onnxruntime", core, threads=1)
    prepared = backend.prepare(load_adapter(data, core))
    crops = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[0, 0, SIZE, SIZE]], np.float64), (8, 1))
    backend.locate(prepared, crops, boxes)
    t0 = time.process_time()
    for _ in range(20):
        backend.locate(prepared, crops, boxes)
    bare = (time.process_time() - t0) / (20 * 8) * 1e3
    store = tempfile.mkdtemp()
    server = subprocess.Popen([sys.executable, "-m", "landmarks.cli", "serve", "--adapters", store, "--core",
                               "adapters/core.safetensors", "--port", str(PORT), "--backend", "onnxruntime",
                               *sys.argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with LandmarkClient(f"localhost:{PORT}", timeout=60) as client:
            client.wait_ready(60)
            while not client.server_info().ready:
                time.sleep(0.3)
            client.register("bench-0", "v1", data)
            image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            target = f"localhost:{PORT}"
            load_row(target, {}, ["bench-0"], CONCURRENCY, 200, image)
            print(f"bare forward here, batch 8, one thread: {bare:.2f} ms CPU per crop")
            for _ in range(3):
                s0, m0, t0 = cpu_s(server.pid), cpu_s(os.getpid()), time.perf_counter()
                row = load_row(target, {}, ["bench-0"], CONCURRENCY, REQUESTS, image)
                s1, m1, wall = cpu_s(server.pid), cpu_s(os.getpid()), time.perf_counter() - t0
                print(f"{row['throughput']:.0f} req/s at concurrency {CONCURRENCY}: server {(s1 - s0) / wall:.2f} "
                      f"cores ({(s1 - s0) / row['requests'] * 1e3:.2f} ms CPU per request), load generator "
                      f"{(m1 - m0) / wall:.2f} cores; server p50 compute {row['server_p50_ms']['compute']:.1f} ms, "
                      f"queue {row['server_p50_ms']['queue']:.1f} ms")
            if shutil.which("py-spy"):
                import threading
                split: dict[str, float] = {}
                worker = threading.Thread(target=lambda: split.update(per_thread(server.pid, 6.0)))
                worker.start()
                load_row(target, {}, ["bench-0"], CONCURRENCY, REQUESTS, image)
                worker.join()
                print("server CPU by thread during one block (cores): " +
                      ", ".join(f"{k} {v:.2f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v >= 0.005))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
