"""Bad input and faults: each case of the reliability probe (docs/reliability.md) on a real server.

Every test ends by checking that the server is still healthy and serves an untouched category;
no case may answer INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import errno
import json
import threading

import grpc
import pytest
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from landmarks.adapter_io import MetadataError, load_adapter, load_core
from landmarks.client import LandmarkClient
from landmarks.v1 import landmarks_pb2 as pb
from tests.serving.helpers import png_bytes, start_server

Code = grpc.StatusCode
BAD_CODES = (Code.INTERNAL, Code.UNKNOWN)


def call(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def assert_healthy(client: LandmarkClient, admin: LandmarkClient | None = None) -> None:
    assert client.health_status() == "SERVING"
    assert len(client.detect(png_bytes(), "cats").points) == 4
    (admin or client).categories()  # the whole server still lists


def _metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header_len])["__metadata__"]


def with_metadata(path, **changes: str) -> bytes:
    """The adapter file's bytes with metadata values replaced (tensors untouched)."""
    data = path.read_bytes()
    return st_save(st_load(data), metadata={**_metadata(data), **changes})


def with_config(path, **changes) -> bytes:
    """The adapter file with config values replaced (and the metadata that repeats them)."""
    config = {**json.loads(_metadata(path.read_bytes())["config"]), **changes}
    repeated = {k: str(v) for k, v in changes.items() if k in ("input_size", "num_landmarks")}
    return with_metadata(path, config=json.dumps(config), **repeated)


# ------------------------------------------------------------------ 1: landmark_names poisoned the server
BAD_NAMES = ["not json", "[1, 2, 3]", "5", "null", '["only-one"]', '["a", "b", "c", ""]', json.dumps(["x" * 65] * 3)]


@pytest.mark.parametrize("names", BAD_NAMES)
def test_bad_landmark_names_fail_registration_and_store_nothing(client, artifacts, server, names):
    data = with_metadata(artifacts.extra["birds-v1"], landmark_names=names)
    code, details = call(client.register, "birds", "v1", data)
    assert code == Code.INVALID_ARGUMENT and "landmark_names" in details
    assert "birds" not in {c.name for c in client.categories()}
    assert not (server.config.adapters_dir / "birds").exists()
    assert_healthy(client)


def test_bad_landmark_names_in_the_store_fail_only_their_category(store, artifacts):
    (store / "birds.safetensors").write_bytes(with_metadata(artifacts.extra["birds-v1"], landmark_names="[1, 2, 3]"))
    handle = start_server(store)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
            birds = {x.name: x for x in c.categories()}["birds"]
            assert birds.state == pb.FAILED and "landmark_names" in birds.error
            assert call(c.detect, png_bytes(), "birds")[0] == Code.UNAVAILABLE
            assert_healthy(c)
    finally:
        handle.shutdown(grace=0)


def test_default_landmark_names(artifacts):
    data = with_metadata(artifacts.extra["birds-v1"], landmark_names="[]")
    adapter = load_adapter(data, load_core(artifacts.core))
    assert adapter.landmark_names == ["p1", "p2", "p3"]


# --------------------------------------------------------------- 2: the inference message limit holds
def test_inference_limit_holds_whatever_the_adapter_cap(store):
    handle = start_server(store, max_message_bytes=1 << 20, max_adapter_bytes=8 << 20)
    try:
        assert handle.config.max_message_bytes == 1 << 20
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
            code, _ = call(c.detect, b"\x89PNG" + bytes(2 << 20), "cats")
            assert code == Code.RESOURCE_EXHAUSTED
            assert_healthy(c)
    finally:
        handle.shutdown(grace=0)


