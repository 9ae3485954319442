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
4. References in this process, same run, same machine, batch 1, one request at a time, the two
   references' calls alternating:
   - bare: the folded network's forward pass as the server's backend runs it
     (`TorchFoldedBackend.prepare` + `run`);
   - official: the projected network (`build_adapted` + `load_adapter_state`; every
     `ProjectedConv2d` recomputes proj @ W on each forward), eager, `torch.no_grad`, which is how
     the authors' code runs an adapted model.
5. overhead = server p50 at concurrency 1 (1 category) / bare p50;
   speedup_vs_official = server throughput at concurrency 16 (1 category) / official throughput.
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
        info = admin.server_info()
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
        finally:
            cleanup()

    # references, same process, same run (the server is idle now)
    adapter = load_adapter(adapters[0], core)
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

    bare, off = time_interleaved([bare_forward, official_forward], args.ref_iters)
    off_wall = sum(off)
    results["bare_ms"] = {"p50": percentile(bare, 50) * 1e3, "mean": statistics.fmean(bare) * 1e3}
    results["official_ms"] = {"p50": percentile(off, 50) * 1e3, "throughput": len(off) / off_wall}

    def row_for(cats: int, conc: int) -> dict | None:
        return next((r for r in results["rows"] if r["categories"] == cats and r["concurrency"] == conc), None)

    r1 = row_for(1, 1) or results["rows"][0]
    r16 = row_for(1, 16) or max(results["rows"], key=lambda r: r["concurrency"])
    overhead = r1["p50_ms"] / results["bare_ms"]["p50"]
    speedup = r16["throughput"] / results["official_ms"]["throughput"]
    results.update(overhead=overhead, speedup_vs_official=speedup)
    rf = results["register_to_first_ms"]
    print(f"register -> first served request: p50 {rf['p50']:.1f} ms, max {rf['max']:.1f} ms "
          f"({len(names)} registrations)")
    print(f"bare folded forward (batch 1, in-process): p50 {results['bare_ms']['p50']:.2f} ms")
    print(f"official approach (projected, eager, batch 1, serial): p50 {results['official_ms']['p50']:.2f} ms, "
          f"{results['official_ms']['throughput']:.1f} req/s")
    print(f"overhead = server p50 at concurrency {r1['concurrency']} ({r1['categories']} category) / bare forward")
    print(f"speedup = server throughput at concurrency {r16['concurrency']} ({r16['categories']} category) / official")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"overhead: {overhead:.2f}")
    print(f"speedup_vs_official: {speedup:.2f}")
    return 0
