"""Register/activate/replace/unregister one category while 8 threads run Detect on others."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import pytest

from landmarks.client import LandmarkClient
from tests.serving.helpers import png_bytes

STABLE = ("cats", "faces")
CHANGING = "birds"
# what a request for the changing category may get while it is being replaced
ALLOWED_CHANGING = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}


def run_traffic(server, artifacts, duration: float, threads: int = 8, min_cycles: int = 3) -> dict:
    """Traffic for at least `duration` s and until the admin loop did `min_cycles` cycles and the
    changing category answered OK once (a slow, loaded machine gets more time, up to a bound)."""
    target = f"127.0.0.1:{server.port}"
    stop = threading.Event()
    outcomes: dict[str, collections.Counter] = {c: collections.Counter() for c in STABLE + (CHANGING,)}
    failures: list[str] = []
    lock = threading.Lock()
    images = [png_bytes(48, 40, seed=s) for s in range(4)]
    adapters = [artifacts.extra["birds-v1"].read_bytes(), artifacts.extra["birds-v2"].read_bytes()]
    admin_ops = collections.Counter()

    def traffic(worker: int) -> None:
        with LandmarkClient(target, timeout=30) as client:
            n = 0
            while not stop.is_set():
                category = (STABLE + (CHANGING,))[n % 3] if worker % 2 else STABLE[n % 2]
                try:
                    res = client.detect(images[n % 4], category)
                    code = grpc.StatusCode.OK
                    assert len(res.points) == (3 if category == CHANGING else {"cats": 4, "faces": 6}[category])
                except grpc.RpcError as exc:
                    code = exc.code()
                    if category in STABLE or code not in ALLOWED_CHANGING:
                        with lock:
                            failures.append(f"{category}: {code.name}: {exc.details()}")
                with lock:
                    outcomes[category][code.name] += 1
                n += 1

    def admin() -> None:
        with LandmarkClient(target, timeout=30) as client:
            n, live = 0, []
            while not stop.is_set():
                try:
                    version = f"v{n}"
                    client.register(CHANGING, version, adapters[n % 2])            # replace (new version, active)
                    client.register(CHANGING, version, adapters[n % 2])            # idempotent
                    if live and n % 3 == 1:
                        client.activate(CHANGING, live[-1])                        # roll back
                        client.activate(CHANGING, version)
                    if live and n % 3 != 2:
                        client.unregister(CHANGING, live.pop(0))                   # drop the oldest
                    live.append(version)
                    if n % 4 == 3:
                        client.unregister(CHANGING)                                # the whole category
                        live.clear()
                    admin_ops["cycles"] += 1
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"admin: {exc.code().name}: {exc.details()}")
                n += 1

    workers = [threading.Thread(target=traffic, args=(i,)) for i in range(threads)] + [threading.Thread(target=admin)]
    for t in workers:
        t.start()
    start = time.monotonic()
    cap = start + max(120.0, 4 * duration)
    while time.monotonic() < cap and (time.monotonic() < start + duration or admin_ops["cycles"] < min_cycles
                                      or outcomes[CHANGING]["OK"] == 0):
        time.sleep(0.05)
    stop.set()
    for t in workers:
        t.join(60)
    return {"outcomes": outcomes, "failures": failures, "admin": admin_ops}


def check(server, artifacts, duration: float) -> None:
    report = run_traffic(server, artifacts, duration)
    outcomes = report["outcomes"]
    print({k: dict(v) for k, v in outcomes.items()}, dict(report["admin"]))
    assert not report["failures"], report["failures"][:5]
    for category in STABLE:
        assert set(outcomes[category]) == {"OK"} and outcomes[category]["OK"] > 0
    assert outcomes[CHANGING]["OK"] > 0 and report["admin"]["cycles"] > 2
    # registry and cache agree afterwards: nothing of a removed version is left resident or leased
    with LandmarkClient(f"127.0.0.1:{server.port}") as client:
        try:
            client.unregister(CHANGING)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        assert client.health_status() == "SERVING"
        assert {c.name for c in client.categories()} == set(STABLE)
    state = server.services
    assert not state.registry._retired
    assert all(key[0] in STABLE for key in state.models.cache._entries)
    assert state.models.stats().in_use == 0


def test_admin_under_traffic_short(server, artifacts):
    check(server, artifacts, duration=3.0)


@pytest.mark.slow
def test_admin_under_traffic_20s(server, artifacts):
    check(server, artifacts, duration=20.0)