def test_admin_on_its_own_port_with_its_own_limit(store, artifacts):
    handle = start_server(store, max_message_bytes=1 << 20, max_adapter_bytes=4 << 20, admin_port=0)
    try:
        assert handle.admin_port not in (None, handle.port)
        big = b"x" * (2 << 20)  # over the inference limit, under the adapter cap
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as infer, \
                LandmarkClient(f"127.0.0.1:{handle.admin_port}", timeout=20, max_message_bytes=8 << 20) as admin:
            assert call(infer.register, "birds", "v1", artifacts.extra["birds-v1"])[0] == Code.UNIMPLEMENTED
            assert call(admin.detect, png_bytes(), "cats")[0] == Code.UNIMPLEMENTED
            assert call(admin.register, "birds", "v0", big)[0] == Code.INVALID_ARGUMENT  # received, then judged
            assert admin.register("birds", "v1", artifacts.extra["birds-v1"]).created
            assert len(infer.detect(png_bytes(), "birds").points) == 3
            assert admin.health_status() == "SERVING"
            assert_healthy(infer, admin)
    finally:
        assert handle.shutdown(grace=0)


def test_config_rejects_contradictions(store):
    from serving.config import ServerConfig

    with pytest.raises(ValueError, match="no-admin"):
        ServerConfig(adapters_dir=store, admin_port=0, enable_admin=False)
    with pytest.raises(ValueError, match="differ"):
        ServerConfig(adapters_dir=store, port=5000, admin_port=5000)


# ------------------------------------------------------------- 3 and 4: config values by type and range
@pytest.mark.parametrize("changes", [
    {"input_size": 2048}, {"input_size": 96},   # over 2x the tiny core's 32 px
    {"input_size": 0}, {"input_size": -64}, {"input_size": 64.0}, {"input_size": "64"},
    {"num_landmarks": 3.0}, {"num_landmarks": True}, {"num_landmarks": 0}, {"num_landmarks": 10 ** 9},
    {"depth": 50}, {"features": 2 ** 40}, {"mean": [0.5, 0.5]}, {"std": [0, 1, 1]}, {"mean": "x"},
])
def test_bad_config_values_are_invalid_argument(client, artifacts, changes):
    data = with_config(artifacts.extra["birds-v1"], **changes)
    code, details = call(client.register, "birds", "v1", data)
    assert code in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION), (code, details)
    assert len(details) < 600
    assert_healthy(client)


def test_input_size_up_to_twice_the_core_is_served(client, artifacts):
    data = with_config(artifacts.extra["birds-v1"], input_size=64)
    assert client.register("birds", "v64", data).category.input_size == 64
    assert len(client.detect(png_bytes(), "birds").points) == 3


def test_metadata_disagreeing_with_config(artifacts):
    data = with_metadata(artifacts.extra["birds-v1"], num_landmarks="7")
    with pytest.raises(MetadataError, match="num_landmarks"):
        load_adapter(data, load_core(artifacts.core))


# ----------------------------------------------------------- 5: disk errors and temp files
@pytest.mark.parametrize(("err", "expected"), [(errno.ENOSPC, Code.RESOURCE_EXHAUSTED),
                                               (errno.EACCES, Code.UNAVAILABLE)])
def test_disk_errors_store_nothing_and_leave_no_temp_files(client, artifacts, server, monkeypatch, err, expected):
    import serving.store as store_module

    def fail(fd):
        raise OSError(err, "simulated")

    monkeypatch.setattr(store_module.os, "fsync", fail)
    code, details = call(client.register, "birds", "v1", artifacts.extra["birds-v1"])
    assert code == expected and "nothing was stored" in details
    store = server.config.adapters_dir
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
    assert not list(store.rglob("v1.safetensors"))
    assert "birds" not in {c.name for c in client.categories()}
    code, _ = call(client.activate, "cats", "shipped")  # writes the state file: fails cleanly too
    assert code == expected
    monkeypatch.undo()
    assert client.register("birds", "v1", artifacts.extra["birds-v1"]).created
    assert_healthy(client)


