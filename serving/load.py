"""The load generator behind `landmarks bench` and `scripts/serving_speed.py ab`: closed-loop Detect load
over real gRPC, timed calls after an idle gap, and the floor of an empty RPC."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from landmarks.client import LandmarkClient

__all__ = ["grpc_round_trip_ms", "load_row", "percentile", "time_calls"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def time_calls(fn, n: int, warmup: int = 3, gap_s: float = 0.0) -> list[float]:
    """Seconds per call of `fn`, `n` calls after `warmup` untimed ones, each timed call after
    `gap_s` of idleness (untimed)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def load_row(target: str, client_kwargs: dict, categories: list[str], concurrency: int, requests: int,
             image: np.ndarray) -> dict:
    """Closed loop: `concurrency` Detect calls always in flight, each slot on its own channel (its own
    HTTP/2 connection), `requests` in all. One thread issues them as gRPC futures (the callbacks only
    record and hand the slot back), so the load generator, which shares the machine's cores with the
    server, spends little CPU: no thread per client and no contention for this process's GIL."""
    total = max(concurrency, requests - requests % concurrency)
    clients = [LandmarkClient(target, timeout=60, **client_kwargs) for _ in range(concurrency)]
    try:
        slots = []
        for w, client in enumerate(clients):
            slot_requests = [client.request(image, categories[(w + j) % len(categories)])
                             for j in range(len(categories))]
            client.detect(image, categories[w % len(categories)])  # connect + warm
            slots.append((client, slot_requests))
        latencies: list[float] = []
        errors: dict[str, int] = {}
        server_ms: dict[str, list[float]] = {"decode": [], "queue": [], "compute": [], "total": []}
        free: queue.SimpleQueue = queue.SimpleQueue()
        lock = threading.Lock()  # callbacks may run on several gRPC threads

        def issue(w: int, j: int) -> None:
            client, slot_requests = slots[w]
            t0 = time.perf_counter()
            future = client.inference.Detect.future(slot_requests[j % len(slot_requests)], timeout=60,
                                                    metadata=client._inference_md)

            def done(f) -> None:  # on a gRPC thread: record, give the slot back
                dt = time.perf_counter() - t0
                with lock:
                    try:
                        t = f.result().timings
                    except grpc.RpcError as exc:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    else:
                        latencies.append(dt)
                        for key, values in server_ms.items():
                            values.append(getattr(t, f"{key}_ms"))
                free.put(w)

            future.add_done_callback(done)

        t0 = time.perf_counter()
        for w in range(concurrency):
            issue(w, 0)
        for n in range(concurrency, total):
            issue(free.get(), n)
        for _ in range(concurrency):
            free.get()
        wall = time.perf_counter() - t0
    finally:
        for client in clients:
            client.close()
    return {
        "categories": len(categories), "concurrency": concurrency, "requests": len(latencies),
        "throughput": len(latencies) / wall, "p50_ms": percentile(latencies, 50) * 1e3,
        "p95_ms": percentile(latencies, 95) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3, "errors": errors,
        # where the time went, as the server reports it per request (p50s)
        "server_p50_ms": {key: percentile(values, 50) for key, values in server_ms.items()},
    }


def grpc_round_trip_ms(target: str, client_kwargs: dict, n: int, gap_s: float = 0.0) -> float:
    """p50 of serial Health/Check calls: the floor any unary RPC pays on this machine (both gRPC
    stacks, Python on each end, the handler-thread hop), to read the overhead against. With `gap_s`
    idle before each call, as the overhead's Detect calls have: after a few milliseconds of idleness
    every thread on the path wakes up cold, which alone can cost ~0.5-1 ms per RPC."""
    with LandmarkClient(target, timeout=60, **client_kwargs) as client:
        request = health_pb2.HealthCheckRequest()
        times = time_calls(lambda: client.health.Check(request, timeout=60), n, warmup=1, gap_s=gap_s)  # warm-up connects
    return percentile(times, 50) * 1e3
