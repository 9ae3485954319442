"""The server end to end on a real socket: inference, admin, bad inputs, restart."""

from __future__ import annotations

import io
import os
import pickle
import shutil

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from landmarks.adapter_io import load_adapter, load_core
from landmarks.client import LandmarkClient
from landmarks.geometry import crop_to_tensor, input_to_original, square_box
from landmarks.heatmaps import heatmap_to_input, soft_argmax
from landmarks.images import pixels_to_images
from landmarks.projection import build_adapted, load_adapter_state
from landmarks.v1 import landmarks_pb2 as pb
from serving.backends import DEFAULT_BACKEND
from serving.preprocess import crop_square
from tests.serving.helpers import (
    calibrate_for_int8,
    jpeg_bytes,
    make_adapter,
    make_core,
    png_bytes,
    png_header,
    start_server,
)

Code = grpc.StatusCode


def rpc_code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kwargs)
    return exc.value.code(), exc.value.details()


def assert_healthy(client: LandmarkClient) -> None:
    assert client.health_status() == "SERVING"
    assert len(client.detect(png_bytes(), "cats").points) == 4


# ----------------------------------------------------------------------------- inference
def test_detect_every_category(client):
    cats = {c.name: c for c in client.categories()}
    assert set(cats) == {"cats", "faces"}
    for name, info in cats.items():
        assert info.state == pb.READY and info.active_version == "shipped"
        for image, (_w, _h) in [(png_bytes(48, 40), (48, 40)), (jpeg_bytes(64, 48), (64, 48))]:
            res = client.detect(image, name)
            assert len(res.points) == info.num_landmarks and res.version == "shipped"
            assert res.adapter_sha256 == info.active_sha256
            for x, y, conf in res.points:
                assert all(map(torch.isfinite, map(torch.tensor, (x, y, conf))))
                # inside the (square) box, and so within the letterboxed image
                assert res.box[0] - 0.5 <= x <= res.box[2] - 0.5 and res.box[1] - 0.5 <= y <= res.box[3] - 0.5
                assert 0 < conf <= 1
            assert res.names == [f"{name}-{i}" for i in range(info.num_landmarks)]
    # raw pixels give the same answer as the PNG holding them
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(png_bytes(48, 40))).convert("RGB"))
    a, b = client.detect(arr, "cats"), client.detect(png_bytes(48, 40), "cats")
    assert a.points == b.points


def reference_points(core_path, adapter_path, image_bytes, box=None):
    """The unfolded projected network (what training runs) on the same crop."""
    from PIL import Image

    core = load_core(core_path)
    adapter = load_adapter(adapter_path, core)
    adapted = build_adapted(core.build(), adapter.num_landmarks)
    load_adapter_state(adapted, adapter.tensors)
    adapted.eval()
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    w, h = image.size
    sq = square_box(box or (0, 0, w, h))
    size = core.config.input_size
    with torch.no_grad():
        heat = adapted(crop_to_tensor(image, sq, size).unsqueeze(0))
    pts = heatmap_to_input(soft_argmax(heat), size / heat.shape[-1])[0]
    return input_to_original(pts.double(), sq, size)


def test_folded_matches_unfolded_projection(client, store):
    for name, box in [("cats", None), ("faces", (4.0, 6.0, 40.0, 30.0))]:
        image = png_bytes(48, 40, seed=7)
        got = torch.tensor([p[:2] for p in client.detect(image, name, box=box).points], dtype=torch.float64)
        want = reference_points(store / "core.safetensors", store / f"{name}.safetensors", image, box)
        assert (got - want).abs().max() < 1e-4, (got - want).abs().max()


def test_detect_batch_equals_single_calls(client):
    images = [png_bytes(48, 40, seed=s) for s in range(3)] + [jpeg_bytes(50, 70, seed=9)]
    cats = ["cats", "faces", "cats", "faces"]
    boxes = [None, (2, 2, 30, 30), None, None]
    batch = client.detect_batch(images, cats, boxes)
    for img, cat, box, res in zip(images, cats, boxes, batch):
        single = client.detect(img, cat, box=box)
        assert res.category == cat and res.version == single.version
        assert torch.allclose(torch.tensor(res.points), torch.tensor(single.points), atol=1e-5)
    code, msg = rpc_code(client.detect_batch, [png_bytes(), b"junk"], "cats")
    assert code == Code.INVALID_ARGUMENT and msg.startswith("requests[1].image.encoded")


