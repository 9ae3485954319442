"""Dynamic batching: grouping, equality with unbatched results, queue full, deadlines, cancellation,
isolation of a failing request, and the metrics that show it.

A "gate" holds the batch worker inside its first forward pass (the plug request), so the
requests sent meanwhile are all queued when it opens: what is batched with what is then
deterministic. No assertion depends on wall-clock time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from landmarks.client import LandmarkClient
from landmarks.v1 import landmarks_pb2 as pb
from serving.errors import ServingError
from tests.serving.helpers import Gate, metric_value, png_bytes, scrape, start_server, wait_for

Code = grpc.StatusCode


@pytest.fixture
def batching_server(store):
    # one worker: while the gate holds its forward pass, every other request waits in the queue
    handle = start_server(store, max_batch_size=4, max_queue=16, metrics_port=0, batch_workers=1)
    yield handle
    handle.shutdown(grace=0)


def requests_mix(n_cats: int, n_faces: int):
    out = []
    for i in range(max(n_cats, n_faces)):
        if i < n_cats:
            out.append(("cats", png_bytes(48 + i, 40, seed=i), (2.0 + i, 1.0, 40.0, 38.0 - i)))
        if i < n_faces:
            out.append(("faces", png_bytes(40, 52 - i, seed=50 + i), None))
    return out


def test_groups_by_category_and_equals_unbatched(batching_server):
    handle = batching_server
    gate = Gate(handle)
    target = f"127.0.0.1:{handle.port}"
    mix = requests_mix(6, 3)
    with LandmarkClient(target, timeout=60) as client, ThreadPoolExecutor(16) as pool:
        plug = gate.plug(client, pool)
        futures = [pool.submit(client.detect, image, cat, box) for cat, image, box in mix]
        wait_for(lambda: handle.services.batcher.queued() == len(mix), "all requests queued")
        gate.open()
        batched = [f.result(60) for f in futures]
        plug.result(60)
        calls = gate.calls[1:]
        # one folded network per group: every forward pass holds one category, at most max_batch_size
        assert all(set(cats) == {cat} for cat, cats in calls), calls
        assert all(len(cats) <= 4 for _, cats in calls)
        assert sorted(len(c) for cat, c in calls if cat == "cats") == [2, 4]
        assert [len(c) for cat, c in calls if cat == "faces"] == [3]
        # the same requests one at a time
        n_before = len(gate.calls)
        single = [client.detect(image, cat, box) for cat, image, box in mix]
        assert all(len(c) == 1 for _, c in gate.calls[n_before:])
    for b, s, (cat, _, _) in zip(batched, single, mix):
        assert b.category == s.category == cat and b.version == s.version
        np.testing.assert_allclose(np.array(b.points), np.array(s.points), atol=1e-4, rtol=0)
        assert b.timings["queue_ms"] > 0  # they waited behind the plug


def test_lone_request_runs_whole_on_the_lead_and_takes_company_along(batching_server, monkeypatch):
    """A Detect that would compute alone runs whole (decode, forward, answer) on the lead batch worker;
    requests of its category that queue up while it decodes join its forward pass."""
    import serving.inputs

    handle = batching_server
    gate = Gate(handle)
    gate.open()  # only records the forward passes here
    real_crop = serving.inputs.decode_crop
    decoded_on: list[str] = []
    hold, holding = threading.Event(), threading.Event()

    def decode_crop(*args):
        decoded_on.append(threading.current_thread().name)
        if len(decoded_on) == 1:  # the lone request: keep the lead busy decoding it
            holding.set()
            hold.wait(60)
        return real_crop(*args)

    monkeypatch.setattr(serving.inputs, "decode_crop", decode_crop)
    mix = [("cats", png_bytes(44 + i, 40, seed=i), None) for i in range(4)]
    with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client, ThreadPoolExecutor(8) as pool:
        first = pool.submit(client.detect, mix[0][1], "cats")
        assert holding.wait(30)
        others = [pool.submit(client.detect, image, cat) for cat, image, _ in mix[1:]]
        wait_for(lambda: handle.services.batcher.queued() == 3, "the other requests queued")
        hold.set()
        together = [first.result(60)] + [f.result(60) for f in others]
        assert gate.calls == [("cats", ["cats"] * 4)]  # one forward pass for all four
        alone = [client.detect(image, cat) for cat, image, _ in mix]
    assert decoded_on[0] == "landmarks-batch-0"  # the lead worker
    assert all(not name.startswith("landmarks-batch") for name in decoded_on[1:4])  # gRPC handler threads
    assert all(name == "landmarks-batch-0" for name in decoded_on[4:])  # serial requests: each alone
    assert [len(c) for _, c in gate.calls[1:]] == [1, 1, 1, 1]
    for t, a in zip(together, alone):
        np.testing.assert_allclose(np.array(t.points), np.array(a.points), atol=1e-4, rtol=0)


def test_without_lone_on_lead_every_request_goes_through_the_queue(store, monkeypatch):
    import serving.inputs

    handle = start_server(store, lone_on_lead=False)
    try:
        real_crop = serving.inputs.decode_crop
        decoded_on: list[str] = []

        def decode_crop(*args):
            decoded_on.append(threading.current_thread().name)
            return real_crop(*args)

        monkeypatch.setattr(serving.inputs, "decode_crop", decode_crop)
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client:
            for seed in range(3):
                client.detect(png_bytes(40, 40, seed=seed), "cats")
        assert len(decoded_on) == 3 and all(not n.startswith("landmarks-batch") for n in decoded_on)
        assert handle.services.batcher.batches == 3
    finally:
        handle.shutdown(grace=0)


def test_detect_batch_is_batched_per_category(batching_server):
    handle = batching_server
    gate = Gate(handle)
    gate.open()  # only records the forward passes
    with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client:
        mix = requests_mix(5, 2)
        batch = client.detect_batch([m[1] for m in mix], [m[0] for m in mix], [m[2] for m in mix])
        assert sorted((cat, len(c)) for cat, c in gate.calls) == [("cats", 1), ("cats", 4), ("faces", 2)]
        single = [client.detect(image, cat, box) for cat, image, box in mix]
    for b, s in zip(batch, single):
        np.testing.assert_allclose(np.array(b.points), np.array(s.points), atol=1e-4, rtol=0)


def test_failing_request_does_not_fail_batch_mates(batching_server):
    handle = batching_server
    gate = Gate(handle)
    backend = handle.services.backend
    real_locate = backend.locate

    def locate(model, images, boxes):
        if (images.reshape(len(images), -1).max(1) == 0).any():  # an all-black input breaks this "model"
            raise RuntimeError("poisoned input")
        return real_locate(model, images, boxes)

    backend.locate = locate
    black = np.zeros((40, 40, 3), np.uint8)
    with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client, ThreadPoolExecutor(8) as pool:
        plug = gate.plug(client, pool)
        good = [pool.submit(client.detect, png_bytes(40, 40, seed=i), "cats") for i in range(3)]
        bad = pool.submit(client.detect, black, "cats")
        wait_for(lambda: handle.services.batcher.queued() == 4, "requests queued")
        gate.open()
        plug.result(60)
        assert all(len(f.result(60).points) == 4 for f in good)
        with pytest.raises(grpc.RpcError) as exc:
            bad.result(60)
        assert exc.value.code() == Code.INTERNAL
    assert [len(c) for _, c in gate.calls] == [1, 4, 1, 1, 1, 1]  # the batch of 4, then one at a time


def test_queue_full_expired_and_cancelled_are_not_computed(store):
    handle = start_server(store, max_batch_size=4, max_queue=3, metrics_port=0, batch_workers=1)
    try:
        gate = Gate(handle)
        batcher = handle.services.batcher
        target = f"127.0.0.1:{handle.port}"
        with LandmarkClient(target, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            plug = gate.plug(client, pool)
            # a request whose deadline passes while it waits
            with LandmarkClient(target, timeout=0.5) as hasty:
                expired = pool.submit(hasty.detect, png_bytes(seed=1), "cats")
                wait_for(lambda: batcher.queued() == 1, "expiring request queued")
                with pytest.raises(grpc.RpcError) as exc:
                    expired.result(60)
                assert exc.value.code() == Code.DEADLINE_EXCEEDED
            # a request whose client goes away
            call = client.inference.Detect.future(client.request(png_bytes(seed=2), "cats"), timeout=60)
            wait_for(lambda: batcher.queued() == 2, "cancelled request queued")
            call.cancel()
            # one that will run: the queue is now full, two of its three requests dead
            kept = [pool.submit(client.detect, png_bytes(seed=3), "faces")]
            wait_for(lambda: batcher.queued() == 3, "queue full")
            # the dead ones make room for live ones ...
            kept += [pool.submit(client.detect, png_bytes(seed=s), "faces") for s in (4, 5)]
            wait_for(lambda: sum(not p.done for p in list(batcher._queue)) == 3, "queue full of live requests")
            # ... and a queue full of live requests refuses the next one
            with pytest.raises(grpc.RpcError) as exc:
                client.detect(png_bytes(seed=6), "faces")
            assert exc.value.code() == Code.RESOURCE_EXHAUSTED and "queue full" in exc.value.details()
            gate.open()
            plug.result(60)
            assert all(len(k.result(60).points) == 6 for k in kept)
            wait_for(lambda: batcher.queued() == 0, "queue drained")
        # computed: the plug and the three kept requests (one batch), nothing else
        assert [cats for _, cats in gate.calls] == [["cats"], ["faces"] * 3]
        assert batcher.computed == 4
        text = scrape(handle.metrics_port)
        assert metric_value(text, "landmarks_dropped_total", category="cats", reason="deadline_exceeded") == 1
        assert metric_value(text, "landmarks_dropped_total", category="cats", reason="cancelled") == 1
        assert metric_value(text, "landmarks_requests_total", method="Detect", category="faces",
                            outcome="resource_exhausted") == 1
    finally:
        handle.shutdown(grace=0)


def test_metrics_after_traffic(batching_server, artifacts):
    handle = batching_server
    with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client, ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(client.detect, png_bytes(seed=i), ("cats", "faces")[i % 2]) for i in range(10)]
        assert all(j.result(60) for j in jobs)
        for name in ("dogs", "nope-1", "nope-2"):
            with pytest.raises(grpc.RpcError):
                client.detect(png_bytes(), name)
        client.register("birds", "v1", artifacts.extra["birds-v1"])
    text = scrape(handle.metrics_port)
    for cat in ("cats", "faces"):
        assert metric_value(text, "landmarks_requests_total", method="Detect", category=cat, outcome="ok") == 5
        assert metric_value(text, "landmarks_request_seconds_count", method="Detect", category=cat) == 5
        assert metric_value(text, "landmarks_request_seconds_bucket", method="Detect", category=cat, le="+Inf") == 5
        assert metric_value(text, "landmarks_queue_seconds_count", category=cat) == 5
        assert metric_value(text, "landmarks_compute_seconds_count", category=cat) == 5
    # unknown names do not become labels
    assert metric_value(text, "landmarks_requests_total", method="Detect", category="_unknown",
                        outcome="not_found") == 3
    assert 'category="dogs"' not in text and 'category="nope-1"' not in text
    assert metric_value(text, "landmarks_batch_size_count") >= 1
    assert metric_value(text, "landmarks_pending_requests") == 0
    assert metric_value(text, "landmarks_folded_cache_entries") >= 2
    assert metric_value(text, "landmarks_folded_cache_hits_total") >= 2  # one lease per batch
    assert metric_value(text, "landmarks_register_seconds_count", outcome="ok") == 1
    assert metric_value(text, "landmarks_categories") == 3


def test_label_cardinality_is_bounded(store):
    from serving.metrics import Metrics

    class Known:  # serving.metrics.Measured, in part
        def known(self, name):
            return not name.startswith("x")

    services = Known()
    m = Metrics(lambda: services, max_category_labels=3)
    labels = {m.category_label(f"c{i}") for i in range(10)} | {m.category_label("xyz")}
    assert labels == {"c0", "c1", "c2", "_other", "_unknown"}


def test_requests_without_a_deadline_wait_as_long_as_it_takes(batching_server):
    """gRPC reports a call without a deadline as ~9.2e18 s remaining, which no wait accepts: such a call
    that has to wait in the queue must still be answered (it was INTERNAL), here and through serve-ray's
    front (`remaining_time`)."""
    gate = Gate(batching_server)
    batcher = batching_server.services.batcher
    with LandmarkClient(f"127.0.0.1:{batching_server.port}", timeout=60) as client, ThreadPoolExecutor(4) as pool:
        plug = gate.plug(client, pool)
        stub = client.inference
        waiting = [stub.Detect.future(client.request(png_bytes(seed=s), "faces")) for s in (1, 2, 3)]  # no timeout
        wait_for(lambda: batcher.queued() == 3, "requests without a deadline queued")
        gate.open()
        plug.result(60)
        assert all(len(call.result(60).landmarks) == 6 for call in waiting)

    from serving.calls import remaining_time

    def context(remaining):
        return SimpleNamespace(time_remaining=lambda: remaining)

    assert remaining_time(context(9.2233720350581e18)) is None  # what grpcio says without a deadline
    assert remaining_time(context(None)) is None and remaining_time(context(float("inf"))) is None
    assert remaining_time(context(2.5)) == 2.5 and remaining_time(context(-1.0)) == 0.0


def test_pending_wait_errors():
    from serving.inputs import DetectInput
    from serving.work import Pending

    entry = SimpleNamespace(category="cats", cache_key=("cats", "v1", ""))
    p = Pending(DetectInput(entry, np.zeros((8, 8, 3), np.uint8), (0, 0, 8, 8)), None)
    with pytest.raises(ServingError) as exc:
        p.wait(0.01)
    assert exc.value.code == Code.DEADLINE_EXCEEDED
    p.cancel()
    with pytest.raises(ServingError) as exc:
        p.wait(0.01)
    assert exc.value.code == Code.CANCELLED
    assert pb.DetectRequest  # protos importable alongside
