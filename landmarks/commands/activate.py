"""landmarks activate: make a registered version the active one (e.g. roll back)."""

from __future__ import annotations

import argparse

import grpc
from google.protobuf.json_format import MessageToDict

from landmarks.commands import add_server_argument, client_for, print_json, rpc_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)
    parser.add_argument("--category", required=True)
    parser.add_argument("--version", required=True)


def main(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        try:
            info = client.activate(args.category, args.version)
        except grpc.RpcError as exc:
            return rpc_error(exc, args.server)
    print_json(MessageToDict(info, always_print_fields_with_no_presence=True))
    return 0
