"""A server's footprint: seconds from start to SERVING (gRPC health) and its resident memory then, and
after one Detect per category. Runs `LANDMARKS serve` (any installation's `landmarks` command) on the
shipped adapters and reads /proc; `docs/runtime.md` has the numbers.

    python scripts/serve_footprint.py /tmp/vserve/bin/landmarks [--port 50071] [--runs 3] [-- serve flags]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_run(command: str, port: int, extra: list[str]) -> dict:
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installation's own code
    proc = subprocess.Popen([command, "serve", "--port", str(port), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command} serve exited with {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        to_serving = time.perf_counter() - started
        time.sleep(1.0)
        at_start = rss_mb(proc.pid)
        from landmarks.client import LandmarkClient

        with LandmarkClient(f"127.0.0.1:{port}", timeout=60) as client:
            for category in ("faces", "cats", "shoes"):
                client.detect(ROOT / "examples" / f"{category[:-1]}.jpg", category)
        after_detect = rss_mb(proc.pid)
        channel.close()
        return {"to_serving_s": round(to_serving, 2), "rss_mb": round(at_start), "rss_after_detect_mb": round(after_detect)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("landmarks", help="the `landmarks` executable of the installation to measure")
    parser.add_argument("--port", type=int, default=50071)
    parser.add_argument("--runs", type=int, default=3)
    args, serve_args = parser.parse_known_args()  # the rest (after --) are `serve` flags
    serve_args = [a for a in serve_args if a != "--"]
    runs = [one_run(args.landmarks, args.port, serve_args) for _ in range(args.runs)]
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(json.dumps({"landmarks": args.landmarks, "runs": runs, "median": summary}))


if __name__ == "__main__":
    main()
