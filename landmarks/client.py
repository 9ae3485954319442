"""A small Python client for the landmarks server.

    from landmarks.client import LandmarkClient
    with LandmarkClient("localhost:50051") as client:
        result = client.detect("photo.jpg", category="faces")       # path, bytes, PIL image or HxWxC uint8 array
        for x, y, conf in result.points: ...
        client.register("cats", "v2", "cats-v2.safetensors")
        client.activate("cats", "v1")                                 # roll back
        job = client.start_adaptation("mugs", ["photos.zip"])        # train a new category in the server
        for state in client.watch_adaptation(job.id): print(state.step, state.steps)
        print(client.categories())

Errors arrive as `grpc.RpcError` (`.code()`, `.details()`).

TLS and tokens: `LandmarkClient(target, tls_ca="ca.pem", token=..., admin_token=...)`; the
inference token goes with Detect calls, the admin token with admin calls (the server checks them:
serving/auth.py; `landmarks.tokens.read_token` reads one from a file or the environment).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc

__all__ = ["DetectResult", "ErrorDetails", "LandmarkClient", "error_details", "image_message"]


@dataclass
class DetectResult:
    points: list[tuple[float, float, float]]  # (x, y, confidence) per landmark, image pixels
    names: list[str]
    category: str
    version: str
    adapter_sha256: str
    box: tuple[float, float, float, float]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, r: pb.DetectResponse) -> DetectResult:
        return cls(
            points=[(m.x, m.y, m.confidence) for m in r.landmarks],
            names=[m.name for m in r.landmarks],
            category=r.category, version=r.version, adapter_sha256=r.adapter_sha256,
            box=(r.box.x0, r.box.y0, r.box.x1, r.box.y1),
            timings={"decode_ms": r.timings.decode_ms, "queue_ms": r.timings.queue_ms,
                     "compute_ms": r.timings.compute_ms, "total_ms": r.timings.total_ms},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category, "version": self.version, "adapter_sha256": self.adapter_sha256,
            "box": list(self.box),
            "landmarks": [{"name": n, "x": x, "y": y, "confidence": c} for (x, y, c), n in zip(self.points, self.names)],
            "timings": self.timings,
        }


@dataclass
class ErrorDetails:
    """A failed call's google.rpc.Status details (see the .proto's notes on errors)."""

    reason: str = ""                    # ErrorInfo.reason, e.g. "IMAGE_UNDECODABLE"
    domain: str = ""                    # "landmarks.v1"
    metadata: dict[str, str] = field(default_factory=dict)  # "index" of a DetectBatch item, "category", ...
    fields: list[tuple[str, str]] = field(default_factory=list)  # BadRequest: (field path, description)

    @property
    def index(self) -> int | None:
        """The DetectBatch item the error is about."""
        return int(self.metadata["index"]) if self.metadata.get("index", "").isdigit() else None


def error_details(exc: grpc.RpcError) -> ErrorDetails:
    """The structured details of a failed call (empty if it carries none, e.g. from a proxy)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    out = ErrorDetails()
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.fields = [(v.field, v.description) for v in bad.field_violations]
    return out


def image_message(image: Any) -> pb.Image:
    """A path, encoded bytes, a PIL image or an H x W (x C) uint8 numpy array -> `Image`."""
    if isinstance(image, (str, Path)):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(image))
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return pb.Image(encoded=buf.getvalue())
    if hasattr(image, "shape") and hasattr(image, "tobytes"):  # numpy
        shape = tuple(image.shape)
        h, w, c = (shape[0], shape[1], 1) if len(shape) == 2 else shape
        return pb.Image(raw=pb.RawImage(pixels=image.astype("uint8").tobytes(), height=h, width=w, channels=c))
    raise TypeError(f"cannot send {type(image).__name__} as an image")


