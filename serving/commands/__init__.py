"""`landmarks` subcommands for serving: one module per command (add_arguments + main)."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

__all__ = ["add_server_argument", "client_for", "print_json", "rpc_error"]


def add_server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="localhost:50051", help="HOST:PORT of the server (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)")


def client_for(args: argparse.Namespace):
    from serving.client import LandmarkClient

    return LandmarkClient(args.server, timeout=args.timeout)


def rpc_error(exc: grpc.RpcError, server: str) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
        print(f"error: no server answers at {server} (start one with: landmarks serve)", file=sys.stderr)
    else:
        print(f"error: {code.name if code else 'RPC'}: {exc.details() if hasattr(exc, 'details') else exc}",
              file=sys.stderr)
    return 1


def print_json(value) -> None:
    print(json.dumps(value, indent=2))
