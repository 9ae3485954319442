"""landmarks serve: run the gRPC server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving.config import DEFAULT_PORT, REPO_ADAPTERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default %(default)s; 0.0.0.0 for all, e.g. in a container)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 = any free)")
    parser.add_argument("--adapters", type=Path, default=REPO_ADAPTERS,
                        help="adapter store directory (default: the repository's adapters/)")
    parser.add_argument("--core", type=Path, default=None, help="core file (default: ADAPTERS/core.safetensors)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default %(default)s)")
    parser.add_argument("--workers", type=int, default=16, help="gRPC handler threads (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cache-mb", type=int, default=1024,
                        help="folded-weights cache budget in MiB (default %(default)s)")
    parser.add_argument("--max-adapter-mb", type=int, default=256, help="adapter size cap (default %(default)s)")
    parser.add_argument("--allow-path", type=Path, action="append", default=[],
                        help="directory RegisterAdapter(path=...) may read from (repeatable; default: none)")
    parser.add_argument("--no-admin", action="store_true", help="do not serve the AdminService")
    parser.add_argument("--log-level", default="INFO")


def main(args: argparse.Namespace) -> int:
    from serving.config import ServerConfig
    from serving.server import CoreLoadError, serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device {args.device} but torch sees no CUDA device", file=sys.stderr)
            return 2
    cfg = ServerConfig(
        host=args.host, port=args.port, adapters_dir=args.adapters, core_path=args.core, device=args.device,
        max_workers=args.workers, torch_threads=args.threads, cache_bytes=args.cache_mb << 20,
        max_adapter_bytes=args.max_adapter_mb << 20, allowed_register_dirs=tuple(args.allow_path),
        enable_admin=not args.no_admin,
    )
    try:
        return serve(cfg)
    except CoreLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
