"""`landmarks` subcommands that need no server-side code: `info` and the client commands, one module
each (add_arguments + main), and the helpers the client commands share.

grpc is imported inside the helpers, so `landmarks info` does not load it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

__all__ = ["add_server_argument", "client_for", "print_json", "rpc_error"]


def add_server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="localhost:50051", help="HOST:PORT of the server (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)")
    parser.add_argument("--wait", type=float, default=10.0,
                        help="seconds to wait for a server that is still starting, e.g. right after "
                             "`landmarks serve &` (default %(default)s; 0 = fail at once)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (server verified by the system's CAs)")
    parser.add_argument("--tls-ca", type=str, default=None, help="PEM CA to verify the server with (implies --tls)")
    parser.add_argument("--token-file", default=None,
                        help="inference token file (default: $LANDMARKS_TOKEN, if set)")
    parser.add_argument("--admin-token-file", default=None,
                        help="admin token file (default: $LANDMARKS_ADMIN_TOKEN, if set)")


def client_for(args: argparse.Namespace):
    import grpc

    from landmarks.client import LandmarkClient
    from landmarks.tokens import read_token

    client = LandmarkClient(args.server, timeout=args.timeout, tls=args.tls, tls_ca=args.tls_ca,
                            token=read_token(args.token_file, "LANDMARKS_TOKEN"),
                            admin_token=read_token(args.admin_token_file, "LANDMARKS_ADMIN_TOKEN"))
    wait = getattr(args, "wait", 0.0)
    if wait > 0:
        # a server started a moment ago may still be loading its core and adapters; if none comes
        # up, the call itself then fails with the usual clear message
        with contextlib.suppress(grpc.FutureTimeoutError):
            grpc.channel_ready_future(client.channel).result(timeout=wait)
    return client


def rpc_error(exc: grpc.RpcError, server: str) -> int:
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
        print(f"error: no server answers at {server} (start one with: landmarks serve)", file=sys.stderr)
    else:
        print(f"error: {code.name if code else 'RPC'}: {exc.details() if hasattr(exc, 'details') else exc}",
              file=sys.stderr)
    return 1


def print_json(value) -> None:
    print(json.dumps(value, indent=2))
