"""landmarks unregister: remove an adapter version, or a whole category, from a running server."""

from __future__ import annotations

import argparse

import grpc

from landmarks.commands import add_server_argument, client_for, print_json, rpc_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)
    parser.add_argument("--category", required=True)
    parser.add_argument("--version", default="", help="one version (default: the whole category)")


def main(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        try:
            removed = client.unregister(args.category, args.version)
        except grpc.RpcError as exc:
            return rpc_error(exc, args.server)
    print_json({"category": args.category, "removed_versions": removed})
    return 0
