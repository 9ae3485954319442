"""Does one kind of request grow the server's memory with its count? (docs/reliability.md, "Soak")

    python tools/memory_probe.py register 300      # new version, Detect on it, unregister the category
    python tools/memory_probe.py register-same 300 # the same, always version v1
    python tools/memory_probe.py cancel 3000       # Detect cancelled by the client right after sending
    python tools/memory_probe.py deadline 3000     # Detect with a 1 ms deadline
    python tools/memory_probe.py bad 3000          # Detect of garbage bytes
    python tools/memory_probe.py detect 3000       # plain Detect, no deadline

A soak mixes everything, so when its RSS creeps it cannot say what grew. This starts the server in
its own process (the default backend and precision, on a copy of --adapters), repeats one operation
N/10 times to warm up, then N times, and prints the process's RSS and Python heap (tracemalloc) before
and after, with the five largest heap differences by traceback. A leak shows as growth in proportion
to N; caches and arenas show as a constant. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("register", "register-same", "cancel", "deadline", "bad", "detect")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def operation(kind: str, address: str, adapter: bytes, photo: bytes):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=120)
    admin, detect = pb_grpc.AdminServiceStub(channel), pb_grpc.LandmarkServiceStub(channel)
    counter = itertools.count()
    good = pb.DetectRequest(image=pb.Image(encoded=photo), category="faces")

    def once() -> None:
        if kind.startswith("register"):
            version = "v1" if kind == "register-same" else f"v{next(counter)}"
            admin.RegisterAdapter(pb.RegisterAdapterRequest(category="churn", version=version, data=adapter),
                                  timeout=60)
            detect.Detect(pb.DetectRequest(image=pb.Image(encoded=photo), category="churn"), timeout=60)
            admin.UnregisterAdapter(pb.UnregisterAdapterRequest(category="churn"), timeout=60)
        elif kind == "cancel":
            detect.Detect.future(good).cancel()
            time.sleep(0.002)
        elif kind == "detect":
            detect.Detect(good)
        else:
            request = good if kind == "deadline" else pb.DetectRequest(image=pb.Image(encoded=b"garbage"),
                                                                       category="faces")
            try:
                detect.Detect(request, timeout=0.001 if kind == "deadline" else 60)
            except grpc.RpcError as exc:
                expected = grpc.StatusCode.DEADLINE_EXCEEDED if kind == "deadline" else grpc.StatusCode.INVALID_ARGUMENT
                if exc.code() != expected:
                    raise
    return once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("n", type=int, help="how many times (after N/10 warm-up repetitions)")
    parser.add_argument("--adapters", type=Path, default=ROOT / "adapters", help="the store to copy (default adapters/)")
    parser.add_argument("--photo", type=Path, default=ROOT / "examples" / "face.jpg")
    args = parser.parse_args(argv)

    from serving.config import ServerConfig
    from serving.server import build_server

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(args.adapters, store)
        handle = build_server(ServerConfig(host="127.0.0.1", port=0, adapters_dir=store))
        handle.start()
        try:
            once = operation(args.kind, handle.address, (store / "faces.safetensors").read_bytes(),
                             args.photo.read_bytes())
            for _ in range(max(20, args.n // 10)):
                once()
            gc.collect()
            time.sleep(1)
            tracemalloc.start(12)
            before, rss_before, started = tracemalloc.take_snapshot(), rss_mb(), time.perf_counter()
            marks = []
            for i in range(args.n):
                once()
                if (i + 1) % max(1, args.n // 5) == 0:
                    marks.append(round(rss_mb(), 1))
            gc.collect()
            time.sleep(1)
            after, rss_after = tracemalloc.take_snapshot(), rss_mb()
        finally:
            # tracing every allocation slows all Python code that follows by several times: never leave it on
            tracemalloc.stop()
            handle.shutdown(grace=0)
    diffs = after.compare_to(before, "traceback")
    heap = sum(d.size_diff for d in diffs)
    print(f"{args.kind} x{args.n} in {time.perf_counter() - started:.0f} s: RSS {rss_before:.1f} -> {rss_after:.1f} MB "
          f"({(rss_after - rss_before) * 1024 / args.n:+.1f} KB per operation; at each fifth: {marks})")
    print(f"Python heap {heap / 1024:+.0f} KB ({heap / args.n:+.0f} B per operation); largest differences:")
    for d in diffs[:5]:
        print(f"  {d.size_diff / 1024:+8.1f} KB in {d.count_diff:+d} blocks, from")
        for line in d.traceback.format()[-4:]:
            print(f"      {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
