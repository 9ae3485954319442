"""landmarks serve: run the gRPC server."""

from __future__ import annotations

import os

# libgomp reads its spin time once, when torch loads: the server's (and bench's bare forward's)
# setting goes in before anything imports torch; an operator's own value wins (docs/benchmark.md)
os.environ.setdefault("GOMP_SPINCOUNT", "20000")
# numpy's BLAS folds adapters at registration (landmarks.runtime.fold): on its own threads, which spin
# after each call, it fought the gRPC and ONNX Runtime threads (register -> first served ~375 ms p50
# under `landmarks bench` against ~55 ms on one thread); read once, when numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
import sys

from serving import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)  # one flag per ServerConfig field (serving/config.py)
    parser.add_argument("--log-level", default="INFO")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config.from_args(args)  # every value checked here, before anything loads
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.http_port is not None:  # the HTTP plane is the serve extra's: say so before anything loads
        import importlib.util

        missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
        if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
            missing.append("python-multipart")
        if missing:
            print(f"error: --http-port needs the serve extra ({', '.join(missing)} not installed): "
                  "pip install 'landmark-adapters[serve]'", file=sys.stderr)
            return 2
    from serving.server import CoreLoadError, serve

    if cfg.device.startswith("cuda") and cfg.backend != "onnxruntime":  # (onnxruntime's backend checks its own)
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device {cfg.device} but torch sees no CUDA device", file=sys.stderr)
            return 2
    try:
        return serve(cfg)
    except (CoreLoadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