# ---------------------------------------------------------------------------- bad inputs
def raw_request(category="cats", **raw):
    return pb.DetectRequest(category=category, image=pb.Image(raw=pb.RawImage(**raw)))


@pytest.mark.parametrize("request_factory, code, needle", [
    (lambda: pb.DetectRequest(category="cats", image=pb.Image(encoded=b"")), Code.INVALID_ARGUMENT, "empty"),
    (lambda: pb.DetectRequest(category="cats", image=pb.Image(encoded=jpeg_bytes()[:900])),
     Code.INVALID_ARGUMENT, "truncated"),
    (lambda: pb.DetectRequest(category="cats", image=pb.Image(encoded=b"GET / HTTP/1.1\r\nHost: x\r\n")),
     Code.INVALID_ARGUMENT, "not a JPEG"),
    (lambda: pb.DetectRequest(category="cats", image=pb.Image(encoded=png_bytes(1, 1))),
     Code.INVALID_ARGUMENT, "at least"),
    (lambda: pb.DetectRequest(category="cats", image=pb.Image(encoded=png_header(20000, 20000))),
     Code.INVALID_ARGUMENT, "pixels"),
    (lambda: raw_request(pixels=bytes(2 * 8 * 8), height=8, width=8, channels=2),
     Code.INVALID_ARGUMENT, "image.raw.channels"),
    (lambda: raw_request(pixels=bytes(10), height=8, width=8, channels=3), Code.INVALID_ARGUMENT, "image.raw.pixels"),
    (lambda: pb.DetectRequest(category="cats"), Code.INVALID_ARGUMENT, "image: missing"),
    (lambda: pb.DetectRequest(category="dogs", image=pb.Image(encoded=png_bytes())), Code.NOT_FOUND, "dogs"),
    (lambda: pb.DetectRequest(category="cats", version="v9", image=pb.Image(encoded=png_bytes())),
     Code.NOT_FOUND, "v9"),
    (lambda: pb.DetectRequest(category="../x", image=pb.Image(encoded=png_bytes())), Code.INVALID_ARGUMENT,
     "category"),
    (lambda: pb.DetectRequest(category="cats", image=pb.Image(encoded=png_bytes()),
                              box=pb.Box(x0=10, y0=10, x1=5, y1=20)), Code.INVALID_ARGUMENT, "box"),
])
def test_bad_detect_inputs(client, request_factory, code, needle):
    got, msg = rpc_code(client.inference.Detect, request_factory(), timeout=10)
    assert got == code and needle in msg, (got, msg)
    assert_healthy(client)


def _adapter_bytes(path, edit=None, metadata_edit=None) -> bytes:
    data = path.read_bytes()
    tensors = st_load(data)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    if edit:
        edit(tensors)
    if metadata_edit:
        metadata_edit(meta)
    return st_save(tensors, metadata=meta)


def _rename_key(t):
    t["head.bias_typo"] = t.pop("head.bias")


def _bad_shape(t):
    key = next(k for k in t if k.endswith(".proj"))
    t[key] = torch.eye(t[key].shape[0] + 1)


def _nan(t):
    t["head.weight"][0, 0] = float("nan")


def _negative_var(t):  # finite tensors, but folding would take the sqrt of a negative variance
    key = next(k for k in t if k.endswith("running_var"))
    t[key].fill_(-1.0)


def _other_core(m):
    m["core_sha256"] = "0" * 64


@pytest.mark.parametrize("make, code, needle", [
    (lambda p: _adapter_bytes(p, edit=_rename_key), Code.INVALID_ARGUMENT, "tensor names"),
    (lambda p: _adapter_bytes(p, edit=_bad_shape), Code.INVALID_ARGUMENT, "shape"),
    (lambda p: _adapter_bytes(p, edit=_nan), Code.INVALID_ARGUMENT, "NaN"),
    (lambda p: _adapter_bytes(p, edit=_negative_var), Code.INVALID_ARGUMENT, "running_var has negative values"),
    (lambda p: _adapter_bytes(p, metadata_edit=_other_core), Code.FAILED_PRECONDITION, "core"),
    (lambda p: pickle.dumps({"head.weight": torch.zeros(3, 8, 1, 1).numpy()}), Code.INVALID_ARGUMENT, "pickle"),
    (lambda p: _torch_save_bytes(), Code.INVALID_ARGUMENT, "pickle"),
    (lambda p: b"", Code.INVALID_ARGUMENT, "empty"),
    (lambda p: b"not a safetensors file at all", Code.INVALID_ARGUMENT, "safetensors"),
])
def test_bad_adapters_rejected(client, artifacts, make, code, needle):
    got, msg = rpc_code(client.register, "birds", "v1", make(artifacts.extra["birds-v1"]))
    assert got == code and needle in msg, (got, msg)
    assert "birds" not in {c.name for c in client.categories()}  # nothing left behind
    assert_healthy(client)


