"""Errors of the HTTP facade: one JSON shape, status codes mapped once.

Every error answer is ``{"error": {"code", "message", "field", "reason"}}``. The project's typed errors
(:mod:`glimpse3d.core.errors`) go through the same mapping as the gRPC API
(:func:`glimpse3d.core.rpc.errors.to_rpc_status`): the canonical code becomes ``code``, the error's
field ``field``; anything else becomes INTERNAL with a generic message and a reference id (the
traceback is logged, never sent). The canonical code picks the HTTP status as Google's HTTP/JSON
mapping does, except FAILED_PRECONDITION, which is 409 here (the resource is in the wrong state).

Request-shape errors found by FastAPI (a missing query parameter, a JSON body that does not parse
or does not match its schema) are INVALID_ARGUMENT with status 400 and name the field as a dotted
path (``camera.position``), never FastAPI's 422 shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.rpc.errors import MAX_FIELD_BYTES, MAX_MESSAGE_BYTES, clip, reason_and_field, to_rpc_status
from glimpse3d.gateway.http.mapping import code_name
from glimpse3d.gateway.http.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}
# Status codes of the HTTP layer itself (routing, body parsing) -> canonical code names.
_CODE_OF_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "UNIMPLEMENTED", 409: "ABORTED", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


class PayloadTooLarge(InvalidInput):
    """The upload is larger than the limit (HTTP 413); INVALID_ARGUMENT like any bad input."""

    reason = "PAYLOAD_TOO_LARGE"
    http_status = 413


class UnsupportedMediaType(InvalidInput):
    """The upload is not one of the accepted formats (HTTP 415)."""

    reason = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


def error_json(status: int, code: str, message: str, field: str | None = None, reason: str = "",
               headers: dict[str, str] | None = None) -> JSONResponse:
    # the same caps as a gRPC status: request paths and unknown JSON keys come back in messages and fields
    body = ErrorResponse(error=ErrorDetail(code=code, message=clip(message, MAX_MESSAGE_BYTES),
                                           field=None if field is None else clip(field, MAX_FIELD_BYTES),
                                           reason=reason or code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_response(exc: BaseException, request: Request | None = None) -> JSONResponse:
    """The answer for an exception raised while serving ``request`` (see the module docstring)."""
    method = f"HTTP {request.method} {request.url.path}" if request is not None else "HTTP"
    status = to_rpc_status(exc, method=method)  # logs unexpected errors with a reference id
    reason, field = reason_and_field(status)
    code = code_name(status.code)
    http_status = getattr(exc, "http_status", None) or HTTP_STATUS.get(code, 500)
    headers = {"Retry-After": "1"} if http_status in (429, 503) else None
    if http_status == 401:  # RFC 9110 section 11.6.1: a 401 names the scheme to authenticate with
        headers = {"WWW-Authenticate": 'Bearer realm="glimpse3d"'}
    return error_json(http_status, code, status.message, field, reason, headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    """FastAPI's error location -> ``camera.position[1]`` (the part after body/query/path/header)."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else list(loc)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    if not path and loc:
        return str(loc[0])
    return path


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_json(400, "INVALID_ARGUMENT", "the request is malformed", None, "INVALID_INPUT")
    first = errors[0]
    field = _field_path(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        field = "body"
    messages = []
    for error in errors:
        path = "body" if error.get("type") == "json_invalid" else _field_path(tuple(error.get("loc", ())))
        messages.append(f"{path}: {error.get('msg', 'invalid')}")
    return error_json(400, "INVALID_ARGUMENT", "; ".join(messages), field, "INVALID_INPUT")


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_OF_STATUS.get(exc.status_code, "UNKNOWN" if exc.status_code >= 500 else "INVALID_ARGUMENT")
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    else:
        message = str(exc.detail)
    return error_json(exc.status_code, code, message, "body" if exc.status_code == 400 else None, code,
                      dict(exc.headers) if exc.headers else None)
