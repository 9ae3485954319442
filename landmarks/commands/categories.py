"""landmarks categories: what a running server serves (state, K, versions, hashes)."""

from __future__ import annotations

import argparse

import grpc
from google.protobuf.json_format import MessageToDict

from landmarks.commands import add_server_argument, client_for, print_json, rpc_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)
    parser.add_argument("--json", action="store_true", help="full JSON (default: one line per category)")
    parser.add_argument("--info", action="store_true", help="also print the server's info (core, device, cache)")


def main(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        try:
            cats = client.categories()
            info = client.server_info() if args.info else None
        except grpc.RpcError as exc:
            return rpc_error(exc, args.server)
    if args.json:
        out = {"categories": [MessageToDict(c, always_print_fields_with_no_presence=True) for c in cats]}
        if info is not None:
            out["server"] = MessageToDict(info, always_print_fields_with_no_presence=True)
        print_json(out)
        return 0
    from landmarks.v1 import landmarks_pb2 as pb

    if info is not None:
        print(f"server {info.server_version} ({info.api_version}) core {info.core_sha256[:12]} on {info.device}, "
              f"backend {info.backend} ({info.precision or 'fp32'}), cache {info.cache.resident_bytes / 2**20:.1f}/"
              f"{info.cache.capacity_bytes / 2**20:.0f} MiB, hits {info.cache.hits} misses {info.cache.misses} "
              f"evictions {info.cache.evictions}")
    if not cats:
        print("no categories")
    for c in cats:
        versions = ", ".join(v.version + ("*" if v.version == c.active_version else "")
                             + (f" ({v.precision})" if v.precision else "") for v in c.versions)
        print(f"{c.name:16s} {pb.CategoryState.Name(c.state):9s} K={c.num_landmarks:<3d} "
              f"active={c.active_version or '-'} ({c.active_sha256[:12]}) versions: {versions}"
              + (f"  error: {c.error}" if c.error else ""))
        for v in c.versions:  # why a version does not run in int8 by default
            if v.precision == "fp32" and v.precision_reason.startswith("auto: its int8 calibration"):
                print(f"{'':16s} {v.version}: {v.precision_reason}")
    return 0
