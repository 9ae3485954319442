"""The floor of a unary RPC on this machine: grpc's thread-pool server against its asyncio server.

    python scripts/grpc_floor.py [--calls 300]

Starts two bare servers with only the standard Health service (one `grpc.server` with a thread
pool, as `landmarks serve` uses, one `grpc.aio.server`) in subprocesses and times Health/Check
from this process, the two alternating call by call, ~0.5 ms apart ("warm") and after 10 ms idle
("cold", as the bench's overhead calls run). Measured 2026-11-25 on the 2-core AMD EPYC (three
runs): thread-pool 1.27-1.45 / 1.85-1.97 ms, asyncio 1.17-1.33 / 1.93-2.12 ms (warm / cold p50):
an asyncio front end would not lower the floor here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

PORTS = {"thread-pool": 50081, "asyncio": 50082}


def serve_threads(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(32))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_asyncio(port: int) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per server and gap")
    parser.add_argument("--serve", choices=PORTS, help=argparse.SUPPRESS)  # the subprocesses
    args = parser.parse_args()
    if args.serve == "thread-pool":
        return serve_threads(PORTS["thread-pool"])
    if args.serve == "asyncio":
        return asyncio.run(serve_asyncio(PORTS["asyncio"]))
    servers = [subprocess.Popen([sys.executable, __file__, "--serve", name]) for name in PORTS]
    try:
        stubs = {}
        for name, port in PORTS.items():
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=30)
            stubs[name] = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for stub in stubs.values():
            for _ in range(20):
                stub.Check(request, timeout=10)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.calls):
            for label, gap in (("warm", 0.0005), ("cold (10 ms idle)", 0.01)):
                for name, stub in stubs.items():
                    time.sleep(gap)
                    t0 = time.perf_counter()
                    stub.Check(request, timeout=10)
                    times.setdefault((name, label), []).append(time.perf_counter() - t0)
        for (name, label), values in times.items():
            print(f"{name:>11} server, {label:>17}: p50 {statistics.median(values) * 1e3:.3f} ms")
    finally:
        for server in servers:
            server.kill()


if __name__ == "__main__":
    main()
