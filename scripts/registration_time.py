"""What a registration costs each backend, in-process: `FoldedModels.trial` (fold, prepare, the trial
forward) for N random adapters of the core at one input size, one after the other, then each one's
first `locate` (a client's first request). The first adapter of a shape also pays tracing/warm-up
(TorchScript) or the first session's setup (ONNX Runtime); the rest show what a registration costs
once the server is running.

    python scripts/registration_time.py                       # 128 px, 8 adapters, every backend
    python scripts/registration_time.py --size 64 --threads 1

Pause a background training first (scripts/paused.sh): the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from landmarks.adapter_io import load_adapter, load_core
from landmarks.hardware import cpu_bf16_flags
from serving.backends import available_backends, blank_crops, make_backend
from serving.bench import random_adapters
from serving.model_cache import ModelCache
from serving.models import FoldedModels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default="adapters/core.safetensors")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; ORT sessions get --session-threads")
    parser.add_argument("--session-threads", type=int, default=1, help="as the server's sessions with 2 batch workers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    core = load_core(args.core)
    variants = [("torchscript", "fp32"), ("eager", "fp32")]
    if cpu_bf16_flags():
        variants.insert(0, ("torchscript", "bf16"))
    if "onnxruntime" in available_backends():
        variants += [("onnxruntime", "fp32"), ("onnxruntime", "int8")]  # the bench's adapters carry int8 ranges
    datas = random_adapters(core, args.adapters, input_size=args.size)
    for name, precision in variants:
        options = {"threads": args.session_threads} if name == "onnxruntime" else {}
        backend = make_backend(name, core, precision=precision, **options)
        models = FoldedModels(backend, ModelCache(1 << 30))
        trial_ms, first_ms = [], []
        for i, data in enumerate(datas):
            adapter = load_adapter(data, core)
            t0 = time.perf_counter()
            prepared = models.trial(adapter, f"bench-{i}")
            t1 = time.perf_counter()
            backend.locate(prepared, *blank_crops(1, args.size))
            first_ms.append((time.perf_counter() - t1) * 1e3)
            trial_ms.append((t1 - t0) * 1e3)
        print(f"{name:>11} {precision:>4}: trial (registration) ms first {trial_ms[0]:.0f}, then median "
              f"{statistics.median(trial_ms[1:]):.1f} (each: {', '.join(f'{t:.0f}' for t in trial_ms[1:])}); "
              f"first locate median {statistics.median(first_ms):.1f} ms")


if __name__ == "__main__":
    main()
