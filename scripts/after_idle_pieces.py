"""What each step of a served Detect costs after an idle gap, in-process: where `added_ms` goes.

    python scripts/after_idle_pieces.py [--calls 150] [--gap-ms 10]

Builds the server's parts as `landmarks serve` does (shipped adapters, `--backend`, no sockets) and
times, one call at a time, each after `--gap-ms` idle (as the bench's after-idle calls run) and then
back to back ("hot"), the Python steps of a lone Detect besides the forward pass: the whole handler
for a request that fails at once (no image), decoding a raw image whose box is an input-sized block
and one that must be resized, leasing the version and its folded model, the batch the backend gets,
the metrics, and the response proto; indented rows: how the step was done before session 11, for
comparison. Medians in ms. Each step is timed alone, so each pays its own
cold start: the steps of one request share some of it, and the sum overstates the handler's time
(the bench's `server_timings_p50_ms` and `added_ms` measure that). After idleness a step costs
several times its hot time: its code and data have left the caches, so what pays is running less
Python, not faster Python.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack

import numpy as np

from landmarks.client import LandmarkClient
from landmarks.v1 import landmarks_pb2 as pb
from serving.config import ServerConfig
from serving.engine import Detection
from serving.inputs import RequestLimits
from serving.preprocess import crop_square, decode_crop, decode_raw, resolve_box
from serving.query import DetectQuery
from serving.server import build_server
from serving.servicer import LandmarkServicer


class _Context:  # the parts of a gRPC servicer context the handler uses
    def time_remaining(self) -> float:
        return 60.0

    def add_callback(self, callback) -> bool:
        return True

    def abort_with_status(self, status):
        raise RuntimeError(status.details)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=150, help="timed calls per step and mode (default 150)")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="idle gap before each call (default 10)")
    parser.add_argument("--backend", default="onnxruntime", help="the server's --backend (default onnxruntime)")
    parser.add_argument("--category", default="faces", help="a shipped category (default faces)")
    args = parser.parse_args()

    cfg = ServerConfig(port=0, backend=args.backend)
    handle = build_server(cfg)  # bound, not started: no traffic reaches it
    services, metrics = handle.lifecycle.services, handle.metrics
    servicer = LandmarkServicer(handle.lifecycle, RequestLimits(cfg.max_image_pixels, cfg.min_image_side,
                                                                cfg.max_batch_items), metrics)
    registry = services.registry
    with registry.acquire(args.category, "") as lease:
        size, adapter, key = lease.adapter.config.input_size, lease.adapter, lease.entry.cache_key
    rng = np.random.default_rng(0)
    block = LandmarkClient.request(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), args.category)
    resized = LandmarkClient.request(rng.integers(0, 256, (2 * size, 2 * size, 3), dtype=np.uint8), args.category)
    empty = pb.DetectRequest(category=args.category)
    det = Detection([[1.0, 2.0]] * adapter.num_landmarks, [0.5] * adapter.num_landmarks, adapter.landmark_names,
                    args.category, "shipped", "ab" * 32, (0.0, 0.0, float(size), float(size)), 0.1, 0.1, 10.0)
    pixels = np.zeros((size, size, 3), np.uint8)

    def handler_no_image():
        try:
            servicer.Detect(empty, _Context())
        except RuntimeError:
            pass

    def lease_version_and_model():
        with ExitStack() as leases:
            held = leases.enter_context(registry.acquire(args.category, ""))
            with services.models.lease(key, held.adapter):
                pass

    def metrics_of_one_request():
        metrics.inflight.inc()
        metrics.detection(args.category, 0.1, 10.0)
        metrics.inflight.dec()
        metrics.request("Detect", args.category, "ok", 0.01)

    steps = {
        "handler, request without image": handler_no_image,
        f"decode_crop, raw {size} px block": lambda: decode_crop(DetectQuery.from_proto(block), size,
                                                                 cfg.max_image_pixels, cfg.min_image_side),
        "  the same through a PIL image": lambda: crop_square(decode_raw(
            block.image.raw.pixels, size, size, 3, cfg.max_image_pixels, cfg.min_image_side),
            resolve_box(None, size, size), size),
        f"decode_crop, raw {2 * size} px resized": lambda: decode_crop(DetectQuery.from_proto(resized), size, cfg.max_image_pixels,
                                                                        cfg.min_image_side),
        "lease version + folded model": lease_version_and_model,
        "batch of one (view) + boxes": lambda: (pixels[None], np.array([det.box], dtype=np.float64)),
        "batch of one (np.stack) + boxes": lambda: (np.stack([pixels]), np.array([det.box], dtype=np.float64)),
        "metrics of one request": metrics_of_one_request,
        "response proto": lambda: LandmarkServicer._response(det, 1.0),
        "  the same from a list of Landmarks": lambda: pb.DetectResponse(
            landmarks=[pb.Landmark(x=p[0], y=p[1], confidence=c, name=n)
                       for p, c, n in zip(det.points, det.confidence, det.names)],
            category=det.category, version=det.version, adapter_sha256=det.sha256,
            box=pb.Box(x0=det.box[0], y0=det.box[1], x1=det.box[2], y1=det.box[3]),
            timings=pb.Timings(decode_ms=det.decode_ms, queue_ms=det.queue_ms, compute_ms=det.compute_ms,
                               total_ms=1.0)),
    }
    gap = args.gap_ms / 1e3
    print(f"{'step':36s} {'after idle':>10s} {'hot':>8s}   (p50 ms, {args.calls} calls, gap {args.gap_ms:g} ms)")
    for name, step in steps.items():
        for _ in range(5):
            step()
        idle, hot = [], []
        for _ in range(args.calls):
            time.sleep(gap)
            t = time.perf_counter()
            step()
            idle.append((time.perf_counter() - t) * 1e3)
        for _ in range(args.calls):
            t = time.perf_counter()
            step()
            hot.append((time.perf_counter() - t) * 1e3)
        print(f"{name:36s} {statistics.median(idle):10.3f} {statistics.median(hot):8.3f}")
    handle.lifecycle.services.batcher.close()


if __name__ == "__main__":
    main()