def _torch_save_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"head.weight": torch.zeros(3)}, buf)
    return buf.getvalue()


def test_oversized_adapter(client, server, artifacts):
    server.services.registry.max_adapter_bytes = 1000  # the tiny adapters are ~20 kB
    got, msg = rpc_code(client.register, "birds", "v1", artifacts.extra["birds-v1"])
    assert got == Code.RESOURCE_EXHAUSTED and "limit" in msg
    assert_healthy(client)


# ---------------------------------------------------------------------------------- admin
def test_register_versions_activate_unregister(client, server, artifacts, store):
    v1, v2 = artifacts.extra["birds-v1"], artifacts.extra["birds-v2"]
    reply = client.register("birds", "v1", v1)
    assert reply.created and reply.category.state == pb.READY and reply.category.active_version == "v1"
    assert (store / "birds" / "v1.safetensors").read_bytes() == v1.read_bytes()
    # idempotent, then immutable
    assert client.register("birds", "v1", v1).created is False
    code, msg = rpc_code(client.register, "birds", "v1", v2)
    assert code == Code.ALREADY_EXISTS and "immutable" in msg
    # K must match the category's other versions
    code, _ = rpc_code(client.register, "birds", "k5", artifacts.extra["birds-k5"])
    assert code == Code.FAILED_PRECONDITION
    # reserved / invalid version names
    assert rpc_code(client.register, "birds", "shipped", v2)[0] == Code.INVALID_ARGUMENT
    assert rpc_code(client.register, "birds", "../v2", v2)[0] == Code.INVALID_ARGUMENT
    assert rpc_code(client.register, "../etc", "v2", v2)[0] == Code.INVALID_ARGUMENT

    client.register("birds", "v2", v2, activate=False)
    img = png_bytes(seed=3)
    r1 = client.detect(img, "birds")
    assert r1.version == "v1"
    client.register("birds", "v2", v2)  # idempotent + activate
    r2 = client.detect(img, "birds")
    assert r2.version == "v2" and r2.points != r1.points
    assert client.detect(img, "birds", version="v1").points == r1.points  # explicit version
    assert client.activate("birds", "v1").active_version == "v1"  # roll back
    assert client.detect(img, "birds").points == r1.points
    assert rpc_code(client.activate, "birds", "v7")[0] == Code.NOT_FOUND
    assert rpc_code(client.activate, "dogs", "v1")[0] == Code.NOT_FOUND

    assert rpc_code(client.unregister, "birds", "v1")[0] == Code.FAILED_PRECONDITION  # active
    assert client.unregister("birds", "v2") == ["v2"]
    assert not (store / "birds" / "v2.safetensors").exists()
    assert client.unregister("birds") == ["v1"]
    assert not (store / "birds").exists()
    assert rpc_code(client.detect, img, "birds")[0] == Code.NOT_FOUND
    assert rpc_code(client.unregister, "birds")[0] == Code.NOT_FOUND
    # re-registering a removed version with other content is a new registration
    assert client.register("birds", "v1", v2).created
    info = client.server_info()
    assert info.ready and info.backend == DEFAULT_BACKEND and info.core_sha256 == artifacts.core_sha256
    assert info.cache.entries >= 1 and info.cache.hits >= 1
    # a lone forward's threads: the server's --threads (1 here) for torch; ORT sessions get a batch worker's share
    assert info.forward_threads == (server.services.backend.threads if info.backend == "onnxruntime"
                                    else server.services.batcher.threads.alone) >= 1


def test_register_by_path(client, server, store, artifacts, tmp_path):
    allowed = store.parent / "allowed"
    allowed.mkdir()
    (allowed / "b.safetensors").write_bytes(artifacts.extra["birds-v1"].read_bytes())
    assert client.register("birds", "v1", str(allowed / "b.safetensors"), server_path=True).created
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(artifacts.extra["birds-v2"].read_bytes())
    (allowed / "link.safetensors").symlink_to(outside)
    for path in (str(outside), f"{allowed}/../outside.safetensors", str(allowed / "link.safetensors")):
        code, msg = rpc_code(client.register, "birds", "v2", path, server_path=True)
        assert code == Code.PERMISSION_DENIED and "outside" in msg, (path, code, msg)
    assert rpc_code(client.register, "birds", "v2", str(allowed / "nope.safetensors"), server_path=True)[0] \
        == Code.NOT_FOUND


