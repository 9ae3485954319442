"""The HTTP/JSON plane (`landmarks serve --http-port`): the gRPC plane's answers, checks and messages
over HTTP, gRPC codes as HTTP statuses, the body limit, tokens, TLS, draining. (The `landmarks serve
--http-port` command and SIGTERM: tests/serving/test_demo_page.py.)"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from landmarks.client import LandmarkClient
from serving.http_api import HTTP_STATUS, http_status
from tests.serving.helpers import Gate, jpeg_bytes, metric_value, png_bytes, scrape, start_server, wait_for

Code = grpc.StatusCode


def call(url: str, data: bytes | None = None, headers: dict | None = None, context=None,
         method: str | None = None) -> tuple[int, dict | str, dict]:
    """(status, JSON body or text, headers) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as reply:
            status, body, got = reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        status, body, got = exc.code, exc.read(), dict(exc.headers)
    text = body.decode()
    return status, json.loads(text) if got.get("content-type", "").startswith("application/json") else text, got


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def http_server(artifacts, tmp_path_factory):
    """One server for the tests that only read (starting one costs seconds here)."""
    store = tmp_path_factory.mktemp("http") / "adapters"
    store.mkdir()
    shutil.copy(artifacts.core, store / "core.safetensors")
    for category, path in artifacts.shipped.items():
        shutil.copy(path, store / f"{category}.safetensors")
    handle = start_server(store, http_port=0, max_message_bytes=256 << 10)
    yield handle
    handle.shutdown(grace=0)


@pytest.fixture
def base(http_server) -> str:
    return f"http://127.0.0.1:{http_server.http_port}"


@pytest.fixture(scope="module")
def grpc_client(http_server):
    with LandmarkClient(f"127.0.0.1:{http_server.port}", timeout=20) as c:
        yield c


def test_detect_answers_what_grpc_answers(base, grpc_client):
    image = jpeg_bytes(64, 48, seed=5)
    status, body, headers = call(f"{base}/v1/detect?category=cats", image, {"Content-Type": "image/jpeg"})
    assert status == 200 and headers["content-type"] == "application/json"
    expected = grpc_client.detect(image, "cats").to_dict()
    assert set(body) == set(expected) and set(body["timings"]) == set(expected["timings"])
    for key in ("category", "version", "adapter_sha256", "box"):
        assert body[key] == expected[key]
    assert [p["name"] for p in body["landmarks"]] == [p["name"] for p in expected["landmarks"]]
    for got, want in zip(body["landmarks"], expected["landmarks"]):
        assert abs(got["x"] - want["x"]) < 1e-4 and abs(got["y"] - want["y"]) < 1e-4
    # a box in the query, as gRPC's Box
    status, boxed, _ = call(f"{base}/v1/detect?category=faces&box=4,5,40,30", image)
    assert status == 200 and boxed["box"] == grpc_client.detect(image, "faces", box=(4, 5, 40, 30)).to_dict()["box"]


def test_multipart_form(base, grpc_client):
    image = png_bytes(40, 40, seed=2)
    data, kind = multipart({"category": "faces", "box": "0,0,30,30"}, {"image": ("x.png", image)})
    status, body, _ = call(f"{base}/v1/detect", data, {"Content-Type": kind})
    assert status == 200 and body["category"] == "faces" and len(body["landmarks"]) == 6
    assert body["box"] == grpc_client.detect(image, "faces", box=(0, 0, 30, 30)).to_dict()["box"]
    data, kind = multipart({"category": "faces"}, {})
    status, body, _ = call(f"{base}/v1/detect", data, {"Content-Type": kind})
    assert status == 400 and body["code"] == "INVALID_ARGUMENT" and body["message"].startswith("image: missing")


