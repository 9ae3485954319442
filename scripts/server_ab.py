"""Call-by-call A/B of running servers: which setting answers a lone request faster?

    GOMP_SPINCOUNT=20000 landmarks serve --port 50072 &     # B: a setting to try
    landmarks serve --port 50071 &                           # A: the default
    python scripts/server_ab.py localhost:50071,localhost:50072 --category faces

One Detect at a time, the servers in turn, each call after the same idle gap (so that one server's
OpenMP threads have stopped spinning before the other's call), for `--calls` calls per server. On a
shared VM whose speed drifts by tens of percent within seconds, only such interleaved measurements
compare settings fairly. Prints each server's client-side p50 (and on each half of the calls, to
show how stable it is) and the p50 of the server's own timings.

With `--concurrency N` it compares throughput under load instead: `--blocks` rounds in which each
server in turn serves a closed-loop block of `--block-requests` requests with N in flight (the
bench's load generator, `serving.load.load_row`); prints each server's median req/s and the
median of the per-round ratios to the first server. `--adapter-size S` registers the same random
bench adapter (core run at S px; needs `--core`) on every server as category `ab-0` and uses it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from landmarks.client import LandmarkClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", help="comma-separated host:port of the servers")
    parser.add_argument("--category", default="faces")
    parser.add_argument("--image-size", type=int, default=128, help="side of the raw test image")
    parser.add_argument("--calls", type=int, default=300, help="calls per server")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="idle time before each call")
    parser.add_argument("--concurrency", type=int, default=1, help="> 1: compare throughput under load")
    parser.add_argument("--blocks", type=int, default=8, help="rounds of load blocks (with --concurrency)")
    parser.add_argument("--block-requests", type=int, default=96, help="requests per load block")
    parser.add_argument("--adapter-size", type=int, default=None,
                        help="register a random bench adapter at this input size as 'ab-0' and use it")
    parser.add_argument("--core", default="adapters/core.safetensors", help="the servers' core (--adapter-size)")
    args = parser.parse_args()
    targets = args.targets.split(",")
    image = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    clients = [LandmarkClient(t, timeout=60) for t in targets]
    for client in clients:
        client.wait_ready(90)
        while not client.server_info().ready:
            time.sleep(0.5)
    if args.adapter_size:
        from landmarks.adapter_io import load_core
        from serving.bench import random_adapters

        data = random_adapters(load_core(args.core), 1, input_size=args.adapter_size)[0]
        for client in clients:
            if any(c.name == "ab-0" for c in client.categories()):  # left by an interrupted run
                client.unregister("ab-0")
            client.register("ab-0", "v1", data)
        args.category = "ab-0"
    try:
        if args.concurrency > 1:
            return throughput_ab(args, targets, image)
        return latency_ab(args, targets, clients, image)
    finally:
        if args.adapter_size:
            for client in clients:
                client.unregister("ab-0")


def throughput_ab(args, targets: list[str], image: np.ndarray) -> int:
    from serving.load import load_row

    rates: list[list[float]] = [[] for _ in targets]
    for target in targets:  # warm
        load_row(target, {}, [args.category], args.concurrency, args.concurrency, image)
    for _ in range(args.blocks):
        for i, target in enumerate(targets):
            time.sleep(0.2)
            rates[i].append(load_row(target, {}, [args.category], args.concurrency, args.block_requests,
                                     image)["throughput"])
    for target, r in zip(targets, rates):
        ratio = statistics.median(a / b for a, b in zip(r, rates[0]))
        print(f"{target}: concurrency {args.concurrency}: median {statistics.median(r):.1f} req/s "
              f"(blocks {min(r):.1f}-{max(r):.1f}); median ratio to {targets[0]}: {ratio:.2f}")
    return 0


def latency_ab(args, targets: list[str], clients: list[LandmarkClient], image: np.ndarray) -> int:
    requests = [c.request(image, args.category) for c in clients]
    for client, request in zip(clients, requests):
        for _ in range(10):
            client.inference.Detect(request, timeout=60)
    latency: list[list[float]] = [[] for _ in clients]
    timings: list[list[tuple]] = [[] for _ in clients]
    for _ in range(args.calls):
        for i, (client, request) in enumerate(zip(clients, requests)):
            time.sleep(args.gap_ms / 1e3)
            t0 = time.perf_counter()
            reply = client.inference.Detect(request, timeout=60)
            latency[i].append((time.perf_counter() - t0) * 1e3)
            t = reply.timings
            timings[i].append((t.decode_ms, t.queue_ms, t.compute_ms, t.total_ms))
    for target, lat, tim in zip(targets, latency, timings):
        decode, queue, compute, total = np.median(np.array(tim), axis=0)
        half = len(lat) // 2
        p50 = statistics.median(lat)
        print(f"{target}: p50 {p50:.2f} ms (halves {statistics.median(lat[:half]):.2f}, "
              f"{statistics.median(lat[half:]):.2f}); server p50s: decode {decode:.2f}, queue {queue:.2f}, "
              f"forward + landmarks {compute:.2f}, handler {total:.2f}; gRPC and client {p50 - total:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
