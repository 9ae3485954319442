"""landmarks bench: latency/throughput of a running server, with the bare forward pass, an empty RPC and
the official (projection-on-every-forward) approach measured in the same run; see docs/benchmark.md."""

from __future__ import annotations

import os

# libgomp reads its spin time once, when torch loads: the server's (and bench's bare forward's)
# setting goes in before anything imports torch; an operator's own value wins (docs/benchmark.md)
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

import argparse
import sys
from pathlib import Path

import grpc

from landmarks.commands import add_server_argument, rpc_error
from serving.config import REPO_ADAPTERS


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)
    parser.add_argument("--core", type=Path, default=REPO_ADAPTERS / "core.safetensors",
                        help="the server's core file (to build bench adapters and the references; default %(default)s)")
    parser.add_argument("--requests", type=int, default=400, help="Detect calls per table row (default %(default)s)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="comma list (default 1,4,16)")
    parser.add_argument("--categories", type=_ints, default=[1, 3, 16],
                        help="comma list of category counts in rotation (default 1,3,16)")
    parser.add_argument("--pairs", type=int, default=200,
                        help="overhead: serial Detect calls, each followed by a bare forward here (default %(default)s)")
    parser.add_argument("--gap-ms", type=float, default=10.0,
                        help="idle time before each of those calls, so the other process's OpenMP threads have "
                             "stopped spinning (default %(default)s)")
    parser.add_argument("--blocks", type=int, default=20,
                        help="overhead back to back: blocks of closed-loop Detect calls, each followed by a block "
                             "of as many back-to-back bare forwards here (default %(default)s)")
    parser.add_argument("--block-size", type=int, default=10,
                        help="counted calls per block, after 2 uncounted ones (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="speedup: rounds of a loaded block then a block of official forwards (default %(default)s)")
    parser.add_argument("--ref-iters", type=int, default=20,
                        help="official forwards per round (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the raw test image (default: the core's input size)")
    parser.add_argument("--adapter-size", type=int, default=None,
                        help="input size the bench adapters run the core at (default: the one most adapters shipped "
                             "next to --core run at, the smaller on a tie: 128 px for the repository's three; "
                             "else the core's)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="threads of the references here (torch's, and ONNX Runtime's for the bare forward of "
                             "an onnxruntime server; default: as the server's default)")
    parser.add_argument("--batch-workers", type=int, default=2,
                        help="the server's --batch-workers (ServerInfo does not report it): the bare baseline's threads, "
                             "and for a server that does not report its forward threads, the share of --torch-threads "
                             "each bare session gets (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="the server's --max-batch (ServerInfo does not report it): the batch of the batched "
                             "official baseline and the largest per-worker batch of the bare one (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")


def main(args: argparse.Namespace) -> int:
    from serving.bench import run

    if not args.core.is_file():
        print(f"error: no core file {args.core}; pass --core with the file the server was started with",
              file=sys.stderr)
        return 2
    try:
        return run(args)
    except grpc.RpcError as exc:
        return rpc_error(exc, args.server)
