"""Tokens for the two planes: inference (LandmarkService) and admin (AdminService).

Clients send `authorization: Bearer <token>` metadata. A plane with no token configured is
open (the server binds to localhost by default). Codes:

    no authorization metadata on a protected plane         UNAUTHENTICATED
    a token that is neither configured token               UNAUTHENTICATED
    the inference token on an admin call                   PERMISSION_DENIED
    the admin token on an inference call                   allowed (admin is a superset)
    any call to AdminService when it is disabled           UNIMPLEMENTED (service not served)

Health and reflection are never protected (load balancers, grpcurl). The HTTP plane
(serving.http_api) applies the same rules to its `Authorization` header (`authorize`).
"""

from __future__ import annotations

import hmac

import grpc

from landmarks.tokens import read_token  # re-exported: the server reads its tokens too
from serving.errors import Reason, ServingError

__all__ = ["TokenInterceptor", "authorize", "bearer", "metadata_token", "read_token"]

ADMIN_PREFIXES = ("/landmarks.v1.AdminService/", "/landmarks.v1.AdaptationService/")  # the admin plane
INFERENCE_PREFIX = "/landmarks.v1.LandmarkService/"


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def _deny(refusal: ServingError, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind (unary or streaming) that refuses the call."""
    def abort(request, context):
        refusal.abort(context)

    def abort_stream(request, context):
        refusal.abort(context)
        yield  # pragma: no cover  (a generator: a server-streaming handler)

    streams_in = handler is not None and handler.request_streaming
    streams_out = handler is not None and handler.response_streaming
    if streams_in and streams_out:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if streams_in:
        return grpc.stream_unary_rpc_method_handler(abort)
    if streams_out:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


def bearer(value: str | None) -> str | None:
    """The token in an `authorization` value ("Bearer <token>", or the bare token); None if absent."""
    if value is None:
        return None
    return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()


def metadata_token(metadata) -> str | None:
    """The bearer token in gRPC metadata ((key, value) pairs; the last `authorization` wins), or None.
    The server's interceptor and serve-ray's ingress both read it here."""
    given = None
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            given = bearer(value)
    return given


def authorize(plane: str, given: str | None, admin_token: str | None,
              inference_token: str | None) -> ServingError | None:
    """None if a call to `plane` ("admin" or "inference") with token `given` may proceed, else the
    error to refuse it with (the table above). The gRPC interceptor and the HTTP plane
    (serving.http_api) both ask this."""
    required = admin_token if plane == "admin" else inference_token
    if required is None:
        return None
    if given is None:
        why = f"the {plane} service needs a token: send 'authorization: Bearer <token>' (gRPC metadata or HTTP header)"
        return ServingError(grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_MISSING, why)
    if _same(given, required) or (plane == "inference" and _same(given, admin_token)):
        return None
    if plane == "admin" and _same(given, inference_token):
        return ServingError(grpc.StatusCode.PERMISSION_DENIED, Reason.ADMIN_TOKEN_REQUIRED,
                            "this is the inference token; admin calls need the admin token")
    return ServingError(grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_INVALID, f"wrong token for the {plane} service")


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, admin_token: str | None, inference_token: str | None) -> None:
        self.admin_token = admin_token
        self.inference_token = inference_token

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(ADMIN_PREFIXES):
            plane = "admin"
        elif method.startswith(INFERENCE_PREFIX):
            plane = "inference"
        else:
            return continuation(handler_call_details)
        refusal = authorize(plane, metadata_token(handler_call_details.invocation_metadata), self.admin_token,
                            self.inference_token)
        if refusal is None:
            return continuation(handler_call_details)
        return _deny(refusal, continuation(handler_call_details))
