"""The server's torch threading policy (serving.threads): only the lead batch worker runs on several cores, and only alone."""

import threading

import numpy as np
import torch

from serving.threads import compute_thread, single_threaded


def _in_thread(fn):
    out = {}

    def body():
        fn()
        (torch.rand(200_000) * 2).sum()  # a parallel op: ATen's lazy per-thread set-up has happened by now
        out["threads"] = torch.get_num_threads()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out["threads"]


def test_compute_thread_keeps_its_threads_when_others_are_single_threaded():
    before = torch.get_num_threads()
    try:
        single_threaded()  # e.g. the main thread loading the core: the process-wide value is now 1
        assert _in_thread(lambda: compute_thread(2)) == 2
        assert _in_thread(single_threaded) == 1
        assert _in_thread(lambda: None) == 1  # a new thread inherits the process-wide value
    finally:
        torch.set_num_threads(before)


def test_handler_threads_can_yield_the_cpu_to_the_forward_pass():
    import os

    from serving.threads import handler_thread

    seen = {}

    def body():
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        handler_thread(nice=5)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - base
        seen["threads"] = torch.get_num_threads()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["threads"] == 1
    assert seen["nice"] == 5 or os.getpriority(os.PRIO_PROCESS, 0) + 5 > 19  # clamped at 19


def test_a_lone_forward_gets_all_threads_and_concurrent_ones_share_them():
    """ComputeThreads: alone (no other worker computing, queue empty) -> `alone` threads; a batch that
    starts while another computes -> `shared` threads; applied in the worker thread that computes."""
    from types import SimpleNamespace

    from serving.batching import DynamicBatcher
    from serving.config import BatchConfig
    from serving.inputs import DetectInput
    from serving.threads import ComputeThreads

    applied: list[tuple[str, int]] = []
    started, release = threading.Semaphore(0), threading.Event()

    class Engine:
        def run_group(self, items):
            started.release()
            assert release.wait(10)
            return [SimpleNamespace(queue_ms=0.0) for _ in items]

    def item(category):
        entry = SimpleNamespace(category=category, cache_key=(category, "v1", ""))
        return DetectInput(entry, np.zeros((8, 8, 3), np.uint8), (0.0, 0.0, 8.0, 8.0))

    threads = ComputeThreads.split(4, 2, lambda n: applied.append((threading.current_thread().name, n)))
    assert (threads.alone, threads.shared) == (4, 2)
    batcher = DynamicBatcher(Engine(), BatchConfig(max_batch_size=16, max_queue_delay_ms=0, max_queue=16, workers=2), threads=threads)
    try:
        first = batcher.submit([item("a")])
        assert started.acquire(timeout=10)  # computing alone
        second = batcher.submit([item("b")])  # another category: the other worker takes it at once
        assert started.acquire(timeout=10)
        release.set()
        for p in first + second:
            p.wait(10)
        assert sorted(n for _, n in applied) == [2, 4]
        assert len({name for name, _ in applied}) == 2  # each set in its own worker thread
    finally:
        batcher.close()


def test_server_commands_set_the_openmp_spin_before_torch_loads():
    """`landmarks serve` sets GOMP_SPINCOUNT (serving/commands/serve.py) before any module imports
    torch, which is when libgomp reads it; an operator's own value is kept; importing `serving`
    alone changes nothing."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom landmarks.cli import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "import os\nprint('SPIN', os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert "SPIN 20000" in out.stdout
    order = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "torch" not in order or order.index("serving.commands.serve") < order.index("torch")
    quiet = subprocess.run([sys.executable, "-c", "import os, serving; print(os.environ.get('GOMP_SPINCOUNT'))"],
                           env=env, capture_output=True, text=True, check=True)
    assert quiet.stdout.strip() == "None"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "5000"}, capture_output=True,
                         text=True, check=True)
    assert "SPIN 5000" in out.stdout