def grpc_details(client: LandmarkClient, image: bytes, category: str, box=None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        client.detect(image, category, box=box)
    return exc.value.code(), exc.value.details()


@pytest.mark.parametrize(("image", "query", "category", "box", "status"), [
    (b"garbage", "category=cats", "cats", None, 400),           # not an image
    (png_bytes(48, 40)[:60], "category=cats", "cats", None, 400),  # truncated
    (b"", "category=cats", "cats", None, 400),                  # empty
    (png_bytes(2, 2), "category=cats", "cats", None, 400),      # too small
    (png_bytes(), "category=dogs", "dogs", None, 404),          # unknown category
    (png_bytes(), "category=", "", None, 400),                  # no category
    (png_bytes(), "category=Cats!", "Cats!", None, 400),        # not a category name
    (png_bytes(), "category=cats&version=v9", "cats", None, 404),  # unknown version (below: gRPC with it)
    (png_bytes(), "category=cats&box=0,0,0,5", "cats", (0, 0, 0, 5), 400),  # empty box
], ids=["garbage", "truncated", "empty", "too-small", "unknown-category", "no-category", "bad-category",
        "unknown-version", "empty-box"])
def test_bad_requests_have_grpcs_code_and_message(base, grpc_client, image, query, category, box, status):
    got, body, _ = call(f"{base}/v1/detect?{query}", image, {"Content-Type": "image/png"})
    assert got == status, body
    if "version" in query:
        with pytest.raises(grpc.RpcError) as exc:
            grpc_client.detect(image, category, version="v9")
        code, details = exc.value.code(), exc.value.details()
    else:
        code, details = grpc_details(grpc_client, image, category, box)
    assert (body["code"], body["message"]) == (code.name, details)
    assert http_status(code) == status


def test_malformed_box_and_unknown_routes(base):
    status, body, _ = call(f"{base}/v1/detect?category=cats&box=1,2,x,4", png_bytes())
    assert status == 400 and body["message"] == "box: expected four numbers x0,y0,x1,y1, got '1,2,x,4'"
    status, body, _ = call(f"{base}/v2/nothing")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body, _ = call(f"{base}/v1/detect?category=cats", method="GET")
    assert status == 405


def test_status_mapping_covers_every_code():
    assert set(HTTP_STATUS) == set(Code)
    assert {http_status(c) for c in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE,
                                     Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)} == {400, 404, 429, 503, 401, 403}