def _box(box: Sequence[float] | None) -> pb.Box | None:
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return pb.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def _pem(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class LandmarkClient:
    def __init__(self, target: str = "localhost:50051", timeout: float | None = 30.0,
                 channel: grpc.Channel | None = None, max_message_bytes: int = 64 << 20, *,
                 tls: bool = False, tls_ca: str | Path | bytes | None = None,
                 tls_cert: str | Path | bytes | None = None, tls_key: str | Path | bytes | None = None,
                 token: str | None = None, admin_token: str | None = None) -> None:
        """`tls` (implied by any tls_* argument): verify the server with `tls_ca` (default: the
        system's roots); `tls_cert`/`tls_key`: a client certificate for mutual TLS."""
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if channel is None:
            if tls or tls_ca is not None or tls_cert is not None:
                creds = grpc.ssl_channel_credentials(_pem(tls_ca), _pem(tls_key), _pem(tls_cert))
                channel = grpc.secure_channel(target, creds, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
        self.channel = channel
        self.timeout = timeout
        self._inference_md = (("authorization", f"Bearer {token}"),) if token else None
        self._admin_md = (("authorization", f"Bearer {admin_token}"),) if admin_token else None
        self.inference = pb_grpc.LandmarkServiceStub(self.channel)
        self.admin = pb_grpc.AdminServiceStub(self.channel)
        self.adaptation = pb_grpc.AdaptationServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> LandmarkClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------- inference
    @staticmethod
    def request(image: Any, category: str, box: Sequence[float] | None = None, version: str = "") -> pb.DetectRequest:
        req = pb.DetectRequest(image=image_message(image), category=category, version=version)
        if box is not None:
            req.box.CopyFrom(_box(box))
        return req

    def detect(self, image: Any, category: str, box: Sequence[float] | None = None, version: str = "") -> DetectResult:
        return DetectResult.from_proto(self.inference.Detect(self.request(image, category, box, version),
                                                             timeout=self.timeout, metadata=self._inference_md))

    def detect_batch(self, images: Sequence[Any], category: str | Sequence[str],
                     boxes: Sequence[Sequence[float] | None] | None = None) -> list[DetectResult]:
        cats = [category] * len(images) if isinstance(category, str) else list(category)
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        reqs = [self.request(img, c, b) for img, c, b in zip(images, cats, boxes)]
        reply = self.inference.DetectBatch(pb.DetectBatchRequest(requests=reqs), timeout=self.timeout,
                                           metadata=self._inference_md)
        return [DetectResult.from_proto(r) for r in reply.responses]

    # ----------------------------------------------------------------------------- admin
    def register(self, category: str, version: str, adapter: str | Path | bytes, activate: bool = True,
                 server_path: bool = False) -> pb.RegisterAdapterResponse:
        """Send the adapter file's bytes (or, with server_path, a path the server may read)."""
        req = pb.RegisterAdapterRequest(category=category, version=version, activate=activate)
        if server_path:
            req.path = str(adapter)
        else:
            req.data = adapter if isinstance(adapter, bytes) else Path(adapter).read_bytes()
        return self.admin.RegisterAdapter(req, timeout=self.timeout, metadata=self._admin_md)

    def activate(self, category: str, version: str) -> pb.CategoryInfo:
        return self.admin.SetActiveVersion(pb.SetActiveVersionRequest(category=category, version=version),
                                           timeout=self.timeout, metadata=self._admin_md)

    def unregister(self, category: str, version: str = "") -> list[str]:
        reply = self.admin.UnregisterAdapter(pb.UnregisterAdapterRequest(category=category, version=version),
                                             timeout=self.timeout, metadata=self._admin_md)
        return list(reply.removed_versions)

    def categories(self) -> list[pb.CategoryInfo]:
        return list(self.admin.ListCategories(pb.ListCategoriesRequest(), timeout=self.timeout,
                                              metadata=self._admin_md).categories)

    def server_info(self) -> pb.ServerInfoResponse:
        return self.admin.ServerInfo(pb.ServerInfoRequest(), timeout=self.timeout, metadata=self._admin_md)

    # ---------------------------------------------------------------- adaptation jobs (admin token)
    def start_adaptation(self, category: str, images: Sequence[str | Path | tuple[str, bytes]], *,
                         preset: str = "", steps: int = 0, activate: bool = False, num_landmarks: int = 0,
                         names: str = "", image_size: int = 0, path: str = "",
                         chunk_bytes: int = 1 << 20) -> pb.AdaptationJob:
        """Start a job that trains `category` from `images` (image files or .zip files: paths, or
        (name, bytes) pairs), sent in chunks, and/or from `path`, a folder on the server inside its
        --allow-path; returns the queued job (`watch_adaptation` follows it)."""
        options = pb.AdaptationOptions(category=category, preset=preset, steps=steps, activate=activate,
                                       num_landmarks=num_landmarks, names=names, image_size=image_size,
                                       path=path)

        def messages():
            yield pb.StartAdaptationRequest(options=options)
            for item in images:
                name, data = (item[0], item[1]) if isinstance(item, tuple) else (Path(item).name, Path(item).read_bytes())
                for start in range(0, max(1, len(data)), chunk_bytes):
                    yield pb.StartAdaptationRequest(chunk=pb.FileChunk(name=name if start == 0 else "",
                                                                       data=data[start:start + chunk_bytes]))

        return self.adaptation.StartAdaptation(messages(), timeout=self.timeout, metadata=self._admin_md)

    def adaptation_job(self, job_id: str) -> pb.AdaptationJob:
        return self.adaptation.GetAdaptation(pb.GetAdaptationRequest(id=job_id), timeout=self.timeout,
                                             metadata=self._admin_md)

    def adaptation_jobs(self) -> list[pb.AdaptationJob]:
        return list(self.adaptation.ListAdaptations(pb.ListAdaptationsRequest(), timeout=self.timeout,
                                                    metadata=self._admin_md).jobs)

    def watch_adaptation(self, job_id: str, timeout: float | None = None):
        """The job now and at each change until it ends (a stream: iterate it; no deadline by default)."""
        return self.adaptation.WatchAdaptation(pb.GetAdaptationRequest(id=job_id), timeout=timeout,
                                               metadata=self._admin_md)

    def cancel_adaptation(self, job_id: str) -> pb.AdaptationJob:
        return self.adaptation.CancelAdaptation(pb.CancelAdaptationRequest(id=job_id), timeout=self.timeout,
                                                metadata=self._admin_md)

    def health_status(self, service: str = "") -> str:
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