def test_wrong_core_shipped_file_fails_only_its_category(store, tmp_path):
    other = tmp_path / "other-core.safetensors"
    make_core(other, seed=5)
    make_adapter(store / "dogs.safetensors", other, "dogs", seed=8)
    handle = start_server(store)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}") as client:
            cats = {c.name: c for c in client.categories()}
            assert cats["dogs"].state == pb.FAILED and "core" in cats["dogs"].error
            code, msg = rpc_code(client.detect, png_bytes(), "dogs")
            assert code == Code.UNAVAILABLE and "failed to load" in msg
            assert_healthy(client)
    finally:
        handle.server.stop(None).wait()


# -------------------------------------------------------------------------- restart, health
def test_restart_serves_what_was_registered(store, artifacts):
    handle = start_server(store)
    img = png_bytes(seed=11)
    with LandmarkClient(f"127.0.0.1:{handle.port}") as client:
        client.register("birds", "v1", artifacts.extra["birds-v1"])
        client.register("birds", "v2", artifacts.extra["birds-v2"])
        client.activate("birds", "v1")
        before = client.detect(img, "birds")
        client.unregister("faces")  # a shipped category: its file stays, but it stays removed
        before_cats = {c.name: (c.active_version, c.active_sha256, [v.version for v in c.versions])
                       for c in client.categories()}
    handle.server.stop(None).wait()
    assert (store / "faces.safetensors").exists()

    handle = start_server(store)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}") as client:
            after_cats = {c.name: (c.active_version, c.active_sha256, [v.version for v in c.versions])
                          for c in client.categories()}
            assert after_cats == before_cats and set(after_cats) == {"birds", "cats"}
            after = client.detect(img, "birds")
            assert after.version == "v1" and after.points == before.points
            # a shipped category can be registered again under a version
            client.register("faces", "v1", artifacts.shipped["faces"])
            assert client.detect(img, "faces").version == "v1"
    finally:
        handle.server.stop(None).wait()


def test_health_reflection_and_missing_core(server, client, tmp_path):
    from serving.config import ServerConfig
    from serving.server import CoreLoadError, build_server

    for service in ("", "landmarks.v1.LandmarkService", "landmarks.v1.AdminService"):
        assert client.health_status(service) == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"landmarks.v1.LandmarkService", "landmarks.v1.AdminService", "grpc.health.v1.Health"} <= names

    with pytest.raises(CoreLoadError, match="no core file"):
        build_server(ServerConfig(port=0, adapters_dir=tmp_path))
    # background loading: NOT_SERVING, requests UNAVAILABLE with the reason
    handle = build_server(ServerConfig(port=0, adapters_dir=tmp_path, load_in_background=True))
    handle.server.start()
    try:
        handle.lifecycle.loaded.wait(10)
        with LandmarkClient(f"127.0.0.1:{handle.port}") as c:
            assert c.health_status() == "NOT_SERVING"
            code, msg = rpc_code(c.detect, png_bytes(), "cats")
            assert code == Code.UNAVAILABLE and "no core file" in msg
    finally:
        handle.server.stop(None).wait()
    assert health_pb2.HealthCheckResponse.SERVING  # imported for the enum


