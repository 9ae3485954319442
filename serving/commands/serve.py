"""landmarks serve: run the gRPC server."""

from __future__ import annotations

import os

# libgomp reads its spin time once, when torch loads: the server's (and bench's bare forward's)
# setting goes in before anything imports torch; an operator's own value wins (docs/benchmark.md)
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

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
    parser.add_argument("--backend", choices=("torchscript", "eager"), default="torchscript",
                        help="how folded networks run: torchscript = one traced graph that takes each adapter's "
                             "folded weights as inputs (no Python GIL held during the forward; ~0.4 s to trace "
                             "once, ~0.1 s of warm-up per registration or cache miss); eager = plain PyTorch "
                             "modules (default %(default)s)")
    parser.add_argument("--workers", type=int, default=32, help="gRPC handler threads (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of a forward pass that runs alone (default: torch's choice); "
                             "under load each batch worker uses its share; other threads use one")
    parser.add_argument("--handler-nice", type=int, default=0,
                        help="lower the CPU priority of gRPC handler threads by this nice value, so decoding "
                             "yields to forward passes (default %(default)s: off)")
    parser.add_argument("--cache-mb", type=int, default=1024,
                        help="folded-weights cache budget in MiB (default %(default)s)")
    parser.add_argument("--max-adapter-mb", type=int, default=64, help="adapter size cap (default %(default)s)")
    parser.add_argument("--admin-port", type=int, default=None,
                        help="serve the admin service (register, activate, unregister, list) on this port "
                             "only, with a receive limit of --max-adapter-mb + 1, instead of on --port "
                             "(default: on --port, where --max-message-mb limits registration by bytes too)")
    parser.add_argument("--allow-path", type=Path, action="append", default=[],
                        help="directory RegisterAdapter(path=...) may read from (repeatable; default: none)")
    parser.add_argument("--no-admin", action="store_true", help="do not serve the AdminService")
    parser.add_argument("--max-message-mb", type=int, default=64,
                        help="largest request on --port, e.g. an image (default %(default)s); gRPC refuses "
                             "larger ones with RESOURCE_EXHAUSTED before reading them")
    g = parser.add_argument_group("batching and load")
    g.add_argument("--max-batch", type=int, default=16, help="most requests per forward pass (default %(default)s)")
    g.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                   help="longest wait for requests still being decoded to join a batch (default %(default)s)")
    g.add_argument("--max-queue", type=int, default=256,
                   help="waiting requests before RESOURCE_EXHAUSTED (default %(default)s)")
    g.add_argument("--batch-workers", type=int, default=2,
                   help="forward passes that may run at once; under load each gets --threads / N threads, "
                        "which keeps all cores busy with less splitting of every op (default %(default)s)")
    g.add_argument("--no-lone-on-lead", dest="lone_on_lead", action="store_false",
                   help="send every Detect through the batching queue; by default a call that would be the only "
                        "one computing runs whole on the lead batch worker, saving two thread hand-offs")
    g.add_argument("--grace", type=float, default=10.0,
                   help="seconds in-flight requests get on SIGTERM before they are cancelled (default %(default)s)")
    g.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port of --host (default: off; 0 = any free port)")
    s = parser.add_argument_group("security")
    s.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS (with --tls-key)")
    s.add_argument("--tls-key", type=Path, help="PEM private key")
    s.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--admin-token-file", type=Path,
                   help="admin calls need this bearer token (default: $LANDMARKS_ADMIN_TOKEN, else open)")
    s.add_argument("--inference-token-file", type=Path,
                   help="Detect calls need this bearer token, or the admin one (default: $LANDMARKS_TOKEN, else open)")
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
    from serving.auth import read_token

    try:
        cfg = ServerConfig(
            host=args.host, port=args.port, adapters_dir=args.adapters, core_path=args.core, device=args.device,
            backend=args.backend,
            max_workers=args.workers, torch_threads=args.threads, handler_nice=args.handler_nice,
            cache_bytes=args.cache_mb << 20,
            max_adapter_bytes=args.max_adapter_mb << 20, max_message_bytes=args.max_message_mb << 20,
            allowed_register_dirs=tuple(args.allow_path), enable_admin=not args.no_admin,
            admin_port=args.admin_port,
            max_batch_size=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms, max_queue=args.max_queue,
            batch_workers=args.batch_workers, lone_on_lead=args.lone_on_lead, grace_s=args.grace, metrics_port=args.metrics_port,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
            admin_token=read_token(args.admin_token_file, "LANDMARKS_ADMIN_TOKEN") if not args.no_admin else None,
            inference_token=read_token(args.inference_token_file, "LANDMARKS_TOKEN"),
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(cfg)
    except CoreLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
