"""Does an oversized Detect cost the server memory? Sends Detect calls over the inference port's
limit to a running server and prints its RSS before and after (docs/reliability.md).

    landmarks serve --port 50051 &
    python scripts/probe_message_limit.py --server localhost:50051 --pid $! --mb 256 --calls 4
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (its RSS is read)")
    parser.add_argument("--mb", type=int, default=256, help="size of each oversized request (default %(default)s)")
    parser.add_argument("--calls", type=int, default=4, help="concurrent oversized calls (default %(default)s)")
    args = parser.parse_args()
    size = args.mb << 20
    channel = grpc.insecure_channel(args.server, options=[("grpc.max_send_message_length", size + (1 << 20))])
    stub = pb_grpc.LandmarkServiceStub(channel)
    request = pb.DetectRequest(category="faces", image=pb.Image(encoded=b"\x89PNG" + bytes(size)))
    before = rss_mb(args.pid)
    codes: list[str] = []

    def send() -> None:
        try:
            stub.Detect(request, timeout=120)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)

    threads = [threading.Thread(target=send) for _ in range(args.calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{args.calls} x {args.mb} MB Detect: {sorted(set(codes))}; server RSS {before:.0f} -> "
          f"{rss_mb(args.pid):.0f} MB")


if __name__ == "__main__":
    main()