def test_activation_failure_keeps_the_previous_version(client, artifacts, server, monkeypatch):
    import serving.store as store_module

    client.register("birds", "v1", artifacts.extra["birds-v1"])
    real_write = store_module._atomic_write

    def fail_state(path, data):
        if path.name == "_state.json":
            raise OSError(errno.ENOSPC, "simulated")
        real_write(path, data)

    monkeypatch.setattr(store_module, "_atomic_write", fail_state)
    assert call(client.register, "birds", "v2", artifacts.extra["birds-v2"])[0] == Code.RESOURCE_EXHAUSTED
    birds = {c.name: c for c in client.categories()}["birds"]
    assert birds.active_version == "v1" and [v.version for v in birds.versions] == ["v1"]
    assert not (server.config.adapters_dir / "birds" / "v2.safetensors").exists()
    assert_healthy(client)


def test_stale_temp_files_are_swept_at_start(store):
    (store / "birds").mkdir()
    stale = [store / "birds" / ".v1.safetensors.4242.139.tmp", store / "birds" / "._state.json.1.2.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = store / "birds" / "notes.tmp"
    keep.write_text("not ours")
    handle = start_server(store)
    try:
        assert not any(p.exists() for p in stale) and keep.exists()
    finally:
        handle.shutdown(grace=0)


# -------------------------------------------------------------- 6: long client strings in errors
@pytest.mark.parametrize("field", ["category", "version"])
def test_long_strings_are_clipped_in_errors(client, artifacts, field):
    long = "a" * 10_000
    kwargs = {"category": "birds", "version": "v1", field: long}
    code, details = call(client.register, kwargs["category"], kwargs["version"], artifacts.extra["birds-v1"])
    assert code == Code.INVALID_ARGUMENT and len(details) < 400 and "10000 characters" in details
    code, details = call(client.detect, png_bytes(), long)
    assert code == Code.INVALID_ARGUMENT and len(details) < 400
    assert_healthy(client)


# --------------------------------------------------------- 7: a state file that is JSON but no object
@pytest.mark.parametrize("text", ["[1, 2]", "null", '{"active": 5}', '{"active": "../x"}', '"v1"',
                                  '{"shipped_removed": ["x"]}', "{" * 100_000])
def test_bad_state_file_does_not_stop_start_up(store, artifacts, text):
    (store / "birds").mkdir()
    (store / "birds" / "v1.safetensors").write_bytes(artifacts.extra["birds-v1"].read_bytes())
    (store / "birds" / "_state.json").write_text(text)
    handle = start_server(store)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
            birds = {x.name: x for x in c.categories()}["birds"]
            assert birds.state == pb.READY and birds.active_version == "v1"
            assert_healthy(c)
    finally:
        handle.shutdown(grace=0)


# ------------------------------------------------------------------ 8: a NUL byte in a path
@pytest.mark.parametrize("path", ["allowed/a\x00b.safetensors", "\x00", "x" * 5000])
def test_unusable_register_paths(client, server, path):
    full = str(server.config.adapters_dir.parent / path)
    code, details = call(client.register, "birds", "v1", full, server_path=True)
    assert code == Code.INVALID_ARGUMENT and len(details) < 400
    assert_healthy(client)


# ------------------------------------------------------- 9: a maximum-size DetectBatch under load
def test_full_size_detect_batch_is_admitted_under_load(store):
    queue = 24
    handle = start_server(store, max_queue=queue, max_batch_items=queue, max_batch_size=4)
    stop = threading.Event()
    codes: list[grpc.StatusCode] = []
    target = f"127.0.0.1:{handle.port}"

    def load() -> None:
        with LandmarkClient(target, timeout=20) as c:
            while not stop.is_set():
                codes.append(call(c.detect, png_bytes(), "cats")[0])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        with LandmarkClient(target, timeout=30) as c:
            while len(codes) < 20:  # the load is on
                stop.wait(0.05)
            for _ in range(3):
                results = c.detect_batch([png_bytes(seed=i) for i in range(queue)], "cats")
                assert len(results) == queue
    finally:
        stop.set()
        for t in threads:
            t.join()
        handle.shutdown(grace=0)
    assert set(codes) <= {Code.OK, Code.RESOURCE_EXHAUSTED}
    assert codes.count(Code.OK) > len(codes) // 2
