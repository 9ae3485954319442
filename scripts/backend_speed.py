"""The serving backends side by side: time per call of what the server runs (`Backend.locate`: uint8
crops and boxes -> points), per batch, idle and next to a busy Python thread.

    python scripts/backend_speed.py                       # 64 and 128 px, batches 1 and 16
    python scripts/backend_speed.py --sizes 64 --batches 1 --threads 1 --rounds 6
    python scripts/backend_speed.py --backends onnxruntime,onnxruntime-spin,torchscript

Every backend (`serving.backends`; `onnxruntime-spin` is the ONNX Runtime backend with its
threads allowed to spin, which the server does not do) runs the shipped core folded with a random
near-identity adapter (the values do not matter for speed). "busy" adds one Python thread that computes for 1 ms and
sleeps for 1 ms in a loop, standing in for gRPC handler threads decoding requests: an eager forward
needs the GIL for every op and waits for that thread; the TorchScript graph runs without it. With
`--threads 1` the forward and the busy thread have a core each, so what remains is the GIL. The
variants alternate block by block (`--rounds`) because a shared VM's speed drifts; medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

# isort: off
import serving  # noqa: F401  (first: GOMP_SPINCOUNT, as in the server, must be set when torch loads)
import numpy as np
import torch
# isort: on

from landmarks.adapter_io import load_adapter, load_core
from serving.backends import available_backends, make_backend
from serving.bench import random_adapters


class BusyPython:
    """A thread that holds the GIL for 1 ms, then sleeps 1 ms, until stopped."""

    def __enter__(self):
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        torch.set_num_threads(1)
        while not self._stop:
            until = time.perf_counter() + 1e-3
            while time.perf_counter() < until:
                sum(range(100))
            time.sleep(1e-3)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default="adapters/core.safetensors")
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--backends", default=None,
                        help="comma list (default: every installed backend, and onnxruntime-spin)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=8, help="forward passes per block")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    core = load_core(args.core)
    names = args.backends.split(",") if args.backends else [
        *available_backends(), *(["onnxruntime-spin"] if "onnxruntime" in available_backends() else [])]
    threads = torch.get_num_threads()
    print(f"threads {threads} (torch, and ONNX Runtime's intra-op); median ms per call of Backend.locate (batch)")
    print(f"{'size':>4} {'batch':>5} " + " ".join(f"{f'{b} {load}':>22}" for b in names for load in ("idle", "busy")))
    for size in map(int, args.sizes.split(",")):
        adapter = load_adapter(random_adapters(core, 1, input_size=size)[0], core)
        backends = {name: make_backend("onnxruntime", core, threads=threads, spinning=True)
                    if name == "onnxruntime-spin" else make_backend(name, core, **(
                        {"threads": threads} if name == "onnxruntime" else {})) for name in names}
        prepared = {name: b.prepare(adapter) for name, b in backends.items()}
        for batch in map(int, args.batches.split(",")):
            pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).numpy()
            boxes = np.array([[0.0, 0.0, size, size]] * batch, dtype=np.float64)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for load in ("idle", "busy"):
                    for name, backend in backends.items():
                        with BusyPython() if load == "busy" else _nothing():
                            for _ in range(args.iters):
                                t0 = time.perf_counter()
                                backend.locate(prepared[name], pixels, boxes)
                                times.setdefault((name, load), []).append((time.perf_counter() - t0) * 1e3)
            print(f"{size:>4} {batch:>5} " + " ".join(
                f"{statistics.median(times[name, load]):>22.2f}" for name in names for load in ("idle", "busy")),
                flush=True)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    main()
