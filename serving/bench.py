"""`landmarks bench`: the server under load, against two in-process reference points.

Method (docs/benchmark.md):
1. Read the server's core fingerprint (ServerInfo) and check that `--core FILE` is the same core;
   the bench needs the file to build its own adapters and the two references.
2. Build 16 random adapters against that core (K = the core's K) and register them as
   `bench-0` .. `bench-15` (version `v1`), timing register -> first served Detect for each.
3. Detect load over real gRPC: for 1, 3 and 16 categories (in rotation) x concurrency 1, 4, 16
   (one channel per client thread, fixed raw image of the core's input size, so decoding is
   cheap and the same for every row): latency p50/p95/p99 as the client sees it, throughput,
   and the server's folded-cache hits/misses/evictions during the row.
4. Paired rounds for the two ratios (`--rounds`, `--ref-iters` calls per block): each round
   times, back to back and with the server otherwise idle, `ref_iters` serial Detect calls, the
   two in-process references (batch 1, one call at a time, alternating), and a closed-loop block at
   the highest concurrency. References:
   - bare: the folded network's forward pass as the server's backend runs it
     (`TorchFoldedBackend.prepare` + `run`);
   - official: the projected network (`build_adapted` + `load_adapter_state`; every
     `ProjectedConv2d` recomputes proj @ W on each forward), eager, `torch.no_grad`, which is how
     the authors' code runs an adapted model.
5. Per round: overhead = server p50 at concurrency 1 / bare p50; speedup_vs_official = server
   throughput at the highest concurrency / official throughput. The last two lines print the
   medians over rounds: on a shared machine whose speed drifts by tens of percent between
   minutes, only ratios of neighbouring measurements are stable.
6. Unregister the bench categories (also any left over by an interrupted run).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2

from landmarks.adapter_io import load_adapter, load_core, save_adapter
from landmarks.projection import adapter_state_dict, build_adapted, load_adapter_state
from serving.backend import TorchFoldedBackend
from serving.client import LandmarkClient

__all__ = ["run"]

BENCH_RE = re.compile(r"bench-\d+")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def random_adapters(core, n: int, seed: int = 0, input_size: int | None = None) -> list[bytes]:
    """n adapters of the core's K with random projections / heads (what is served does not matter),
    running the core at `input_size` (default the core's own; the shipped cpu adapters use 64)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            gen = torch.Generator().manual_seed(seed + i)
            adapted = build_adapted(core.build(), core.config.num_landmarks, input_size=input_size)
            with torch.no_grad():
                for name, p in adapted.named_parameters():
                    if name.endswith(".proj"):
                        p.add_(0.02 * torch.randn(p.shape, generator=gen))
                adapted.head.weight.copy_(0.1 * torch.randn(adapted.head.weight.shape, generator=gen))
            path = save_adapter(Path(tmp) / f"bench-{i}.safetensors", adapter_state_dict(adapted), adapted.config,
                                category=f"bench-{i}", core_sha256=core.sha256)
            out.append(path.read_bytes())
    return out


def time_interleaved(fns: list, n: int, warmup: int = 3) -> list[list[float]]:
    """Seconds per call of each fn, calls alternating (a, b, a, b, ...) so that drift in the
    machine's speed during the measurement affects every fn alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return times


def load_row(target: str, client_kwargs: dict, categories: list[str], concurrency: int, requests: int,
             image: np.ndarray) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    server_ms: dict[str, list[float]] = {"decode": [], "queue": [], "compute": [], "total": []}
    per_thread = max(1, requests // concurrency)
    start = threading.Barrier(concurrency + 1)

    def worker(w: int) -> None:
        with LandmarkClient(target, timeout=60, **client_kwargs) as client:
            req = [client.request(image, c) for c in categories]
            client.detect(image, categories[w % len(categories)])  # connect + warm
            mine, timings = [], []
            start.wait()
            for j in range(per_thread):
                t0 = time.perf_counter()
                try:
                    reply = client.inference.Detect(req[(w + j) % len(req)], timeout=60,
                                                    metadata=client._inference_md)
                except grpc.RpcError as exc:
                    with lock:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                mine.append(time.perf_counter() - t0)
                timings.append(reply.timings)
            with lock:
                latencies.extend(mine)
                for t in timings:
                    for key, values in server_ms.items():
                        values.append(getattr(t, f"{key}_ms"))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "categories": len(categories), "concurrency": concurrency, "requests": len(latencies),
        "throughput": len(latencies) / wall, "p50_ms": percentile(latencies, 50) * 1e3,
        "p95_ms": percentile(latencies, 95) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3, "errors": errors,
        # where the time went, as the server reports it per request (p50s)
        "server_p50_ms": {key: percentile(values, 50) for key, values in server_ms.items()},
    }


def grpc_round_trip_ms(target: str, client_kwargs: dict, n: int) -> float:
    """p50 of serial Health/Check calls: the floor any unary RPC pays on this machine (both gRPC
    stacks, Python on each end, the handler-thread hop), to read the overhead against."""
    with LandmarkClient(target, timeout=60, **client_kwargs) as client:
        request = health_pb2.HealthCheckRequest()
        client.health.Check(request, timeout=60)  # connect
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.health.Check(request, timeout=60)
            times.append(time.perf_counter() - t0)
    return percentile(times, 50) * 1e3


def paired_rounds(args, target: str, client_kwargs: dict, core, adapter_bytes: bytes, category: str,
                  image: np.ndarray, adapter_size: int) -> list[dict]:
    """The headline ratios, measured in rounds so that the machine's drift hits both sides alike.

    Each round: a block of `ref_iters` serial Detect calls (concurrency 1), then `ref_iters` bare
    and `ref_iters` official forwards in this process (alternating), then a closed-loop block at the
    highest concurrency. A short pause between blocks lets the other process's OpenMP threads stop
    spinning, so neither side runs while the other's pool still burns a core.
    """
    adapter = load_adapter(adapter_bytes, core)
    x = torch.from_numpy(image[:adapter_size, :adapter_size]).permute(2, 0, 1).float().div(255).unsqueeze(0)
    x = x.contiguous()
    # bare = exactly what the server's backend runs (its folding and its memory format)
    backend = TorchFoldedBackend(core)
    folded = backend.prepare(adapter)
    official = build_adapted(core.build(), adapter.num_landmarks, input_size=adapter_size)
    load_adapter_state(official, adapter.tensors)
    official.eval()

    def bare_forward():
        backend.run(folded, x)

    def official_forward():
        with torch.no_grad():
            official(x)

    conc = max(args.concurrency)
    settle = 0.2  # s; libgomp spins for well under that after a parallel region
    rounds = []
    for _ in range(args.rounds):
        serial = load_row(target, client_kwargs, [category], 1, args.ref_iters, image)
        floor = grpc_round_trip_ms(target, client_kwargs, args.ref_iters)
        time.sleep(settle)
        bare, off = time_interleaved([bare_forward, official_forward], args.ref_iters)
        time.sleep(settle)
        loaded = load_row(target, client_kwargs, [category], conc, max(args.ref_iters, 4 * conc), image)
        time.sleep(settle)
        bare_p50, off_p50 = percentile(bare, 50) * 1e3, percentile(off, 50) * 1e3
        off_throughput = len(off) / sum(off)
        rounds.append({
            "server_p50_ms": serial["p50_ms"], "server_decode_ms": serial["server_p50_ms"]["decode"],
            "server_queue_ms": serial["server_p50_ms"]["queue"], "server_compute_ms": serial["server_p50_ms"]["compute"],
            "server_total_ms": serial["server_p50_ms"]["total"], "grpc_round_trip_ms": floor,
            "bare_p50_ms": bare_p50, "official_p50_ms": off_p50,
            "concurrency": conc, "server_throughput": loaded["throughput"], "official_throughput": off_throughput,
            "overhead": serial["p50_ms"] / bare_p50, "speedup_vs_official": loaded["throughput"] / off_throughput,
        })
    return rounds


def run(args) -> int:
    from serving.auth import read_token

    client_kwargs = {"tls": args.tls, "tls_ca": args.tls_ca,
                     "token": read_token(args.token_file, "LANDMARKS_TOKEN"),
                     "admin_token": read_token(args.admin_token_file, "LANDMARKS_ADMIN_TOKEN")}
    target = args.server
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    core = load_core(args.core)
    results: dict = {"rows": []}
    with LandmarkClient(target, timeout=120, **client_kwargs) as admin:
        admin.wait_ready(60)
        info = admin.server_info()
        until = time.monotonic() + 300
        while not info.ready and time.monotonic() < until:  # a server just started is still loading its core
            time.sleep(0.5)
            info = admin.server_info()
        if not info.ready:
            print(f"error: the server at {target} has not loaded its core after 5 minutes; see its log")
            return 2
        if info.core_sha256 != core.sha256:
            print(f"error: the server at {target} runs core {info.core_sha256[:12]}, but {args.core} is "
                  f"{core.sha256[:12]}; pass --core with the server's core file")
            return 2
        size = core.config.input_size
        adapter_size = args.adapter_size or size
        image = np.random.default_rng(0).integers(0, 256, (args.image_size or size, args.image_size or size, 3),
                                                  dtype=np.uint8)
        n_cats = max(args.categories)
        print(f"bench: server {target} ({info.backend} on {info.device}, core {core.sha256[:12]}, "
              f"K={core.config.num_landmarks}); {n_cats} bench categories running the core at {adapter_size} px; "
              f"{args.requests} requests per row; torch threads here: {torch.get_num_threads()}", flush=True)
        adapters = random_adapters(core, n_cats, input_size=adapter_size)
        results["adapter_size"] = adapter_size
        names = [f"bench-{i}" for i in range(n_cats)]

        def cleanup() -> None:
            for c in admin.categories():
                if BENCH_RE.fullmatch(c.name):
                    with contextlib.suppress(grpc.RpcError):
                        admin.unregister(c.name)

        cleanup()
        try:
            # register -> first served request
            first = []
            for name, data in zip(names, adapters):
                t0 = time.perf_counter()
                admin.register(name, "v1", data)
                while True:
                    try:
                        admin.detect(image, name)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                            raise
                first.append(time.perf_counter() - t0)
            results["register_to_first_ms"] = {"p50": percentile(first, 50) * 1e3, "max": max(first) * 1e3}

            header = (f"{'categories':>10} {'conc':>4} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
                      f"{'p99 ms':>8} {'server p50 ms: queue':>20} {'compute':>8}  cache hits/misses/evictions")
            print(header)
            print("-" * len(header))
            for k in args.categories:
                for conc in args.concurrency:
                    before = admin.server_info().cache
                    row = load_row(target, client_kwargs, names[:k], conc, args.requests, image)
                    after = admin.server_info().cache
                    row["cache"] = {f: getattr(after, f) - getattr(before, f) for f in ("hits", "misses", "evictions")}
                    results["rows"].append(row)
                    err = f"  errors {row['errors']}" if row["errors"] else ""
                    print(f"{k:>10} {conc:>4} {row['requests']:>8} {row['throughput']:>8.1f} {row['p50_ms']:>8.2f} "
                          f"{row['p95_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['server_p50_ms']['queue']:>20.2f} "
                          f"{row['server_p50_ms']['compute']:>8.2f}  {row['cache']['hits']}/"
                          f"{row['cache']['misses']}/{row['cache']['evictions']}{err}", flush=True)
            results["rounds"] = paired_rounds(args, target, client_kwargs, core, adapters[0], names[0], image,
                                              adapter_size)
        finally:
            cleanup()

    rounds = results["rounds"]
    overhead = statistics.median(r["overhead"] for r in rounds)
    speedup = statistics.median(r["speedup_vs_official"] for r in rounds)
    results.update(overhead=overhead, speedup_vs_official=speedup)
    rf = results["register_to_first_ms"]
    print(f"register -> first served request: p50 {rf['p50']:.1f} ms, max {rf['max']:.1f} ms "
          f"({len(names)} registrations)")
    conc = rounds[0]["concurrency"]
    print(f"paired rounds (server, bare and official measured back to back, {len(rounds)} rounds; "
          f"1 category, batch-1 references in this process):")
    print(f"{'round':>5} {'server c=1 p50':>14} {'bare p50':>9} {'official p50':>12} {'overhead':>9} "
          f"{f'server c={conc} req/s':>19} {'official req/s':>14} {'speedup':>8}")
    for i, r in enumerate(rounds):
        print(f"{i + 1:>5} {r['server_p50_ms']:>14.2f} {r['bare_p50_ms']:>9.2f} {r['official_p50_ms']:>12.2f} "
              f"{r['overhead']:>9.2f} {r['server_throughput']:>19.1f} {r['official_throughput']:>14.1f} "
              f"{r['speedup_vs_official']:>8.2f}")
    mid = {key: statistics.median(r[key] for r in rounds)
           for key in ("server_p50_ms", "bare_p50_ms", "grpc_round_trip_ms", "server_decode_ms", "server_queue_ms",
                       "server_compute_ms", "server_total_ms")}
    print(f"where a concurrency-1 request's time goes (medians over rounds, ms): client p50 {mid['server_p50_ms']:.2f} = "
          f"server handler {mid['server_total_ms']:.2f} (decode {mid['server_decode_ms']:.2f}, queue + batch prep "
          f"{mid['server_queue_ms']:.2f}, forward + landmarks {mid['server_compute_ms']:.2f}) + gRPC and client "
          f"{mid['server_p50_ms'] - mid['server_total_ms']:.2f}; an empty RPC (Health/Check) takes "
          f"{mid['grpc_round_trip_ms']:.2f}; bare forward {mid['bare_p50_ms']:.2f}")
    lo_o, hi_o = min(r["overhead"] for r in rounds), max(r["overhead"] for r in rounds)
    lo_s, hi_s = min(r["speedup_vs_official"] for r in rounds), max(r["speedup_vs_official"] for r in rounds)
    print(f"overhead = server p50 at concurrency 1 / bare folded forward p50, per round; median {overhead:.2f} "
          f"(range {lo_o:.2f}-{hi_o:.2f})")
    print(f"speedup = server throughput at concurrency {conc} / official approach's throughput (projection on "
          f"every forward, eager, batch 1), per round; median {speedup:.2f} (range {lo_s:.2f}-{hi_s:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"overhead: {overhead:.2f}")
    print(f"speedup_vs_official: {speedup:.2f}")
    return 0
