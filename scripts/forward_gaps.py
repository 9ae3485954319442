"""How much slower is a forward pass that follows a pause than one that follows another forward?

    python scripts/forward_gaps.py [--size 64] [--rounds 15]

One process, no server: the shipped core folded with a random bench adapter (`landmarks bench`'s),
run by the server's default backend (TorchScript), batch 1. Each mode times forwards that follow a
different gap (none, 1 ms asleep, 3 ms asleep, 3 ms of busy Python, 10 ms asleep); the modes take
turns in blocks of 12 (the first 2 of each block not counted) for `--rounds` rounds, so the
machine's drift hits every mode alike. Prints each mode's median forward time.

Why: a served request's forward pass always follows a pause (the round trip to the client, ~3 ms
at concurrency 1), while a bare forward timed in a loop follows another forward, with its
weights still in cache and its OpenMP threads awake. This is what `landmarks bench` has to take
into account when it compares the two (docs/benchmark.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

# isort: off
import serving  # noqa: F401  (first: the server's OpenMP settings must be in place when torch loads)
import torch
# isort: on

from landmarks.adapter_io import load_adapter, load_core
from serving.backends import make_backend
from serving.bench import random_adapters
from serving.config import REPO_ADAPTERS


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


MODES = {
    "after a forward": lambda: None,
    "after 1 ms asleep": lambda: time.sleep(0.001),
    "after 3 ms asleep": lambda: time.sleep(0.003),
    "after 3 ms busy": lambda: _busy(0.003),
    "after 10 ms asleep": lambda: time.sleep(0.010),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default=str(REPO_ADAPTERS / "core.safetensors"))
    parser.add_argument("--size", type=int, default=64, help="input size the adapter runs the core at")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backend", default="torchscript")
    args = parser.parse_args()

    core = load_core(args.core)
    adapter = load_adapter(random_adapters(core, 1, input_size=args.size)[0], core)
    backend = make_backend(args.backend, core)
    model = backend.prepare(adapter)
    x = torch.rand(1, 3, args.size, args.size)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode, pause in MODES.items():
            for i in range(12):
                pause()
                t0 = time.perf_counter()
                backend.run(model, x)
                if i >= 2:
                    times[mode].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["after a forward"])
    print(f"{args.backend}, {args.size} px, batch 1, torch threads {torch.get_num_threads()}: median forward")
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"  {mode:<20} {median:6.2f} ms  ({median / base:.2f}x)")


if __name__ == "__main__":
    main()
