"""HTTP/JSON next to gRPC, in the same process and on the same services (`landmarks serve --http-port N`).

    POST /v1/detect?category=cats[&version=v1][&box=x0,y0,x1,y1]   body: the image's bytes
    POST /v1/detect          multipart/form-data: image (file), category, version, box
    GET  /v1/categories      what is served: names, K, landmark names, versions
    GET  /v1/health          200 SERVING / 503 NOT_SERVING (never needs a token)
    GET  /openapi.json       the OpenAPI description of all of it
    GET  /                   the demo page (serving/static/demo.html)
    /v1/adaptations...       adaptation jobs, admin plane (serving.http_adaptations)

A detect goes where a gRPC Detect goes: the body becomes a `DetectQuery` and runs through the same
call helper (`serving.calls.DetectCalls`), so validation, messages, batching, metrics and the
numbers are the gRPC plane's. So do its deadline and cancellation: the `X-Server-Timeout`
header (seconds, as Google's HTTP APIs take it) is the gRPC deadline (504 once it passes, and a
queued request past it is never computed), and a client that disconnects cancels its request as a
gRPC client's cancel does (`_ClientGone`). A `ServingError` answers with its gRPC code mapped to an HTTP
status (`HTTP_STATUS`: 400, 404, 429, 503, ...) and the gRPC status as JSON: {"code": "INVALID_ARGUMENT",
"message": ..., "details": [ErrorInfo, BadRequest]} (serving.errors); a body over --max-message-mb
answers 413 before it is read.
Tokens: `Authorization: Bearer <token>`, checked as gRPC checks its metadata (`serving.auth.authorize`;
the detect and categories endpoints are the inference plane). TLS: the gRPC plane's files.
This module imports FastAPI: `serving.server` imports it only for --http-port.

Why FastAPI on uvicorn: both are widely used and actively maintained, FastAPI writes the OpenAPI
description from the handlers' signatures and models, and uvicorn runs in a thread of the gRPC
server's process with our own listening socket (bound in `build_server`, so a port in use fails
at once and port 0 is known), TLS, and a bounded graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import threading
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import grpc
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from google.rpc import error_details_pb2
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from landmarks import __version__
from serving.auth import authorize, bearer
from serving.calls import DetectCalls
from serving.errors import Reason, ServingError, clip, status_json
from serving.http_adaptations import add_adaptation_routes
from serving.inputs import RequestLimits
from serving.precision import precision_of
from serving.query import DetectQuery

if TYPE_CHECKING:
    from serving.adaptations import Adaptations
    from serving.config import ServerConfig
    from serving.metrics import Metrics
    from serving.services import Lifecycle

__all__ = ["HTTP_STATUS", "HttpPlane", "build_app", "http_status"]

log = logging.getLogger(__name__)
Code = grpc.StatusCode

# gRPC code -> HTTP status, as google.rpc.Code documents them (and grpc-gateway maps them)
HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


# reasons whose HTTP status says more than their gRPC code's
REASON_STATUS = {Reason.ADAPTATION_UNAVAILABLE: 501, Reason.UPLOAD_TOO_LARGE: 413}


def http_status(code: grpc.StatusCode, reason: Reason | None = None) -> int:
    return REASON_STATUS.get(reason, HTTP_STATUS.get(code, 500))  # type: ignore[arg-type]


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a body over `limit` bytes answers 413, by its Content-Length before a byte is
    read, or as soon as a chunked body passes the limit (the gRPC port's message limit, kept here).
    `paths` gives some paths a limit of their own (an adaptation job's upload)."""

    def __init__(self, app, limit: int, paths: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.paths.get(scope.get("path", ""), self.limit)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_error(send, 413, _too_large(self._message(int(length), limit)))
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(self._message(received, limit))
            return message

        return await self.app(scope, limited, send)

    def _message(self, size: int, limit: int) -> str:
        if limit != self.limit:
            return (f"request body is {size} bytes, over this server's limit of {limit} bytes for an upload "
                    "(--max-adaptation-upload-mb); send fewer or smaller images")
        return (f"request body is {size} bytes, over this server's limit of {limit} bytes "
                "(--max-message-mb); downscale the image before sending")


def _too_large(message: str) -> ServingError:
    return ServingError(Code.RESOURCE_EXHAUSTED, Reason.BODY_TOO_LARGE, message)


async def _send_error(send, status: int, error: ServingError) -> None:
    import json

    body = json.dumps(status_json(error.status())).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _ClientGone:
    """gRPC's `context.add_callback` for an HTTP request: `watch` waits on the event loop for the
    client to disconnect, then runs the callbacks the batcher registered (a request not computed yet
    is dropped); one registered after that runs at once (add_callback answers False)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list = []
        self._gone = False

    def add_callback(self, callback) -> bool:
        with self._lock:
            if not self._gone:
                self._callbacks.append(callback)
            return not self._gone

    async def watch(self, request: Request) -> None:
        # the body has been read: what the server receives next is the disconnect (uvicorn also sends
        # it once the response is complete, by when this task has been cancelled)
        while (await request.receive())["type"] != "http.disconnect":
            pass
        with self._lock:
            self._gone, callbacks, self._callbacks = True, self._callbacks, []
        for callback in callbacks:
            callback()


def _parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None or not text.strip():
        return None
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ServingError(Code.INVALID_ARGUMENT, Reason.BOX_INVALID,
                           f"expected four numbers x0,y0,x1,y1, got {clip(text)}", field="box")
    return values  # type: ignore[return-value]


def _detect_query(data: bytes, category: str, version: str, box: str | None) -> DetectQuery:
    return DetectQuery(category, version, encoded=data, box=_parse_box(box))


def _detection_json(det, total_ms: float) -> dict[str, Any]:
    """The same fields as the gRPC DetectResponse (and `landmarks.client.DetectResult.to_dict`)."""
    return {
        "category": det.category, "version": det.version, "adapter_sha256": det.sha256,
        "box": [float(v) for v in det.box],
        "landmarks": [{"name": n, "x": float(p[0]), "y": float(p[1]), "confidence": float(c)}
                      for p, c, n in zip(det.points, det.confidence, det.names)],
        "timings": {"decode_ms": det.decode_ms, "queue_ms": det.queue_ms, "compute_ms": det.compute_ms,
                    "total_ms": total_ms},
    }


def _category_json(status, backend) -> dict[str, Any]:
    active = next((v for v in status.versions if v.version == status.active_version), None)
    names = active.adapter.landmark_names if active is not None and active.adapter is not None else []
    return {
        "name": status.name, "state": status.state, "num_landmarks": status.num_landmarks,
        "input_size": status.input_size, "active_version": status.active_version,
        "active_sha256": status.active_sha256, "landmark_names": names, "error": status.error,
        "versions": [{"version": v.version, "state": v.state, "sha256": v.sha256, "created": v.created,
                      **dict(zip(("precision", "precision_reason"),
                                 precision_of(backend, v.adapter) if v.adapter is not None else ("", "")))}
                     for v in sorted(status.versions, key=lambda v: (v.created, v.version))],
    }


# ------------------------------------------------------------ the JSON shapes (and OpenAPI schemas)
class Landmark(BaseModel):
    name: str
    x: float
    y: float
    confidence: float

class Timings(BaseModel):
    decode_ms: float
    queue_ms: float
    compute_ms: float
    total_ms: float

class Detection(BaseModel):
    category: str
    version: str
    adapter_sha256: str
    box: list[float]
    landmarks: list[Landmark]
    timings: Timings

class Version(BaseModel):
    version: str
    state: str
    sha256: str
    created: str
    precision: str  # the number format it runs in: fp32, bf16 or int8
    precision_reason: str  # why: the server's --precision, or under auto the calibration's check

class Category(BaseModel):
    name: str
    state: str
    num_landmarks: int
    input_size: int
    active_version: str
    active_sha256: str
    landmark_names: list[str]
    error: str
    versions: list[Version]

class Categories(BaseModel):
    categories: list[Category]

class Health(BaseModel):
    status: str
    message: str = ""

class Error(BaseModel):
    code: str  # the gRPC code's name
    message: str
    # google.rpc.ErrorInfo (reason, domain, metadata) and BadRequest (fieldViolations), each with its "@type"
    details: list[dict[str, Any]] = []


def build_app(lifecycle: Lifecycle, limits: RequestLimits, metrics: Metrics | None, *, admin_token: str | None,
              inference_token: str | None, max_body_bytes: int, adaptations: Adaptations | None = None):
    """The ASGI app (FastAPI, wrapped in the body limit)."""
    errors = {status: {"model": Error, "description": description} for status, description in (
        (400, "INVALID_ARGUMENT: a bad image, box, category or version name (the gRPC message; details: the "
              + "reason and the field)"),
        (401, "UNAUTHENTICATED: no token, or a wrong one"),
        (404, "NOT_FOUND: no such category or version"),
        (413, "the body is over --max-message-mb"),
        (429, "RESOURCE_EXHAUSTED: the batching queue is full; retry"),
        (503, "UNAVAILABLE: loading, shutting down, or the category is (un)loading; retry"),
    )}

    app = FastAPI(
        title="landmarks", version=__version__,
        description="Object landmarks from one frozen core and a small adapter per category (Sanchez & "
                    "Tzimiropoulos, NeurIPS 2019): the HTTP/JSON plane of `landmarks serve`; the gRPC plane "
                    "(protos/landmarks/v1/landmarks.proto) serves the same models with the same checks.",
        docs_url=None, redoc_url=None,  # their pages load scripts from a CDN; /openapi.json is the description
    )

    def inference_plane(authorization: str | None = Header(default=None, include_in_schema=False)) -> None:
        refusal = authorize("inference", bearer(authorization), admin_token, inference_token)
        if refusal is not None:
            raise refusal

    def admin_plane(authorization: str | None = Header(default=None, include_in_schema=False)) -> None:
        refusal = authorize("admin", bearer(authorization), admin_token, inference_token)
        if refusal is not None:
            raise refusal

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError):
        headers = {"retry-after": "1"} if exc.code in (Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE) else {}
        if exc.code == Code.UNAUTHENTICATED:
            headers["www-authenticate"] = "Bearer"
        return JSONResponse(status_json(exc.status()), status_code=http_status(exc.code, exc.reason), headers=headers)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, exc: _BodyTooLarge):
        return JSONResponse(status_json(_too_large(str(exc)).status()), status_code=413,
                            headers={"connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Starlette's own refusals (no such route, a broken multipart body) in the same shape as ours
        code = next((c for c, status in HTTP_STATUS.items() if status == exc.status_code), Code.UNKNOWN)
        error = ServingError(code, Reason.REQUEST_INVALID, str(exc.detail),
                             metadata={"http_status": str(exc.status_code)})
        return JSONResponse(status_json(error.status()), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # one field violation each, named as the client sent it: the query parameter or header
        problems = [(str(e["loc"][-1]) if e["loc"] else "request", e["msg"]) for e in exc.errors()]
        status = ServingError(Code.INVALID_ARGUMENT, Reason.REQUEST_INVALID,
                              "; ".join(f"{f}: {m}" for f, m in problems)).status()
        bad = error_details_pb2.BadRequest()
        for field, why in problems:
            bad.field_violations.add(field=field, description=why, reason=Reason.REQUEST_INVALID.value)
        status.details.add().Pack(bad)
        return JSONResponse(status_json(status), status_code=400)

    calls = DetectCalls(lifecycle, limits, metrics)

    def detect_blocking(query: DetectQuery, deadline: float | None, on_cancel) -> dict[str, Any]:
        try:
            (det,), t0 = calls.detect("HttpDetect", [query], deadline, on_cancel)
        except ServingError:
            raise
        except Exception:
            log.exception("HTTP detect failed")
            raise ServingError(Code.INTERNAL, Reason.INTERNAL, "internal error in detect; see the server log") from None
        return _detection_json(det, (time.perf_counter() - t0) * 1e3)

    @app.post(
        "/v1/detect", response_model=Detection, responses=errors, tags=["inference"],
        dependencies=[Depends(inference_plane)],
        summary="Landmarks of one image",
        description="Send the image's bytes (JPEG, PNG, WebP, BMP) as the body with the category in the query "
                    "(`curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' 'HOST/v1/detect?category=cats'`), "
                    "or a multipart form with the file in `image` and `category`, `version`, `box` as fields "
                    "(`curl -F image=@cat.jpg -F category=cats HOST/v1/detect`). Points are (x, y) in the "
                    "pixels of the image sent; `box` (x0,y0,x1,y1, edge coordinates) says where the object "
                    "is (default: the whole image).",
        openapi_extra={"requestBody": {"required": True, "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"}, "category": {"type": "string"},
                "version": {"type": "string"}, "box": {"type": "string", "example": "10,20,110,120"}}}},
        }}},
    )
    async def detect(request: Request,
                     category: str = Query("", description="e.g. faces, cats (a form field wins)"),
                     version: str = Query("", description="adapter version (default: the active one)"),
                     box: str | None = Query(None, description="x0,y0,x1,y1 in image pixels"),
                     x_server_timeout: float | None = Header(
                         None, gt=0, le=86400, description="seconds this request may take (as a gRPC deadline): "
                         "past it the answer is 504 DEADLINE_EXCEEDED, and a request still queued is dropped")):
        deadline = None if x_server_timeout is None else time.monotonic() + x_server_timeout
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=8)
            try:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise ServingError(Code.INVALID_ARGUMENT, Reason.IMAGE_MISSING,
                                       "missing; send the file in the form field 'image' (or the bytes as the "
                                       "request body)", field="image")
                data = await upload.read()
                category = str(form.get("category", category))
                version = str(form.get("version", version))
                box = str(form["box"]) if "box" in form else box
            finally:
                await form.close()
        else:
            data = await request.body()
        gone = _ClientGone()
        watcher = asyncio.get_running_loop().create_task(gone.watch(request))
        try:
            return await run_in_threadpool(detect_blocking, _detect_query(data, category, version, box), deadline,
                                           gone.add_callback)
        finally:
            watcher.cancel()

    @app.get("/v1/categories", response_model=Categories, responses={k: errors[k] for k in (401, 503)},
             tags=["inference"], dependencies=[Depends(inference_plane)],
             summary="The categories served, with their landmark names and versions")
    def categories():
        services = lifecycle.require()
        return {"categories": [_category_json(s, services.backend) for s in services.registry.list()]}

    @app.get("/v1/health", response_model=Health, responses={503: {"model": Health}}, tags=["health"],
             summary="SERVING once the core and adapters are loaded; NOT_SERVING while loading or draining")
    def health():
        if lifecycle.services is not None and not lifecycle.draining:
            return {"status": "SERVING"}
        why = ("shutting down" if lifecycle.draining else
               f"failed to load: {lifecycle.load_error}" if lifecycle.load_error else "loading the core")
        return JSONResponse({"status": "NOT_SERVING", "message": why}, status_code=503)

    add_adaptation_routes(app, adaptations, admin_plane, errors)

    page = resources.files("serving").joinpath("static/demo.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def demo_page():
        return HTMLResponse(page)

    uploads = {"/v1/adaptations": adaptations.limits.upload.max_upload_bytes + (1 << 20)} if adaptations else {}
    return _BodyLimit(app, max_body_bytes, uploads)


class HttpPlane:
    """The HTTP server of `landmarks serve --http-port`: bound at construction, served by uvicorn in a
    thread after `start`, stopped by `stop` (in-flight requests get `grace` seconds)."""

    def __init__(self, cfg: ServerConfig, lifecycle: Lifecycle, limits: RequestLimits, metrics: Metrics,
                 adaptations: Adaptations | None = None) -> None:
        import uvicorn

        app = build_app(lifecycle, limits, metrics, admin_token=cfg.admin_token, inference_token=cfg.inference_token,
                        max_body_bytes=cfg.max_message_bytes, adaptations=adaptations)
        self.tls = cfg.tls
        tls: dict[str, Any] = {}
        if cfg.tls:
            tls = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
            if cfg.tls_client_ca is not None:
                tls |= {"ssl_ca_certs": str(cfg.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self.config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                     timeout_graceful_shutdown=max(0.1, cfg.grace_s), timeout_keep_alive=5,
                                     server_header=False, **tls)
        try:
            self.config.load()  # reads the TLS files now: a bad one fails `landmarks serve` at start
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot read TLS files for the HTTP plane: {exc}") from None
        self.socket = _bind(cfg.host, cfg.http_port)  # type: ignore[arg-type]
        self.port: int = self.socket.getsockname()[1]
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="landmarks-http", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise OSError("the HTTP server did not start; see the log above")
            time.sleep(0.01)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (uvicorn's graceful shutdown), then return."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join((grace if grace is not None else self.config.timeout_graceful_shutdown or 0) + 5.0)
        self.socket.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port); OSError naming the address if it cannot."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot serve HTTP on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock
