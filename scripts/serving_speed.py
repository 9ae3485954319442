"""Serving measurements beside the bench (docs/benchmark.md), one subcommand each:

    python scripts/serving_speed.py backends [...]   # the serving backends side by side: how the default is chosen
    python scripts/serving_speed.py decode [...]     # decoding a client's image: PIL, OpenCV, decoding at a smaller scale
    python scripts/serving_speed.py ab HOST:PORT,HOST:PORT [...]  # call-by-call A/B of running servers
    python scripts/serving_speed.py profile HOST:PORT --pid PID [...]  # where a loaded server's CPU goes

`python scripts/serving_speed.py SUBCOMMAND --help` says more.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import threading
import time

# isort: off
import serving  # noqa: F401  (first: GOMP_SPINCOUNT, as in the server, must be set when torch loads)
import numpy as np
import torch
# isort: on
from PIL import Image, ImageOps

from landmarks.adapter_io import load_adapter, load_core
from landmarks.client import LandmarkClient
from serving.backends import available_backends, make_backend
from serving.bench import random_adapters

BACKENDS_DOC = """The serving backends side by side: time per call of what the server runs (`Backend.locate`: uint8
crops and boxes -> points), per batch, idle and next to a busy Python thread.

    python scripts/serving_speed.py backends                       # 64 and 128 px, batches 1 and 16
    python scripts/serving_speed.py backends --sizes 64 --batches 1 --threads 1 --rounds 6
    python scripts/serving_speed.py backends --backends onnxruntime,onnxruntime-spin,torchscript

Every backend (`serving.backends`; `onnxruntime-spin` is the ONNX Runtime backend with its
threads allowed to spin, which the server does not do) runs the shipped core folded with a random
near-identity adapter (the values do not matter for speed). "busy" adds one Python thread that computes for 1 ms and
sleeps for 1 ms in a loop, standing in for gRPC handler threads decoding requests: an eager forward
needs the GIL for every op and waits for that thread; the TorchScript graph runs without it. With
`--threads 1` the forward and the busy thread have a core each, so what remains is the GIL. The
variants alternate block by block (`--rounds`) because a shared VM's speed drifts; medians are printed.
"""

class BusyPython:
    """A thread that holds the GIL for 1 ms, then sleeps 1 ms, until stopped."""

    def __enter__(self):
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        torch.set_num_threads(1)
        while not self._stop:
            until = time.perf_counter() + 1e-3
            while time.perf_counter() < until:
                sum(range(100))
            time.sleep(1e-3)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()


def backends_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="serving_speed.py backends", description=BACKENDS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default="adapters/core.safetensors")
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--backends", default=None,
                        help="comma list (default: every installed backend, and onnxruntime-spin)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=8, help="forward passes per block")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    core = load_core(args.core)
    names = args.backends.split(",") if args.backends else [
        *available_backends(), *(["onnxruntime-spin"] if "onnxruntime" in available_backends() else [])]
    threads = torch.get_num_threads()
    print(f"threads {threads} (torch, and ONNX Runtime's intra-op); median ms per call of Backend.locate (batch)")
    print(f"{'size':>4} {'batch':>5} " + " ".join(f"{f'{b} {load}':>22}" for b in names for load in ("idle", "busy")))
    for size in map(int, args.sizes.split(",")):
        adapter = load_adapter(random_adapters(core, 1, input_size=size)[0], core)
        backends = {name: make_backend("onnxruntime", core, threads=threads, spinning=True)
                    if name == "onnxruntime-spin" else make_backend(name, core, **(
                        {"threads": threads} if name == "onnxruntime" else {})) for name in names}
        prepared = {name: b.prepare(adapter) for name, b in backends.items()}
        for batch in map(int, args.batches.split(",")):
            pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).numpy()
            boxes = np.array([[0.0, 0.0, size, size]] * batch, dtype=np.float64)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for load in ("idle", "busy"):
                    for name, backend in backends.items():
                        with BusyPython() if load == "busy" else _nothing():
                            for _ in range(args.iters):
                                t0 = time.perf_counter()
                                backend.locate(prepared[name], pixels, boxes)
                                times.setdefault((name, load), []).append((time.perf_counter() - t0) * 1e3)
            print(f"{size:>4} {batch:>5} " + " ".join(
                f"{statistics.median(times[name, load]):>22.2f}" for name in names for load in ("idle", "busy")),
                flush=True)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


DECODE_DOC = """Decoding a client's image: PIL against OpenCV (`cv2.imdecode`), for the sizes clients send.

    python scripts/serving_speed.py decode                 # JPEG q90 and PNG at 256 .. 1920 px, 5 rounds
    python scripts/serving_speed.py decode --rounds 9 --iters 20

