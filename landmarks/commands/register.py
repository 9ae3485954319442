"""landmarks register: add an adapter version to a running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from landmarks.commands import add_server_argument, client_for, print_json, rpc_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)
    parser.add_argument("--category", required=True)
    parser.add_argument("--version", required=True, help="immutable version name, e.g. v2 or 2026-11-24")
    parser.add_argument("--no-activate", action="store_true", help="store it without making it the active version")
    parser.add_argument("--server-path", action="store_true",
                        help="send FILE as a path the server reads (inside its --allow-path) instead of its bytes")
    parser.add_argument("file", type=Path, help="the adapter .safetensors file")


def main(args: argparse.Namespace) -> int:
    if not args.server_path and not args.file.is_file():
        print(f"error: no such file {args.file}", file=sys.stderr)
        return 2
    with client_for(args) as client:
        try:
            reply = client.register(args.category, args.version, args.file, activate=not args.no_activate,
                                    server_path=args.server_path)
        except grpc.RpcError as exc:
            return rpc_error(exc, args.server)
    print_json(MessageToDict(reply, always_print_fields_with_no_presence=True))
    return 0
