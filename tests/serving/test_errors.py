"""Structured errors over real sockets: each gRPC error carries a google.rpc.Status with ErrorInfo
(reason, domain, the DetectBatch index) and BadRequest (the field path), read with
`grpc_status.rpc_status.from_call`; the HTTP plane's error JSON carries the same details. Also the
server's reflection, v1 and v1alpha, asked by a real reflection client."""

from __future__ import annotations

import ast
import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc
from serving.errors import DOMAIN, Reason, ServingError, renumber
from tests.serving.helpers import make_adapter, make_core, png_bytes, start_server

Code = grpc.StatusCode
ROOT = Path(__file__).resolve().parents[2]


def details(exc: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    """The ErrorInfo and BadRequest (None if absent) of a failed call."""
    status = rpc_status.from_call(exc)
    assert status is not None, f"no google.rpc.Status details on {exc.code()}: {exc.details()}"
    info, bad = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    assert info is not None and info.domain == DOMAIN
    return info, bad


def fails(call, request, metadata=None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30, metadata=metadata)
    return caught.value


@pytest.fixture
def stubs(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.LandmarkServiceStub(channel), pb_grpc.AdminServiceStub(channel)


def _detect(category="cats", data=None, **kw) -> pb.DetectRequest:
    return pb.DetectRequest(category=category, image=pb.Image(encoded=png_bytes() if data is None else data), **kw)


def test_detect_errors_carry_reason_and_field(stubs):
    detect = stubs[0].Detect
    cases = [
        (_detect(data=b"GIF89a not really"), Code.INVALID_ARGUMENT, Reason.IMAGE_UNDECODABLE, "image.encoded"),
        (pb.DetectRequest(category="cats"), Code.INVALID_ARGUMENT, Reason.IMAGE_MISSING, "image"),
        (_detect("no_such_category"), Code.NOT_FOUND, Reason.CATEGORY_NOT_FOUND, "category"),
        (_detect("Bad Name!"), Code.INVALID_ARGUMENT, Reason.CATEGORY_INVALID, "category"),
        (_detect(version="v9"), Code.NOT_FOUND, Reason.VERSION_NOT_FOUND, "version"),
        (_detect(box=pb.Box(x0=5, y0=5, x1=5, y1=9)), Code.INVALID_ARGUMENT, Reason.BOX_INVALID, "box"),
        (_detect(data=png_bytes(2, 2)), Code.INVALID_ARGUMENT, Reason.IMAGE_TOO_SMALL, "image.encoded"),
    ]
    for request, code, reason, field in cases:
        exc = fails(detect, request)
        info, bad = details(exc)
        assert (exc.code(), info.reason) == (code, reason.value), exc.details()
        assert [v.field for v in bad.field_violations] == [field]
        assert exc.details().startswith(f"{field}: ") and bad.field_violations[0].description in exc.details()
        assert "index" not in info.metadata  # a lone Detect is no batch
    info, _ = details(fails(detect, _detect("no_such_category")))
    assert info.metadata["category"] == "no_such_category"


def test_a_bad_batch_item_is_named_by_index_and_field(stubs):
    batch = pb.DetectBatchRequest(requests=[_detect(), _detect(data=b"\x89PNG\r\n\x1a\n broken"), _detect("faces")])
    exc = fails(stubs[0].DetectBatch, batch)
    info, bad = details(exc)
    assert exc.code() == Code.INVALID_ARGUMENT and info.reason == Reason.IMAGE_UNDECODABLE.value
    assert info.metadata["index"] == "1"
    assert [v.field for v in bad.field_violations] == ["requests[1].image.encoded"]
    assert exc.details().startswith("requests[1].image.encoded: ")

    later = pb.DetectBatchRequest(requests=[_detect(), _detect("faces"), _detect("nope")])
    info, bad = details(fails(stubs[0].DetectBatch, later))
    assert (info.reason, info.metadata["index"]) == (Reason.CATEGORY_NOT_FOUND.value, "2")
    assert bad.field_violations[0].field == "requests[2].category"


def test_a_batch_over_the_limit(server, stubs):
    n = server.config.max_batch_items + 1
    exc = fails(stubs[0].DetectBatch, pb.DetectBatchRequest(requests=[_detect()] * n))
    info, bad = details(exc)
    assert (exc.code(), info.reason) == (Code.INVALID_ARGUMENT, Reason.BATCH_TOO_LARGE.value)
    assert bad.field_violations[0].field == "requests" and "index" not in info.metadata


def _edited(path: Path, edit) -> bytes:
    from safetensors import safe_open

    tensors = st_load(path.read_bytes())
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    edit(tensors, meta)
    return st_save(tensors, metadata=meta)


def _negative_var(tensors, meta):
    tensors[next(k for k in tensors if k.endswith("running_var"))].fill_(-1.0)


def _other_core(tensors, meta):
    meta["core_sha256"] = "0" * 64


def test_registration_errors_carry_reasons(artifacts, stubs, tmp_path):
    register = stubs[1].RegisterAdapter
    birds = artifacts.extra["birds-v1"]
    other_core = tmp_path / "other-core.safetensors"
    make_core(other_core, seed=7)
    cases = [
        (_edited(birds, _negative_var), Code.INVALID_ARGUMENT, Reason.ADAPTER_BATCHNORM_INVALID, "running_var"),
        (_edited(birds, _other_core), Code.FAILED_PRECONDITION, Reason.ADAPTER_CORE_MISMATCH, "000000000000"),
        (make_adapter(tmp_path / "x.safetensors", other_core, "birds").read_bytes(), Code.FAILED_PRECONDITION,
         Reason.ADAPTER_CORE_MISMATCH, "trained against core"),
        (b"not a safetensors file at all", Code.INVALID_ARGUMENT, Reason.ADAPTER_NOT_SAFETENSORS, "safetensors"),
        (b"", Code.INVALID_ARGUMENT, Reason.ADAPTER_MISSING, "empty"),
    ]
    for data, code, reason, needle in cases:
        exc = fails(register, pb.RegisterAdapterRequest(category="birds", version="v1", data=data))
        info, bad = details(exc)
        assert (exc.code(), info.reason, needle in exc.details()) == (code, reason.value, True), exc.details()
        assert bad.field_violations[0].field in ("adapter", "data")
    exc = fails(register, pb.RegisterAdapterRequest(category="birds", version="v1", path="/etc/passwd"))
    info, bad = details(exc)
    assert (exc.code(), info.reason) == (Code.PERMISSION_DENIED, Reason.PATH_NOT_ALLOWED.value)
    assert bad.field_violations[0].field == "path"
    # registering the same version with other content
    register(pb.RegisterAdapterRequest(category="birds", version="v1", data=birds.read_bytes()), timeout=30)
    exc = fails(register, pb.RegisterAdapterRequest(category="birds", version="v1",
                                                    data=artifacts.extra["birds-v2"].read_bytes()))
    info, _ = details(exc)
    assert (exc.code(), info.reason) == (Code.ALREADY_EXISTS, Reason.VERSION_EXISTS.value)
    assert dict(info.metadata) == {"category": "birds", "version": "v1"}


def test_token_refusals_carry_reasons(store, tmp_path):
    server = start_server(store, admin_token="a" * 32, inference_token="i" * 32)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            detect = pb_grpc.LandmarkServiceStub(channel).Detect
            listing = pb_grpc.AdminServiceStub(channel).ListCategories
            for call, request, token, code, reason in (
                (detect, _detect(), None, Code.UNAUTHENTICATED, Reason.TOKEN_MISSING),
                (detect, _detect(), "x" * 32, Code.UNAUTHENTICATED, Reason.TOKEN_INVALID),
                (listing, pb.ListCategoriesRequest(), "i" * 32, Code.PERMISSION_DENIED, Reason.ADMIN_TOKEN_REQUIRED),
            ):
                exc = fails(call, request, None if token is None else [("authorization", f"Bearer {token}")])
                info, bad = details(exc)
                assert (exc.code(), info.reason, bad) == (code, reason.value, None)
    finally:
        server.shutdown(grace=0)


def test_http_errors_carry_the_same_details(store):
    server = start_server(store, http_port=0, max_message_bytes=64 << 10)
    base = f"http://127.0.0.1:{server.http_port}"

    def post(path, data, headers=None):
        request = urllib.request.Request(base + path, data=data, headers=headers or {}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        return caught.value.code, json.loads(caught.value.read())

    try:
        status, body = post("/v1/detect?category=cats", b"GIF89a not really")
        assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
        info, bad = body["details"]
        assert info == {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IMAGE_UNDECODABLE",
                        "domain": "landmarks.v1"}
        assert bad["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        assert bad["fieldViolations"][0]["field"] == "image.encoded"
        assert body["message"].startswith("image.encoded: ")

        status, body = post("/v1/detect?category=nope", png_bytes())
        assert status == 404 and body["details"][0]["reason"] == "CATEGORY_NOT_FOUND"
        assert body["details"][0]["metadata"] == {"category": "nope"}

        status, body = post("/v1/detect?category=cats&box=1,2,3", png_bytes())
        assert status == 400 and body["details"][1]["fieldViolations"][0]["field"] == "box"

        status, body = post("/v1/detect?category=cats", png_bytes(), {"X-Server-Timeout": "-1"})
        assert status == 400 and body["details"][0]["reason"] == "REQUEST_INVALID"
        assert body["details"][1]["fieldViolations"][0]["field"] == "x-server-timeout"

        status, body = post("/v1/detect?category=cats", b"\0" * (65 << 10))
        assert status == 413 and body["details"][0]["reason"] == "BODY_TOO_LARGE"
    finally:
        server.shutdown(grace=0)


def test_reasons_are_defined_once_and_stable():
    assert all(r.value == r.name for r in Reason)
    assert len({r.value for r in Reason}) == len(Reason)
    # a ServingError without a field has no BadRequest; a transient one names no field violation
    assert len(ServingError(Code.NOT_FOUND, Reason.CATEGORY_NOT_FOUND, "x").status().details) == 1
    transient = ServingError(Code.UNAVAILABLE, Reason.CATEGORY_UNAVAILABLE, "loading", field="category")
    assert len(transient.status().details) == 1 and transient.message == "category: loading"


def test_the_servicer_boundary_turns_only_bugs_into_internal(caplog):
    """`grpc_handler`: a ServingError reaches the client as itself; any other exception is a bug, logged
    with its traceback under the servicer's module and answered INTERNAL naming the method."""
    from serving.errors import grpc_handler

    class Aborted(Exception):
        pass

    class Context:
        def abort_with_status(self, status):
            self.status = status
            raise Aborted

    class Servicer:
        @grpc_handler
        def Detect(self, request, context):
            if request == "bad":
                raise ServingError(Code.NOT_FOUND, Reason.CATEGORY_NOT_FOUND, "no such category", field="category")
            if request == "bug":
                raise KeyError("oops")
            return "answer"

    context = Context()
    assert Servicer().Detect("good", context) == "answer"
    with pytest.raises(Aborted):
        Servicer().Detect("bad", context)
    assert context.status.code == Code.NOT_FOUND and "no such category" in context.status.details
    with caplog.at_level("ERROR"), pytest.raises(Aborted):
        Servicer().Detect("bug", context)
    assert context.status.code == Code.INTERNAL and "internal error in Detect" in context.status.details
    record = next(r for r in caplog.records if r.message == "Detect failed")
    assert record.name == __name__ and record.exc_info[0] is KeyError


def test_renumber_moves_a_sub_batch_error_to_the_clients_index():
    """serve-ray sends each category's items as a sub-batch: its item 0 may be the client's item 3."""
    from serving.errors import ItemError

    cause = ServingError(Code.INVALID_ARGUMENT, Reason.IMAGE_UNDECODABLE, "not an image", field="image.encoded")
    status = renumber(ItemError(0, cause).for_batch().status(), 3, 0)
    assert status.message == "requests[3].image.encoded: not an image"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status.details[0].Unpack(info)
    status.details[1].Unpack(bad)
    assert info.metadata["index"] == "3" and bad.field_violations[0].field == "requests[3].image.encoded"
    # an error about the whole sub-batch (its category, when folding) goes to its first item
    whole = ServingError(Code.NOT_FOUND, Reason.CATEGORY_NOT_FOUND, "no adapter", field="category").status()
    assert renumber(whole, 5, None).message == "requests[5].category: no adapter"


def test_metrics_and_services_import_no_circle():
    """The static import graph of serving/ (imports inside functions and TYPE_CHECKING blocks too) has no
    cycle through serving.metrics."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "serving").glob("*.py"):
        name = f"serving.{path.stem}"
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serving."):
                graph[name].add(node.module)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name.startswith("serving.")}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            here = todo.pop()
            for nxt in graph.get(here, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert not reaches("serving.metrics", "serving.metrics")
    assert not reaches("serving.metrics", "serving.services")


def _reflect(channel: grpc.Channel, service: str, request: reflection_pb2.ServerReflectionRequest):
    """One reflection request through `service` (v1 or v1alpha: the messages are the same on the wire)."""
    call = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return next(iter(call(iter([request]), timeout=30)))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(server, version):
    service = f"grpc.reflection.{version}.ServerReflection"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        listed = _reflect(channel, service, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"landmarks.v1.LandmarkService", "landmarks.v1.AdminService", "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
        for symbol in ("landmarks.v1.LandmarkService", service):
            reply = _reflect(channel, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                     for b in reply.file_descriptor_response.file_descriptor_proto]
            assert any(symbol.rsplit(".", 1)[1] in {s.name for s in f.service} for f in files), reply
    if version == "v1alpha":  # grpcio-reflection's own client, too
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert "landmarks.v1.LandmarkService" in ProtoReflectionDescriptorDatabase(channel).get_services()


def test_the_python_client_reads_the_details(client):
    from landmarks.client import error_details

    with pytest.raises(grpc.RpcError) as caught:
        client.detect_batch([png_bytes(), b"not an image"], "cats")
    details = error_details(caught.value)
    assert (details.reason, details.domain, details.index) == ("IMAGE_UNDECODABLE", "landmarks.v1", 1)
    assert details.fields[0][0] == "requests[1].image.encoded"