For each format and size: a photo-like test image (smooth gradients plus noise, so JPEG and PNG
sizes are realistic) is encoded once; then, alternating block by block (a shared VM's speed drifts),
each decoder turns the bytes into an H x W x 3 uint8 RGB array with EXIF orientation applied,
which is what the server needs: PIL `Image.open` + `ImageOps.exif_transpose` + `np.asarray`;
OpenCV `cv2.imdecode(IMREAD_COLOR)` (applies EXIF orientation itself) + BGR -> RGB. Medians are
printed, and the largest pixel difference between the two (JPEG decoders may round differently).
One thread each (the server decodes in handler threads).

"hot path" times decoding the whole image and cropping: `serving.preprocess.decode_encoded` (PIL,
pixels as stored) + `crop_square` to `--crop` px, against OpenCV (`IMREAD_IGNORE_ORIENTATION`,
the same pixels) + `Image.fromarray` (the crop takes a PIL image) + the same crop. "served" is
what the server does per request now, `serving.preprocess.decode_crop`: a JPEG much larger than the
crop is decoded at 1/2-1/8 scale (libjpeg's DCT scaling); "crop diff" is its crop's mean and largest
difference from the whole decode's, in 8-bit levels.
"""

def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 37 + c) * np.cos(y / 53 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def with_pil(data: bytes) -> np.ndarray:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)


def with_cv2(data: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


DECODERS = {"PIL": with_pil, "OpenCV": with_cv2}


def hot_paths(size: int) -> dict:
    import cv2

    from serving.preprocess import crop_square, decode_encoded, resolve_box

    def pil(data: bytes):
        image = decode_encoded(data, 50_000_000, 4)
        return crop_square(image, resolve_box(None, image.width, image.height), size)

    def ocv(data: bytes):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return crop_square(image, resolve_box(None, image.width, image.height), size)

    def served(data: bytes):
        from landmarks.v1 import landmarks_pb2 as pb
        from serving.preprocess import decode_crop
        from serving.query import DetectQuery

        request = pb.DetectRequest(category="bench")
        request.image.encoded = data
        return decode_crop(DetectQuery.from_proto(request), size, 50_000_000, 4)[0]

    return {"PIL hot path": pil, "OpenCV hot path": ocv, "served": served}


def decode_main(argv: list[str]) -> None:
    import cv2

    parser = argparse.ArgumentParser(prog="serving_speed.py decode", description=DECODE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256x256,640x480,1280x960,1920x1080")
    parser.add_argument("--formats", default="JPEG,PNG")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10, help="decodes per block")
    parser.add_argument("--crop", type=int, default=64, help="hot path: crop size (default: the shipped adapters')")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    print(f"PIL {Image.__version__}, OpenCV {cv2.__version__}; median ms per decode to an RGB array")
    paths = {**DECODERS, **hot_paths(args.crop)}
    print(f"{'format':>6} {'size':>10} {'KB':>6} {'PIL':>8} {'OpenCV':>8} {'PIL/OpenCV':>10} {'max diff':>8} "
          f"{'PIL hot path':>12} {'OpenCV hot path':>15} {'ratio':>6} {'served':>7} {'crop diff':>10}")
    for fmt in args.formats.split(","):
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            data = encode(photo(w, h), fmt)
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, decode in paths.items():
                    decode(data)
                    for _ in range(args.iters):
                        t0 = time.perf_counter()
                        decode(data)
                        times[name].append((time.perf_counter() - t0) * 1e3)
            diff = int(np.abs(with_pil(data).astype(int) - with_cv2(data).astype(int)).max())
            pil, ocv = statistics.median(times["PIL"]), statistics.median(times["OpenCV"])
            hot_pil, hot_ocv = statistics.median(times["PIL hot path"]), statistics.median(times["OpenCV hot path"])
            served = statistics.median(times["served"])
            crop_diff = np.abs(paths["served"](data).astype(int) - paths["PIL hot path"](data))
            print(f"{fmt:>6} {size:>10} {len(data) / 1e3:>6.0f} {pil:>8.2f} {ocv:>8.2f} {pil / ocv:>10.2f} {diff:>8} "
                  f"{hot_pil:>12.2f} {hot_ocv:>15.2f} {hot_pil / hot_ocv:>6.2f} {served:>7.2f} "
                  f"{crop_diff.mean():>5.2f}/{crop_diff.max():<4}", flush=True)


AB_DOC = """Call-by-call A/B of running servers: which setting answers a lone request faster?

    GOMP_SPINCOUNT=20000 landmarks serve --port 50072 &     # B: a setting to try
    landmarks serve --port 50071 &                           # A: the default
    python scripts/serving_speed.py ab localhost:50071,localhost:50072 --category faces

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

def ab_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="serving_speed.py ab", description=AB_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = parser.parse_args(argv)
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


PROFILE_DOC = """Where a running server's time goes under the bench's closed-loop load (py-spy).

    landmarks serve --precision int8 --port 50187 &
    python scripts/serving_speed.py profile localhost:50187 --pid $! --category faces --seconds 20

Runs `--concurrency` Detect calls always in flight (the bench's load generator, `serving.load.load_row`)
on one category for `--seconds`, while `py-spy record` (pip install py-spy; `--py-spy` names the
binary) samples every thread of the server process. Prints the CPU seconds the server and this load
generator used over the wall time (both share the machine's cores), and the server's samples by
where they were: the ONNX Runtime forward (`InferenceSession.run`), the rest of the batch workers,
gRPC's own Python, the handler (parsing, decoding, filling the reply) and anything else; then the
busiest innermost frames. The raw stacks are kept in `--out`.
"""

# the first frame (innermost outward) that matches names the bucket a sample belongs to
PROFILE_BUCKETS = (
    ("ONNX Runtime forward (InferenceSession.run)", ("onnxruntime_inference_collection.py",)),
    ("batch workers: batching, crops, points", ("serving/batching.py", "serving/work.py", "serving/backends/")),
    ("handler: request, decode, reply", ("serving/servicer.py", "serving/calls.py", "serving/preprocess.py",
                                         "serving/inputs.py", "serving/query.py", "serving/errors.py",
                                         "serving/auth.py", "serving/metrics.py", "google/protobuf")),
    ("gRPC's Python (server threads, polling)", ("grpc/",)),
)


def _cpu_seconds(pid: int) -> float:
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def profile_main(argv: list[str]) -> int:
    import subprocess
    from collections import Counter
    from pathlib import Path

    from serving.load import load_row

    parser = argparse.ArgumentParser(prog="serving_speed.py profile", description=PROFILE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="host:port of the server")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--category", default="faces")
    parser.add_argument("--image-size", type=int, default=128, help="side of the raw test image")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy binary")
    parser.add_argument("--out", type=Path, default=Path("runs/profile-server.txt"), help="raw stacks (folded)")
    args = parser.parse_args(argv)
    image = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    with LandmarkClient(args.target, timeout=60) as client:
        client.wait_ready(90)
        while not any(c.name == args.category and c.active_version for c in client.categories()):
            time.sleep(0.5)  # the server is still loading its store
    load_row(args.target, {}, [args.category], args.concurrency, 4 * args.concurrency, image)  # warm
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([args.py_spy, "record", "--pid", str(args.pid), "--rate", str(args.rate), "--duration",
                            str(int(args.seconds)), "--format", "raw", "--threads", "--nonblocking", "--output",
                            str(args.out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # py-spy attaches
    server0, client0, wall0 = _cpu_seconds(args.pid), time.process_time(), time.perf_counter()
    served = 0
    while time.perf_counter() - wall0 < args.seconds - 1.5:
        served += load_row(args.target, {}, [args.category], args.concurrency, 8 * args.concurrency, image)["requests"]
    wall = time.perf_counter() - wall0
    server_cpu, client_cpu = _cpu_seconds(args.pid) - server0, time.process_time() - client0
    _, err = spy.communicate(timeout=args.seconds + 60)
    if spy.returncode:
        print(err)
        return 1
    cores = os.cpu_count() or 1
    print(f"{served} requests in {wall:.1f} s ({served / wall:.0f} req/s) at concurrency {args.concurrency}; CPU "
          f"seconds per wall second: server {server_cpu / wall:.2f}, this load generator {client_cpu / wall:.2f}, "
          f"of {cores} cores")
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in args.out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        bucket = next((name for frame in reversed(frames) for name, marks in PROFILE_BUCKETS
                       if any(m in frame for m in marks)), "other")
        buckets[bucket] += n
        leaves[frames[-1]] += n
    print(f"server samples by where they were ({total} samples of non-idle threads, {args.rate}/s):")
    for name, n in buckets.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("busiest innermost frames:")
    for frame, n in leaves.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    return 0


COMMANDS = {"backends": backends_main, "decode": decode_main, "ab": ab_main, "profile": profile_main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