def test_cli_commands(server, artifacts, tmp_path, capsys):
    from landmarks.cli import main

    target = f"127.0.0.1:{server.port}"
    image = tmp_path / "img.png"
    image.write_bytes(png_bytes(48, 40))
    assert main(["register", "--server", target, "--category", "birds", "--version", "v1",
                 str(artifacts.extra["birds-v1"])]) == 0
    assert main(["categories", "--server", target, "--info"]) == 0
    out = capsys.readouterr().out
    assert "birds" in out and "READY" in out
    assert main(["detect", "--server", target, "--category", "birds", str(image), "--draw",
                 str(tmp_path / "out.png")]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert len(result["landmarks"]) == 3 and (tmp_path / "out.png").is_file()
    assert main(["activate", "--server", target, "--category", "birds", "--version", "v1"]) == 0
    assert main(["unregister", "--server", target, "--category", "birds"]) == 0
    capsys.readouterr()
    assert main(["detect", "--server", target, "--category", "birds", str(image)]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--adapters", str(tmp_path)]) == 2
    assert "no core file" in capsys.readouterr().err
    assert os.path.exists(str(image))


def test_adapter_with_its_own_input_size(server, client, artifacts, tmp_path):
    """An adapter may run the core at a smaller input (the CPU preset): the server crops the client's image
    once, at the size of the version the request leased, as training crops."""

    from landmarks.adapter_io import save_adapter
    from landmarks.projection import adapter_state_dict

    core = load_core(artifacts.core)
    adapted = build_adapted(core.build(), 3, input_size=16)
    with torch.no_grad():
        adapted.head.weight.normal_(generator=torch.Generator().manual_seed(3))
    path = save_adapter(tmp_path / "small.safetensors", adapter_state_dict(adapted), adapted.config,
                        category="small", core_sha256=core.sha256)
    client.register("small", "v1", path)
    image = png_bytes(48, 40, seed=11)
    got = torch.tensor([p[:2] for p in client.detect(image, "small").points], dtype=torch.float64)

    from PIL import Image

    pil = Image.open(io.BytesIO(image)).convert("RGB")
    sq = square_box((0, 0, 48, 40))
    adapted.eval()

    def expected(crop):
        with torch.no_grad():
            heat = adapted(crop[None])
        return input_to_original(heatmap_to_input(soft_argmax(heat), 16 / heat.shape[-1])[0].double(), sq, 16)

    assert got.shape == (3, 2) and (got - expected(crop_to_tensor(pil, sq, 16))).abs().max() < 1e-3
    assert torch.equal(pixels_to_images(torch.from_numpy(crop_square(pil, sq, 16))[None])[0], crop_to_tensor(pil, sq, 16))


def test_cli_waits_briefly_then_says_no_server(tmp_path, capsys):
    """`--wait` covers a server still starting; with nothing listening the error is the usual one."""
    import socket

    from landmarks.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    image = tmp_path / "img.png"
    image.write_bytes(png_bytes(48, 40))
    assert main(["detect", "--server", f"127.0.0.1:{port}", "--wait", "0.5", "--category", "x", str(image)]) == 1
    assert "no server answers" in capsys.readouterr().err


def test_a_bf16_server_serves_and_says_so(store, monkeypatch):
    """--precision bf16 (made to pass its CPU check here, which only guards speed): the same
    categories, points near fp32's, and ServerInfo names the precision the bench then mirrors."""
    import landmarks.hardware

    monkeypatch.setattr(landmarks.hardware, "cpu_bf16_flags", lambda: ["amx_bf16"])
    handles = {p: start_server(store, backend="torchscript", precision=p) for p in ("fp32", "bf16")}
    try:
        answers = {}
        for precision, handle in handles.items():
            with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
                info = c.server_info()
                assert (info.backend, info.precision) == ("torchscript", precision)
                answers[precision] = c.detect(png_bytes(48, 40), "faces")
        fp32, bf16 = (torch.tensor([p[:2] for p in answers[k].points]) for k in ("fp32", "bf16"))
        assert fp32.shape == bf16.shape and (fp32 - bf16).abs().max() < 0.05 * 48
    finally:
        for handle in handles.values():
            handle.shutdown(grace=0)


@pytest.mark.skipif(DEFAULT_BACKEND != "onnxruntime", reason="onnxruntime is not installed")
def test_session_threads_give_each_onnxruntime_session_its_threads(store):
    """--session-threads: every session (all cores for a lone request's latency) with the same points
    as sessions of a batch worker's share; ServerInfo reports what the bench's bare forward mirrors."""
    handles = {n: start_server(store, backend="onnxruntime", batch_workers=2, session_threads=n)
               for n in (None, 2)}
    try:
        answers = {}
        for n, handle in handles.items():
            with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
                assert c.server_info().forward_threads == (n or 1) == handle.services.backend.threads
                answers[n] = c.detect(png_bytes(48, 40), "faces")
        shared, own = (torch.tensor([p[:2] for p in answers[k].points]) for k in (None, 2))
        torch.testing.assert_close(shared, own, atol=1e-3, rtol=0)
    finally:
        for handle in handles.values():
            handle.shutdown(grace=0)


@pytest.mark.skipif(DEFAULT_BACKEND != "onnxruntime", reason="onnxruntime is not installed")
def test_an_int8_server_serves_calibrated_adapters_and_refuses_the_rest_one_by_one(store, artifacts, tmp_path):
    """--precision int8: a calibrated adapter (`landmarks calibrate`) is served, points near the fp32
    server's; an uncalibrated one fails its own registration, saying what to run, and nothing else
    (the shipped categories without a calibration are left out at start, the server runs)."""
    faces = store / "faces.safetensors"
    calibrate_for_int8(faces, store / "core.safetensors")
    handles = {p: start_server(store, backend="onnxruntime", precision=p) for p in ("fp32", "int8")}
    try:
        answers = {}
        for precision, handle in handles.items():
            with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
                assert c.server_info().precision == precision
                answers[precision] = c.detect(png_bytes(48, 40), "faces")
        fp32, int8 = (torch.tensor([p[:2] for p in answers[k].points]) for k in ("fp32", "int8"))
        assert fp32.shape == int8.shape and (fp32 - int8).abs().mean() < 0.05 * 48
        with LandmarkClient(f"127.0.0.1:{handles['int8'].port}", timeout=20) as c:
            code, msg = rpc_code(c.register, "birds", "v1", artifacts.extra["birds-v1"].read_bytes())
            assert code == Code.INVALID_ARGUMENT and "no int8 calibration" in msg and "landmarks calibrate" in msg
            cats = next(i for i in c.categories() if i.name == "cats")  # shipped, uncalibrated: not served in int8
            assert cats.state == pb.FAILED and "no int8 calibration" in cats.error
            calibrated = tmp_path / "birds.safetensors"
            calibrated.write_bytes(artifacts.extra["birds-v1"].read_bytes())
            calibrate_for_int8(calibrated, store / "core.safetensors")
            c.register("birds", "v1", calibrated.read_bytes())
            assert len(c.detect(png_bytes(48, 40), "birds").points) == 3
            assert len(c.detect(png_bytes(48, 40), "faces").points) == 6
    finally:
        for handle in handles.values():
            handle.shutdown(grace=0)


@pytest.mark.skipif(DEFAULT_BACKEND != "onnxruntime", reason="onnxruntime is not installed")
@pytest.mark.parametrize("int8_cpu", [True, False], ids=["vnni-cpu", "cpu-without-8-bit-dot-products"])
def test_the_default_precision_serves_calibrated_adapters_in_int8_where_the_cpu_runs_it(store, artifacts, tmp_path,
                                                                                       monkeypatch, int8_cpu):
    """--precision auto (the default): int8 for an adapter whose calibration passed its recorded check on
    a CPU with 8-bit dot products, fp32 for the rest (a calibration without a check, or with a failed
    one; and everywhere on other CPUs, where int8 would need 7-bit weights the check did not measure);
    each version says which and why (VersionInfo.precision, precision_reason)."""
    import landmarks.runtime.sessions as ort_backend  # where the backend reads the CPU's flags

    monkeypatch.setattr(ort_backend, "cpu_int8_flags", lambda: ["avx512_vnni"] if int8_cpu else [])
    calibrate_for_int8(store / "faces.safetensors", store / "core.safetensors")
    unchecked, failed = tmp_path / "unchecked.safetensors", tmp_path / "failed.safetensors"
    for path, check in ((unchecked, None), (failed, {"mean_px": 0.2, "p95_px": 0.9, "images": 4})):
        shutil.copy(artifacts.extra["birds-v1"], path)
        calibrate_for_int8(path, store / "core.safetensors", check=check)
    handle = start_server(store)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=20) as c:
            assert c.server_info().precision == "auto"
            c.register("birds", "unchecked", unchecked.read_bytes())
            c.register("birds", "failed", failed.read_bytes())
            served = {(cat.name, v.version): (v.precision, v.precision_reason)
                      for cat in c.categories() for v in cat.versions}
            passed = "auto: its int8 calibration passed its check (mean 0.100 px, p95 0.200 px at 128)"
            elsewhere = f"{passed}, but int8 runs only on the onnxruntime backend on a CPU with 8-bit dot products (VNNI, AMX)"
            assert served[("faces", "shipped")] == (("int8", passed) if int8_cpu else ("fp32", elsewhere))
            assert served[("cats", "shipped")] == ("fp32", "auto: no int8 calibration (landmarks calibrate adds one)")
            assert served[("birds", "unchecked")][0] == "fp32"
            assert "has no recorded check" in served[("birds", "unchecked")][1]
            failed_check = "auto: its int8 calibration failed its check (mean 0.200 px, p95 0.900 px at 128; the rule is <= 0.5)"
            assert served[("birds", "failed")] == ("fp32", failed_check)
            assert len(c.detect(png_bytes(48, 40), "faces").points) == 6
            assert len(c.detect(png_bytes(48, 40), "cats").points) == 4
    finally:
        handle.shutdown(grace=0)
