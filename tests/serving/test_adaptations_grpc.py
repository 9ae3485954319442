"""Adaptation jobs over gRPC (AdaptationService), end to end on a real socket: a job streamed in
chunks, watched to the end, then a Detect on the new category; the refusals with their codes and
reasons; the admin token on every method, streaming ones included."""

from __future__ import annotations

import grpc
import pytest

from landmarks.client import LandmarkClient, error_details
from landmarks.v1 import landmarks_pb2 as pb
from tests.serving.test_adaptations import PHOTOS, TOKEN, _zip, jobs_server, photo
from training.job import HOLD_ENV

Code = grpc.StatusCode


@pytest.fixture
def grpc_jobs(store):
    server = jobs_server(store, inference_token="infer-secret")
    with LandmarkClient(f"127.0.0.1:{server.port}", timeout=60, admin_token=TOKEN, token="infer-secret") as client:
        yield server, client
    server.shutdown(grace=0)


def test_a_job_over_grpc_registers_a_version_that_detects(grpc_jobs):
    _, client = grpc_jobs
    # small chunks: every file arrives in several messages
    job = client.start_adaptation("mugs", PHOTOS, preset="smoke", num_landmarks=3, activate=True, chunk_bytes=200)
    assert job.state == "queued" and job.images == 10 and job.category == "mugs"
    seen = list(client.watch_adaptation(job.id, timeout=120))
    done = seen[-1]
    assert done.state == "succeeded", done.error
    assert any(s.state == "running" for s in seen)
    assert done.version == f"job-{job.id}" and done.activated and done.steps == 3
    assert {"consistency", "spread"} <= set(done.validation) and done.validation_passed
    assert client.adaptation_job(job.id).state == "succeeded"
    assert [j.id for j in client.adaptation_jobs()] == [job.id]
    result = client.detect(photo(7), "mugs")
    assert result.version == done.version and len(result.points) == 3


def _refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), error_details(refused.value).reason


def test_refusals_carry_their_codes(grpc_jobs, monkeypatch):
    server, client = grpc_jobs
    assert _refusal(lambda: client.start_adaptation("mugs", [], preset="smoke")) == (Code.INVALID_ARGUMENT,
                                                                                  "UPLOAD_EMPTY")
    assert _refusal(lambda: client.start_adaptation("mugs", PHOTOS[:3], preset="smoke")) == (Code.INVALID_ARGUMENT,
                                                                                          "TOO_FEW_IMAGES")
    assert _refusal(lambda: client.start_adaptation("mugs", PHOTOS, preset="fast")) == (Code.INVALID_ARGUMENT,
                                                                                     "OPTION_INVALID")
    unsafe = [("x.zip", _zip([("../up.png", PHOTOS[0][1])]))]
    assert _refusal(lambda: client.start_adaptation("mugs", unsafe)) == (Code.INVALID_ARGUMENT, "UPLOAD_UNSAFE")
    chunks_first = iter([pb.StartAdaptationRequest(chunk=pb.FileChunk(name="a.png", data=PHOTOS[0][1]))])
    assert _refusal(lambda: client.adaptation.StartAdaptation(chunks_first, metadata=client._admin_md)) == (
        Code.INVALID_ARGUMENT, "REQUEST_INVALID")
    assert _refusal(lambda: client.adaptation_job("nope")) == (Code.NOT_FOUND, "JOB_NOT_FOUND")
    assert _refusal(lambda: list(client.watch_adaptation("nope", timeout=30))) == (Code.NOT_FOUND, "JOB_NOT_FOUND")
    assert _refusal(lambda: client.cancel_adaptation("nope")) == (Code.NOT_FOUND, "JOB_NOT_FOUND")
    # a running job cancels; cancelling again answers it as it is
    monkeypatch.setenv(HOLD_ENV, "1")
    job = client.start_adaptation("mugs", PHOTOS, preset="smoke", steps=4)
    assert client.cancel_adaptation(job.id).state == "cancelled"
    assert client.cancel_adaptation(job.id).state == "cancelled"
    assert not (server.config.adapters_dir / ".jobs" / job.id).exists()
    assert [s.state for s in client.watch_adaptation(job.id, timeout=30)] == ["cancelled"]


def test_every_method_needs_the_admin_token(grpc_jobs):
    server, _ = grpc_jobs
    for token, want in ((None, Code.UNAUTHENTICATED), ("infer-secret", Code.PERMISSION_DENIED)):
        with LandmarkClient(f"127.0.0.1:{server.port}", timeout=30, admin_token=token) as client:
            assert _refusal(lambda c=client: c.start_adaptation("mugs", PHOTOS))[0] == want
            assert _refusal(lambda c=client: list(c.watch_adaptation("x", timeout=30)))[0] == want
            assert _refusal(lambda c=client: c.adaptation_jobs())[0] == want


def test_without_admin_the_service_is_unimplemented(store):
    server = jobs_server(store, enable_admin=False, admin_token=None)
    try:
        with LandmarkClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            with pytest.raises(grpc.RpcError) as refused:
                client.adaptation_jobs()
            assert refused.value.code() == Code.UNIMPLEMENTED
    finally:
        server.shutdown(grace=0)


def test_watch_streams_do_not_take_detects_threads(grpc_jobs, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    server, client = grpc_jobs
    monkeypatch.setenv(HOLD_ENV, "1")
    job = client.start_adaptation("mugs", PHOTOS, preset="smoke", steps=4)
    streams = server.config.max_workers + 4  # more than the server's handler threads
    with ThreadPoolExecutor(streams) as pool:
        watching = [pool.submit(lambda: [s.state for s in client.watch_adaptation(job.id, timeout=120)])
                    for _ in range(streams)]
        for _ in range(50):  # let every stream reach the server
            if client.adaptation_job(job.id).step >= 1:
                break
            client.detect(photo(1), "cats")
        assert client.detect(photo(2), "cats").category == "cats"  # Detect still has its threads
        client.cancel_adaptation(job.id)
        assert all(w.result(timeout=60)[-1] == "cancelled" for w in watching)


def test_an_upload_over_the_limit_stops_mid_stream(store):
    server = jobs_server(store, max_adaptation_upload_bytes=1 << 20)
    try:
        with LandmarkClient(f"127.0.0.1:{server.port}", timeout=60, admin_token=TOKEN) as client:
            big = [(f"{i}.png", bytes(300 << 10)) for i in range(5)]  # 1.5 MB in 64 KB chunks
            assert _refusal(lambda: client.start_adaptation("mugs", big, chunk_bytes=64 << 10)) == (
                Code.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE")
            assert client.adaptation_jobs() == []
            assert not [p for p in (store / ".jobs").iterdir() if p.is_dir()]
    finally:
        server.shutdown(grace=0)
