"""The server's torch threading policy (serving.threads): only the batch worker runs on several cores."""

import threading

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


def test_the_batch_worker_runs_the_servers_thread_setup():
    from serving.batching import DynamicBatcher

    ran_in = []
    done = threading.Event()

    def init():
        ran_in.append(threading.current_thread().name)
        done.set()

    batcher = DynamicBatcher(engine=None, thread_init=init)  # no requests: the engine is never called
    try:
        assert done.wait(10)
        assert ran_in == ["landmarks-batch-0"]
    finally:
        batcher.close()


def test_server_commands_set_the_openmp_spin_before_torch_loads():
    """`landmarks serve` sets GOMP_SPINCOUNT (serving/__init__.py) before any module imports torch,
    which is when libgomp reads it; an operator's own value is kept."""
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
    assert order.index("serving") < order.index("torch")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "5000"}, capture_output=True,
                         text=True, check=True)
    assert "SPIN 5000" in out.stdout
