"""Tokens (inference vs admin), admin switched off, TLS, message size limit."""

from __future__ import annotations

import grpc
import pytest

from landmarks.client import LandmarkClient
from tests.serving.helpers import png_bytes, self_signed_cert, start_server

Code = grpc.StatusCode
ADMIN, INFER = "admin-secret-1", "inference-secret-2"


def code_of(fn, *args) -> grpc.StatusCode:
    try:
        fn(*args)
    except grpc.RpcError as exc:
        return exc.code()
    return Code.OK


@pytest.fixture
def token_server(store):
    handle = start_server(store, admin_token=ADMIN, inference_token=INFER)
    yield handle
    handle.shutdown(grace=0)


@pytest.mark.parametrize(
    ("token", "admin_token", "detect", "admin"),
    [
        (None, None, Code.UNAUTHENTICATED, Code.UNAUTHENTICATED),          # no token
        ("wrong", "wrong", Code.UNAUTHENTICATED, Code.UNAUTHENTICATED),    # wrong token
        (INFER, INFER, Code.OK, Code.PERMISSION_DENIED),                   # inference token on admin calls
        (ADMIN, ADMIN, Code.OK, Code.OK),                                  # admin token does both
        (INFER, ADMIN, Code.OK, Code.OK),
    ],
    ids=["none", "wrong", "inference-on-admin", "admin", "both"],
)
def test_token_matrix(token_server, token, admin_token, detect, admin):
    with LandmarkClient(f"127.0.0.1:{token_server.port}", timeout=20, token=token, admin_token=admin_token) as c:
        assert code_of(c.detect, png_bytes(), "cats") == detect
        assert code_of(c.categories) == admin
        assert code_of(c.unregister, "cats") == admin
        assert c.health_status() == "SERVING"  # health is never protected


def test_admin_disabled_and_admin_only_token(store):
    handle = start_server(store, enable_admin=False)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20, admin_token=ADMIN) as c:
            assert code_of(c.categories) == Code.UNIMPLEMENTED
            assert code_of(c.register, "birds", "v1", b"x") == Code.UNIMPLEMENTED
            assert code_of(c.detect, png_bytes(), "cats") == Code.OK
    finally:
        handle.shutdown(grace=0)
    handle = start_server(store, admin_token=ADMIN)  # inference open, admin protected
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
            assert code_of(c.detect, png_bytes(), "cats") == Code.OK
            assert code_of(c.categories) == Code.UNAUTHENTICATED
    finally:
        handle.shutdown(grace=0)


def test_config_refuses_same_tokens_and_half_tls(tmp_path):
    from serving.config import ServerConfig

    with pytest.raises(ValueError, match="differ"):
        ServerConfig(admin_token="a", inference_token="a")
    with pytest.raises(ValueError, match="TLS"):
        ServerConfig(tls_cert=tmp_path / "c.pem")
    assert "secret" not in repr(ServerConfig(admin_token="secret"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def test_tls_with_tokens(store, certs):
    handle = start_server(store, tls_cert=certs / "cert.pem", tls_key=certs / "key.pem",
                          admin_token=ADMIN, inference_token=INFER)
    target = f"127.0.0.1:{handle.port}"
    try:
        with LandmarkClient(target, timeout=20, tls_ca=certs / "cert.pem", token=INFER, admin_token=ADMIN) as c:
            assert len(c.detect(png_bytes(), "cats").points) == 4
            assert {x.name for x in c.categories()} == {"cats", "faces"}
        with LandmarkClient(target, timeout=20, tls_ca=certs / "cert.pem", token=INFER) as c:
            assert code_of(c.categories) == Code.UNAUTHENTICATED
        with LandmarkClient(target, timeout=5, token=INFER) as plain:  # plaintext to a TLS port
            assert code_of(plain.detect, png_bytes(), "cats") == Code.UNAVAILABLE
    finally:
        handle.shutdown(grace=0)


def test_message_size_limit(store):
    handle = start_server(store, max_message_bytes=1 << 20, max_adapter_bytes=512 << 10)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
            assert code_of(c.detect, b"\x89PNG" + bytes(2 << 20), "cats") == Code.RESOURCE_EXHAUSTED
            assert code_of(c.detect, png_bytes(), "cats") == Code.OK
    finally:
        handle.shutdown(grace=0)
