"""Why the server runs torch on several cores in one thread only (serving/threads.py).

Times a batch-1 forward of the `cpu` core (64 px input, channels_last) in a worker thread, in a
fresh process each time, in three situations:

  clean           nothing else in the process ever ran a parallel torch op;
  main-parallel   the main thread ran one parallel op first (as loading the core does): libgomp
                  now has two thread pools, more workers than cores, and stops spinning;
  policy          the main thread ran that op single-threaded (serving.threads.single_threaded)
                  and the worker called serving.threads.compute_thread(), as the server does.

    python scripts/thread_pools.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = r"""
import sys, threading, time, torch
from landmarks.hourglass import LandmarkHourglass, cpu_config
from serving.threads import compute_thread, single_threaded
mode = sys.argv[1]
if mode == "policy":
    single_threaded()
if mode in ("main-parallel", "policy"):
    (torch.rand(4_000_000) * 2).sum()
out = {}
def worker():
    if mode == "policy":
        compute_thread()
    model = LandmarkHourglass(cpu_config(10).replace(input_size=64)).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(160):
            t = time.perf_counter()
            model(x)
            if i >= 10:
                times.append(time.perf_counter() - t)
    out["ms"] = sorted(times)[len(times) // 2] * 1e3
t = threading.Thread(target=worker)
t.start()
t.join()
print(out["ms"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per situation (default %(default)s)")
    args = parser.parse_args()
    modes = ["clean", "main-parallel", "policy"]
    results: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:  # interleaved, so drift in the machine's speed hits every mode alike
            run = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
            results[mode].append(float(run.stdout.strip()))
    print(f"batch-1 forward in a worker thread, median of {args.repeats} processes (ms):")
    for mode in modes:
        values = ", ".join(f"{v:.2f}" for v in results[mode])
        print(f"  {mode:<14} {statistics.median(results[mode]):6.2f}   ({values})")


if __name__ == "__main__":
    main()