def test_body_over_the_message_limit_is_413(base):
    big = b"\xff" * (300 << 10)  # the fixture's limit is 256 KiB
    status, body, _ = call(f"{base}/v1/detect?category=cats", big, {"Content-Type": "image/jpeg"})
    assert status == 413 and "over this server's limit" in body["message"]
    # a chunked body (no Content-Length) is cut off as it passes the limit
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    req = urllib.request.Request(f"{base}/v1/detect?category=cats", data=chunks,
                                 headers={"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=60)
    assert exc.value.code == 413


def test_categories_health_openapi_and_page(base):
    status, body, _ = call(f"{base}/v1/categories")
    assert status == 200
    cats = {c["name"]: c for c in body["categories"]}
    assert set(cats) == {"cats", "faces"}
    assert cats["faces"]["landmark_names"] == [f"faces-{i}" for i in range(6)]
    assert cats["faces"]["state"] == "READY" and cats["faces"]["active_version"] == "shipped"
    assert cats["faces"]["versions"][0]["precision"] == "fp32"  # the test adapters carry no int8 calibration
    assert call(f"{base}/v1/health")[:2] == (200, {"status": "SERVING", "message": ""})
    status, spec, _ = call(f"{base}/openapi.json")
    assert status == 200 and {"/v1/detect", "/v1/categories", "/v1/health"} <= set(spec["paths"])
    assert {"image/*", "multipart/form-data"} <= set(spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"])
    status, page, headers = call(f"{base}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "<canvas" in page and "v1/detect" in page and "https://" not in page  # nothing from other sites


def test_draining_refuses_new_work_with_grpcs_message(store):
    handle = start_server(store, http_port=0)
    base = f"http://127.0.0.1:{handle.http_port}"
    try:
        handle.lifecycle.drain()
        status, body, headers = call(f"{base}/v1/detect?category=cats", png_bytes())
        assert status == 503 and body["message"].startswith("server is shutting down")
        assert headers["retry-after"] == "1"
        assert call(f"{base}/v1/health")[:2] == (503, {"status": "NOT_SERVING", "message": "shutting down"})
    finally:
        handle.shutdown(grace=0)


def test_deadline_and_disconnect_as_on_grpc(store):
    """X-Server-Timeout is the gRPC deadline, and a client that hangs up cancels: neither request is
    computed while the model is busy (a plugged batch worker), as on the gRPC plane."""
    handle = start_server(store, http_port=0, metrics_port=0, batch_workers=1)
    base = f"http://127.0.0.1:{handle.http_port}"
    try:
        gate, batcher = Gate(handle), handle.services.batcher
        url, image = f"{base}/v1/detect?category=cats", png_bytes(seed=1)
        for bad in ("soon", "0", "-1", "nan"):
            status, body, _ = call(url, image, {"X-Server-Timeout": bad})
            assert status == 400 and "x-server-timeout" in body["message"], (bad, body)
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client, ThreadPoolExecutor(2) as pool:
            plug = gate.plug(client, pool)
            status, body, _ = call(url, image, {"X-Server-Timeout": "0.3"})  # waits behind the plug
            assert status == 504 and body["code"] == "DEADLINE_EXCEEDED", body
            with socket.create_connection(("127.0.0.1", handle.http_port)) as hasty:
                hasty.sendall(b"POST /v1/detect?category=cats HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(image), image))
                wait_for(lambda: batcher.queued() == 2, "the second request queued")
            wait_for(lambda: all(p.done for p in list(batcher._queue)), "the hung-up request dropped")
            gate.open()
            plug.result(60)
            wait_for(lambda: batcher.queued() == 0, "queue drained")
        assert [cats for _, cats in gate.calls] == [["cats"]]  # the plug only
        text = scrape(handle.metrics_port)
        assert metric_value(text, "landmarks_dropped_total", category="cats", reason="deadline_exceeded") == 1
        assert metric_value(text, "landmarks_dropped_total", category="cats", reason="cancelled") == 1
    finally:
        handle.shutdown(grace=0)


def test_tokens_as_on_grpc(store):
    handle = start_server(store, http_port=0, admin_token="admin-secret", inference_token="infer-secret")
    base = f"http://127.0.0.1:{handle.http_port}"
    try:
        url = f"{base}/v1/detect?category=cats"
        status, body, headers = call(url, png_bytes())
        assert status == 401 and "needs a token" in body["message"] and headers["www-authenticate"] == "Bearer"
        assert call(url, png_bytes(), {"Authorization": "Bearer nope"})[0] == 401
        assert call(url, png_bytes(), {"Authorization": "Bearer infer-secret"})[0] == 200
        assert call(url, png_bytes(), {"Authorization": "Bearer admin-secret"})[0] == 200  # admin is a superset
        assert call(f"{base}/v1/categories")[0] == 401
        assert call(f"{base}/v1/categories", headers={"Authorization": "Bearer infer-secret"})[0] == 200
        assert call(f"{base}/v1/health")[0] == 200 and call(f"{base}/")[0] == 200  # never protected
    finally:
        handle.shutdown(grace=0)


def test_tls_with_the_grpc_planes_files(store, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "2", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    handle = start_server(store, http_port=0, tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem")
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        status, body, _ = call(f"https://127.0.0.1:{handle.http_port}/v1/detect?category=cats", png_bytes(),
                               context=context)
        assert status == 200 and len(body["landmarks"]) == 4
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext to the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{handle.http_port}/v1/health", timeout=10)
    finally:
        handle.shutdown(grace=0)


def test_config_checks_the_http_port():
    from serving.config import ServerConfig

    assert ServerConfig().http_port is None  # off by default
    with pytest.raises(ValueError, match="already the gRPC"):
        ServerConfig(port=8080, http_port=8080)
    with pytest.raises(ValueError, match="0..65535"):
        ServerConfig(http_port=70000)


def test_a_port_in_use_fails_at_start(store, http_server):
    with pytest.raises(OSError, match="cannot serve HTTP"):
        start_server(store, http_port=http_server.http_port)
