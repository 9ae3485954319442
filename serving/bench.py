"""`landmarks bench`: the server under load, against in-process baselines measured beside it.

Method (docs/benchmark.md):
1. Read the server's core fingerprint (ServerInfo) and check that `--core FILE` is the same core;
   the bench needs the file to build its own adapters and the two references.
2. Build 16 random adapters against that core (K = the core's K) and register them as
   `bench-0` .. `bench-15` (version `v1`), timing register -> first served Detect for each.
3. Detect load over real gRPC: for 1, 3 and 16 categories (in rotation) x concurrency 1, 4, 16
   (closed loop, `concurrency` calls in flight, one channel per slot; fixed raw image of the
   core's input size, so decoding is cheap and the same for every row): latency p50/p95/p99 as
   the client sees it, throughput, and the server's folded-cache hits/misses/evictions.
4. The headline numbers, each measured next to its reference, because this shared VM's speed
   jumps between levels ~40% apart within seconds (`headline_ratios`):
   - added_ms = p50 of `--pairs` serial Detect calls (concurrency 1, one category) minus p50 of as
     many bare forwards in this process, and rpc_floor_ms = p50 of as many empty RPCs
     (Health/Check), the three taking turns call by call, each after `--gap-ms` idle; bare = what
     the server's backend runs for that request (the backend named in ServerInfo, built here:
     `make_backend(name).prepare` + `locate` on the crop the server cuts). overhead = the ratio of
     the first two (kept for continuity; a faster forward raises it while the server improves).
     The same back to back (`--blocks` alternating blocks of `--block-size` closed-loop calls) is
     printed too: there the bare forwards run hot, each right after the last, which no served
     request can;
   - the throughput ratios, medians over `--rounds` of, in turn: a closed-loop block at the highest
     concurrency on one category (the server); `--ref-iters` official forwards at batch 1; official
     forwards of `--max-batch` crops on the server's compute threads; the bare backend's model in
     `--batch-workers` threads at each per-worker batch up to concurrency / workers (the fastest
     kept); a closed-loop block over all the bench categories in rotation. official = the projected
     network (`build_adapted` + `load_adapter_state`; every `ProjectedConv2d` recomputes proj @ W on
     each forward), eager, `torch.no_grad`, which is how the authors' code runs an adapted model.
       speedup_vs_official = server / official at batch 1 (as its users run it);
       speedup_vs_official_batched = server / official at the server's batch and threads;
       overhead_vs_bare_ort = bare / server (what gRPC, queueing and the handler cost in throughput);
       mixed_vs_single = all categories' / one category's;
   - register_to_served_ms = p50 of step 2's times.
5. The output ends with the four figures with targets (`speedup_vs_official:`,
   `speedup_vs_official_batched:`, `overhead_vs_bare_ort:`, `added_ms:`, each saying whether its
   target is met), then `overhead:`, `rpc_floor_ms:`, `register_to_served_ms:` and
   `mixed_vs_single:`. The bench adapters run the core at the input size most adapters shipped next
   to `--core` run at (128 px for the shipped ones), else at the core's own; `--adapter-size`
   overrides it. Their int8 calibrations come from noise images with no check, so only a server
   started with `--precision int8` runs them in int8; the bench prints the format they run in.
6. Unregister the bench categories (also any left over by an interrupted run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2
from PIL import Image

from landmarks.adapter_io import load_adapter, load_core, save_adapter
from landmarks.client import LandmarkClient
from landmarks.images import crop_square, pixels_to_images
from landmarks.int8 import CALIBRATION_KEY, measure
from landmarks.projection import adapter_state_dict, build_adapted, fold, load_adapter_state
from serving.backends import BACKEND_NAMES, make_backend
from serving.load import grpc_round_trip_ms, load_row, percentile, time_calls
from serving.threads import DEFAULT_COMPUTE_THREADS, ComputeThreads

__all__ = ["run"]

BENCH_RE = re.compile(r"bench-\d+")
_BLOCK_WARMUP = 2  # calls at the start of each closed-loop block that are not counted


def random_adapters(core, n: int, seed: int = 0, input_size: int | None = None) -> list[bytes]:
    """n adapters of the core's K with random projections / heads (what is served does not matter),
    running the core at `input_size` (default the core's own; the shipped cpu adapters use 64). Each
    carries an int8 calibration (`landmarks.int8`: ranges of two noise images, the bench's kind of
    input, no accuracy check) so that a server run with --precision int8 serves them in int8; under
    --precision auto (the default) a calibration without a passed check runs in fp32."""
    size = input_size or core.config.input_size
    noise = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
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
            tensors = adapter_state_dict(adapted)
            calibration = measure(fold(core.build(), tensors, adapted.config), noise)
            path = save_adapter(Path(tmp) / f"bench-{i}.safetensors", tensors, adapted.config,
                                category=f"bench-{i}", core_sha256=core.sha256,
                                **{CALIBRATION_KEY: calibration.to_json()})
            out.append(path.read_bytes())
    return out


def headline_ratios(args, target: str, client_kwargs: dict, core, adapter_bytes: bytes, names: list[str],
                    image: np.ndarray, adapter_size: int, backend_name: str, precision: str = "fp32",
                    forward_threads: int = 0) -> dict:
    """The headline numbers, each side measured next to its reference so the machine's drift
    (a shared VM's speed can jump by tens of percent within seconds) hits both alike.

    added_ms, rpc_floor_ms, overhead: `pairs` times, in turn, one Detect call, one bare forward in
    this process and one empty RPC (Health/Check), each after the same short idle gap (long enough
    for the other process's threads to stop spinning); medians. Back to back: `blocks` times,
    alternately, `block_size` closed-loop Detect calls and as many back-to-back bare forwards.
    speedup_vs_official, mixed_vs_single: `rounds` times, in turn, a closed-loop block on one
    category at the highest concurrency, a block of official forwards, and the same closed loop over
    all the bench categories in rotation; the medians of the per-round throughput ratios.
    """
    adapter = load_adapter(adapter_bytes, core)
    category = names[0]
    # bare = exactly what the server's backend runs for this request: its folded model on the crop
    # the server cuts (uint8, adapter size), points mapped into the image's pixels
    name = backend_name if backend_name in BACKEND_NAMES else "eager"
    # an ORT session with the threads the server gives each session (ServerInfo.forward_threads; a
    # server that does not report them: a batch worker's share, from --torch-threads / --batch-workers)
    shared = forward_threads or ComputeThreads.split(args.torch_threads or DEFAULT_COMPUTE_THREADS,
                                                     max(1, args.batch_workers), None).shared
    backend = make_backend(name, core, **({"threads": shared} if name == "onnxruntime" else {}), precision=precision)
    folded = backend.prepare(adapter)
    height, width = image.shape[:2]
    pixels = crop_square(Image.fromarray(image), (0.0, 0.0, float(width), float(height)), adapter_size)[None]
    boxes = np.array([[0.0, 0.0, width, height]], dtype=np.float64)
    official = build_adapted(core.build(), adapter.num_landmarks, input_size=adapter_size)
    load_adapter_state(official, adapter.tensors)
    official.eval()
    x = pixels_to_images(torch.from_numpy(pixels)).contiguous()

    batch = max(1, args.max_batch)
    xs = x.expand(batch, *x.shape[1:]).contiguous()
    workers = max(1, args.batch_workers)
    # the server's compute threads: its workers' sessions together (onnxruntime), else --torch-threads
    server_threads = shared * workers if name == "onnxruntime" else (args.torch_threads or DEFAULT_COMPUTE_THREADS)

    def official_forward():
        with torch.no_grad():
            official(x)

    def official_batched():
        with torch.no_grad():
            official(xs)

    gap = args.gap_ms / 1e3
    server_ms, bare_ms, floor_ms, replies = [], [], [], []
    loop_server_ms, loop_bare_ms, loop_replies = [], [], []
    with LandmarkClient(target, timeout=60, **client_kwargs) as client:
        request = client.request(image, category)
        health = health_pb2.HealthCheckRequest()

        def detect(into: list) -> None:
            into.append(client.inference.Detect(request, timeout=60, metadata=client._inference_md))

        def bare() -> None:
            backend.locate(folded, pixels, boxes)

        def empty_rpc() -> None:
            client.health.Check(health, timeout=60)

        def ms(seconds: list[float]) -> list[float]:
            return [t * 1e3 for t in seconds]

        for _ in range(5):  # warm every path
            detect([])
            bare()
            empty_rpc()
        # after idleness: call by call, each after the gap, so neither process's threads are still
        # spinning when the other one runs
        for _ in range(args.pairs):
            server_ms += ms(time_calls(functools.partial(detect, replies), 1, warmup=0, gap_s=gap))
            bare_ms += ms(time_calls(bare, 1, warmup=0, gap_s=gap))
            floor_ms += ms(time_calls(empty_rpc, 1, warmup=0, gap_s=gap))
        # back to back: blocks of a closed loop each; the first calls of a block are not counted
        for _ in range(args.blocks):
            block: list = []
            loop_server_ms += ms(time_calls(functools.partial(detect, block), args.block_size, warmup=_BLOCK_WARMUP))
            loop_replies += block[_BLOCK_WARMUP:]
            loop_bare_ms += ms(time_calls(bare, args.block_size, warmup=_BLOCK_WARMUP))
    floor = grpc_round_trip_ms(target, client_kwargs, 40)

    conc = max(args.concurrency)
    per_worker = worker_batches(conc, workers, batch)
    batched_iters = max(3, -(-args.ref_iters // 4))
    rounds = []
    for _ in range(args.rounds):
        time.sleep(0.2)
        single = load_row(target, client_kwargs, [category], conc, 4 * conc, image)
        time.sleep(0.2)
        off = time_calls(official_forward, args.ref_iters, warmup=1)
        time.sleep(0.2)
        with torch_threads(server_threads):
            off_batched = time_calls(official_batched, batched_iters, warmup=1)
        time.sleep(0.2)
        bare_ort = {b: bare_throughput(backend, folded, pixels, boxes, workers, b, max(2, -(-4 * conc // (workers * b))))
                    for b in per_worker}
        time.sleep(0.2)
        mixed = load_row(target, client_kwargs, names, conc, max(4 * conc, 2 * len(names)), image)
        best = max(bare_ort, key=bare_ort.get)
        rounds.append({"server_throughput": single["throughput"], "official_throughput": len(off) / sum(off),
                       "official_p50_ms": percentile(off, 50) * 1e3,
                       "official_batched_throughput": batch * len(off_batched) / sum(off_batched),
                       "official_batched_p50_ms": percentile(off_batched, 50) * 1e3,
                       "bare_throughput_by_worker_batch": {str(b): v for b, v in bare_ort.items()},
                       "bare_worker_batch": best, "bare_throughput": bare_ort[best],
                       "mixed_throughput": mixed["throughput"], "mixed_categories": len(names)})
        r = rounds[-1]
        r["speedup_vs_official"] = r["server_throughput"] / r["official_throughput"]
        r["speedup_vs_official_batched"] = r["server_throughput"] / r["official_batched_throughput"]
        r["overhead_vs_bare_ort"] = r["bare_throughput"] / r["server_throughput"]
        r["mixed_vs_single"] = r["mixed_throughput"] / r["server_throughput"]

    def summary(server: list[float], bare: list[float], replies_: list, floor_ms_: float) -> dict:
        half_s, half_b = len(server) // 2, len(bare) // 2
        return {
            "server_p50_ms": percentile(server, 50), "bare_p50_ms": percentile(bare, 50),
            "overhead": percentile(server, 50) / percentile(bare, 50),
            "added_ms": percentile(server, 50) - percentile(bare, 50),
            # the same ratio on each half: how stable it is
            "overhead_halves": [percentile(server[:half_s], 50) / percentile(bare[:half_b], 50),
                                percentile(server[half_s:], 50) / percentile(bare[half_b:], 50)],
            "server_timings_p50_ms": {k: percentile([getattr(r.timings, f"{k}_ms") for r in replies_], 50)
                                      for k in ("decode", "queue", "compute", "total")},
            "grpc_round_trip_ms": floor_ms_,
        }

    return {
        "bare_backend": backend.name,
        "bare_threads": shared if name == "onnxruntime" else torch.get_num_threads(),
        # the format the bare model runs this adapter in (under auto: int8 only for a checked calibration)
        "bare_precision": (backend.precision_for(adapter) if hasattr(backend, "precision_for")
                           else getattr(backend, "precision", "fp32")),
        "closed_loop": {"blocks": args.blocks, "block_size": args.block_size, "calls": len(loop_server_ms),
                        **summary(loop_server_ms, loop_bare_ms, loop_replies, floor)},
        "after_idle": {"pairs": len(server_ms), "gap_ms": args.gap_ms,
                       **summary(server_ms, bare_ms, replies, percentile(floor_ms, 50))},
        "concurrency": conc,
        "workers": workers, "max_batch": batch, "server_threads": server_threads, "worker_batches": per_worker,
        "official_threads": torch.get_num_threads(),
        "rounds": rounds,
        **{key: statistics.median(r[key] for r in rounds) for key in HEADLINE_RATIOS},
    }


HEADLINE_RATIOS = ("speedup_vs_official", "speedup_vs_official_batched", "overhead_vs_bare_ort", "mixed_vs_single")


def worker_batches(concurrency: int, workers: int, max_batch: int) -> list[int]:
    """Per-worker batches the bare baseline tries: powers of two up to what `concurrency` requests
    in flight give each of the server's workers (and no more than its --max-batch)."""
    top = max(1, min(max_batch, -(-concurrency // workers)))
    out = [1]
    while out[-1] * 2 <= top:
        out.append(out[-1] * 2)
    return out


def bare_throughput(backend, folded, pixels: np.ndarray, boxes: np.ndarray, workers: int, per_worker: int,
                    calls: int) -> float:
    """Images/s of `workers` threads each calling `backend.locate` `calls` times on `per_worker` crops at
    once, on one prepared model: the server's batch workers on one category with no gRPC, queue or
    Python handler around them (ONNX Runtime releases the GIL while it runs)."""
    crops, crop_boxes = np.repeat(pixels, per_worker, axis=0), np.repeat(boxes, per_worker, axis=0)
    start = threading.Barrier(workers + 1)

    def work() -> None:
        backend.locate(folded, crops, crop_boxes)  # warm this thread's path
        start.wait()
        for _ in range(calls):
            backend.locate(folded, crops, crop_boxes)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return workers * per_worker * calls / (time.perf_counter() - t0)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(args) -> int:
    from landmarks.tokens import read_token

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
        shipped = shipped_input_size(args.core, core)
        adapter_size = args.adapter_size or shipped or size
        image = np.random.default_rng(0).integers(0, 256, (args.image_size or size, args.image_size or size, 3),
                                                  dtype=np.uint8)
        n_cats = max(args.categories)
        size_from = "--adapter-size" if args.adapter_size else "the shipped adapters'" if shipped else "the core's"
        results["machine"] = machine()
        print(f"bench: server {target} ({info.backend}, {info.precision or 'fp32'}, on {info.device}, "
              f"core {core.sha256[:12]}, "
              f"K={core.config.num_landmarks}); {n_cats} bench categories running the core at {adapter_size} px "
              f"({size_from} size), {image.shape[1]}x{image.shape[0]} raw test image; {args.requests} requests per row; "
              f"torch threads here: {torch.get_num_threads()}", flush=True)
        print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load average "
              f"{results['machine']['load_before']} before the run (client and server share it)", flush=True)
        warning = busy_warning(results["machine"]["busy_before"], results["machine"]["cores"])
        if warning:
            print(warning, flush=True)
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
            results["served_precision"] = served_precision(admin, names[0])
            print(precision_note(info.precision or "fp32", results["served_precision"]), flush=True)

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
            results["headline"] = headline_ratios(args, target, client_kwargs, core, adapters[0], names, image,
                                                  adapter_size, info.backend, info.precision or "fp32",
                                                  info.forward_threads)
        finally:
            cleanup()

    h = results["headline"]
    loop, idle = h["closed_loop"], h["after_idle"]
    overhead, speedup = idle["overhead"], h["speedup_vs_official"]
    rf = results["register_to_first_ms"]
    results["machine"]["load_after"] = os.getloadavg()[0]
    results.update(overhead=overhead, overhead_back_to_back=loop["overhead"], speedup_vs_official=speedup,
                   speedup_vs_official_batched=h["speedup_vs_official_batched"],
                   overhead_vs_bare_ort=h["overhead_vs_bare_ort"], added_ms=idle["added_ms"],
                   rpc_floor_ms=idle["grpc_round_trip_ms"], register_to_served_ms=rf["p50"],
                   mixed_vs_single=h["mixed_vs_single"], targets=TARGETS)
    print(f"register -> first served request: p50 {rf['p50']:.1f} ms, max {rf['max']:.1f} ms "
          f"({len(names)} registrations)")

    def split(m: dict) -> str:
        t = m["server_timings_p50_ms"]
        return (f"decode {t['decode']:.2f}, queue + batch prep {t['queue']:.2f}, forward + landmarks "
                f"{t['compute']:.2f}, handler total {t['total']:.2f}; gRPC and client "
                f"{m['server_p50_ms'] - t['total']:.2f} (an empty RPC, Health/Check: {m['grpc_round_trip_ms']:.2f})")

    print(f"after idle, measured as {idle['pairs']} rounds of one Detect call (concurrency 1, one category), one bare "
          f"forward ({h['bare_backend']}, Backend.locate on the server's crop) in this process and one empty RPC, "
          f"each after {idle['gap_ms']:g} ms idle: p50 {idle['server_p50_ms']:.2f} ms vs {idle['bare_p50_ms']:.2f} ms "
          f"(added {idle['added_ms']:.2f} ms, overhead {overhead:.2f}; halves {idle['overhead_halves'][0]:.2f}, "
          f"{idle['overhead_halves'][1]:.2f}); empty RPC {idle['grpc_round_trip_ms']:.2f} ms")
    print(f"  where a request's time goes (server p50s, ms): {split(idle)}")
    print(f"back to back, measured as {loop['blocks']} blocks of {loop['block_size']} Detect calls in a closed loop "
          f"alternating with blocks of as many bare forwards: p50 {loop['server_p50_ms']:.2f} ms vs "
          f"{loop['bare_p50_ms']:.2f} ms = {loop['overhead']:.2f} (added {loop['added_ms']:.2f} ms); the bare "
          f"forwards run hot, each right after the last")
    print(f"  where a request's time goes (server p50s, ms): {split(loop)}")
    conc = h["concurrency"]
    print(f"throughput at concurrency {conc}, measured as {len(h['rounds'])} rounds of, in turn: a block on one "
          f"category ({4 * conc} requests); {args.ref_iters} official forwards (projection on every forward, eager, "
          f"batch 1, {h['official_threads']} torch threads); official forwards of {h['max_batch']} crops "
          f"({h['server_threads']} torch threads: the server's batch and threads); the bare {h['bare_backend']} "
          f"model ({h['bare_precision']}) in {h['workers']} threads of {h['bare_threads']} (the server's workers), "
          f"{'/'.join(map(str, h['worker_batches']))} crops per call, the fastest kept; and a block over "
          f"{len(names)} categories in rotation (crops/s):")
    print(f"{'round':>5} {'one category':>12} {'official':>9} {'batched':>8} {'bare':>8} {'(batch)':>7} "
          f"{'speedup':>8} {'batched':>8} {'vs bare':>8} {f'{len(names)} categories':>14} {'mixed/single':>12}")
    for i, r in enumerate(h["rounds"]):
        print(f"{i + 1:>5} {r['server_throughput']:>12.1f} {r['official_throughput']:>9.1f} "
              f"{r['official_batched_throughput']:>8.1f} {r['bare_throughput']:>8.1f} {r['bare_worker_batch']:>7} "
              f"{r['speedup_vs_official']:>8.2f} {r['speedup_vs_official_batched']:>8.2f} "
              f"{r['overhead_vs_bare_ort']:>8.2f} {r['mixed_throughput']:>14.1f} {r['mixed_vs_single']:>12.2f}")
    ranges = {k: (min(r[k] for r in h["rounds"]), max(r[k] for r in h["rounds"])) for k in HEADLINE_RATIOS}
    print("  medians (range): " + ", ".join(f"{k} {h[k]:.2f} ({lo:.2f}-{hi:.2f})" for k, (lo, hi) in ranges.items()))
    print(f"machine load average: {results['machine']['load_before']} before, {results['machine']['load_after']:.2f} "
          "after (1 min)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    for key, value in (("speedup_vs_official", speedup),
                       ("speedup_vs_official_batched", h["speedup_vs_official_batched"]),
                       ("overhead_vs_bare_ort", h["overhead_vs_bare_ort"]), ("added_ms", idle["added_ms"])):
        print(target_line(key, value))
    print(f"overhead: {overhead:.2f}")
    print(f"rpc_floor_ms: {idle['grpc_round_trip_ms']:.2f}")
    print(f"register_to_served_ms: {rf['p50']:.1f}")
    print(f"mixed_vs_single: {h['mixed_vs_single']:.2f}")
    return 0


# the four headline figures and what each should reach (docs/benchmark.md, "Baselines")
TARGETS = {"speedup_vs_official": (">=", 5.0), "speedup_vs_official_batched": (">=", 3.0),
           "overhead_vs_bare_ort": ("<=", 1.15), "added_ms": ("<=", 1.5)}


def target_line(key: str, value: float) -> str:
    op, target = TARGETS[key]
    met = value >= target if op == ">=" else value <= target
    return f"{key}: {value:.2f} (target {op} {target:g}: {'met' if met else 'missed'})"


def served_precision(admin: LandmarkClient, category: str) -> dict:
    """The number format the server runs a category's active version in, and why (ListCategories)."""
    for c in admin.categories():
        if c.name == category:
            for v in c.versions:
                if v.version == c.active_version:
                    return {"precision": v.precision or "fp32", "reason": v.precision_reason}
    return {"precision": "", "reason": ""}


def precision_note(server_precision: str, served: dict) -> str:
    """What the bench categories run in. Their int8 calibrations are ranges of two noise images with no
    accuracy check, so only an explicit --precision int8 serves them in int8 (auto keeps them fp32)."""
    note = (f"bench: the bench categories run in {served['precision'] or 'an unreported format'} "
            f"(server --precision {server_precision}")
    note += f": {served['reason']})" if served.get("reason") else ")"
    if server_precision == "auto":
        note += ("; their int8 calibrations come from noise images with no accuracy check, so auto serves them in "
                 "fp32: start the server with --precision int8 to measure int8")
    elif served.get("precision") == "int8":
        note += "; int8 on calibrations from noise images with no accuracy check (the bench measures speed, not points)"
    return note


def shipped_input_size(core_path: Path, core) -> int | None:
    """The input size most adapters shipped next to the core file run at (the smaller on a tie), else
    None: the size most categories are served at."""
    sizes: Counter[int] = Counter()
    for path in Path(core_path).parent.glob("*.safetensors"):
        with contextlib.suppress(Exception):  # the core itself, or anything that is not an adapter of it
            sizes[load_adapter(path, core).config.input_size] += 1
    return min(sizes, key=lambda size: (-sizes[size], size)) if sizes else None


def cpu_busy(seconds: float = 1.0) -> float | None:
    """The fraction of all cores busy over `seconds` (/proc/stat; None where there is none). The load
    average is no guide here: a bench run just before leaves it above 1 on an idle machine."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def busy_warning(busy: float | None, cores: int | None) -> str | None:
    """What to print when something else uses the CPU before a run (its numbers would be low and noisy)."""
    if busy is None or busy < 0.25:
        return None
    return (f"warning: {busy:.0%} of the {cores} cores were busy before the run, with the bench idle: "
            "something else is computing (a training? pause it, e.g. scripts/paused.sh); these numbers "
            "will be lower and noisier than the machine's, and comparable only with runs beside them")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    busy = cpu_busy()
    return {"cpu": cpu, "cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2),
            "busy_before": None if busy is None else round(busy, 3),
            "torch": torch.__version__, "python": platform.python_version()}
