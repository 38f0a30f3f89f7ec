"""The one place where Glimpse3D domain errors meet gRPC status codes (both directions).

Servers: :func:`to_rpc_status` turns any exception into a ``google.rpc.Status`` carrying a
``google.rpc.ErrorInfo`` (reason, domain ``glimpse3d.v1``, metadata) and, when the error names a
field, a ``google.rpc.BadRequest`` field violation (AIP-193). Exceptions that are not domain errors
become INTERNAL with a generic message and a reference id; their traceback is logged, never sent.

Clients: :func:`error_from_rpc` reads that rich status back into the original error type, message,
field and metadata, so that the gateway can re-raise a downstream error as if it were local.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from glimpse3d.core.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Glimpse3DError,
    IntegrityError,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "glimpse3d.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
INTERNAL_MESSAGE = "internal error"
# A status travels in trailing metadata: grpc-message (percent-encoded, so up to 3 bytes per byte of
# non-ASCII text) and grpc-status-details-bin (base64 of the Status, which repeats the message in a
# BadRequest). gRPC clients refuse metadata over 8 KiB by default (RESOURCE_EXHAUSTED instead of the
# real status); these caps keep the worst case near 4 KiB. Messages echo caller values through
# glimpse3d.core.errors.shorten, so real messages stay far below them.
MAX_MESSAGE_BYTES = 512
MAX_DESCRIPTION_BYTES = 256
MAX_FIELD_BYTES = 128
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_VALUE_BYTES = 128

logger = logging.getLogger(__name__)

# Order matters only for the reverse lookup by code: the first class listed for a code wins.
STATUS_CODES: dict[type[Glimpse3DError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Cancelled: grpc.StatusCode.CANCELLED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    IntegrityError: grpc.StatusCode.DATA_LOSS,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}
_BY_REASON = {cls.reason: cls for cls in STATUS_CODES}
_BY_CODE = {code: cls for cls, code in reversed(STATUS_CODES.items())}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# Messages for statuses that carry no Glimpse3D details (transport failures, foreign servers):
# grpc's own text can name addresses and internals, so it stays in the exception chain only.
_GENERIC_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "downstream service unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "downstream call exceeded its deadline",
    grpc.StatusCode.CANCELLED: "downstream call was cancelled",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "downstream resource exhausted",
}


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC code for ``error``; subclasses inherit their base's code, the rest is INTERNAL."""
    for klass in type(error).__mro__:
        code = STATUS_CODES.get(klass)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _holds(detail: any_pb2.Any, message_type: type[Message]) -> bool:
    """Whether ``detail`` packs a ``message_type`` (typeshed types ``DESCRIPTOR`` as the Python or the upb
    Descriptor, ``Any.Is`` as taking only the former)."""
    return detail.Is(cast(Descriptor, message_type.DESCRIPTOR))


def reason_and_field(status: status_pb2.Status) -> tuple[str, str | None]:
    """The ErrorInfo reason ("INTERNAL" when absent) and the first BadRequest field of ``status``."""
    reason, field = "INTERNAL", None
    for detail in status.details:
        if _holds(detail, error_details_pb2.ErrorInfo):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif _holds(detail, error_details_pb2.BadRequest):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else None
    return reason, field


def to_rpc_status(error: BaseException, *, method: str = "") -> status_pb2.Status:
    """Build the ``google.rpc.Status`` to send for ``error`` (logs unexpected errors)."""
    code = status_code_for(error)
    if code is grpc.StatusCode.INTERNAL or not isinstance(error, Glimpse3DError):
        ref = uuid.uuid4().hex[:12]
        logger.error(
            "unhandled error in %s (ref %s)", method or "rpc", ref, exc_info=error,
            extra={"method": method, "error_ref": ref},
        )
        info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN, metadata={"ref": ref})
        return status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"{INTERNAL_MESSAGE} (ref {ref})",
            details=[_pack(info)],
        )
    metadata = {clip(str(key), MAX_METADATA_KEY_BYTES): clip(str(value), MAX_METADATA_VALUE_BYTES)
                for key, value in list(error.metadata.items())[:MAX_METADATA_ENTRIES]}
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=clip(error.field, MAX_FIELD_BYTES), description=clip(error.message, MAX_DESCRIPTION_BYTES),
            reason=error.reason,
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    return status_pb2.Status(code=code.value[0], message=clip(error.message, MAX_MESSAGE_BYTES), details=details)


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8 (on a character boundary, ``...`` marking a cut)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."


def rich_status_of(err: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` in ``err``'s trailing metadata, or ``None`` if it has none."""
    # typeshed types the items as a key/value class; grpc's are (key, value) namedtuples (aio: tuples).
    trailing = cast("Iterable[tuple[str, str | bytes]] | None",
                    err.trailing_metadata() if hasattr(err, "trailing_metadata") else None)
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a foreign server sent bytes that are not a Status
                logger.warning("ignoring undecodable %s trailer", STATUS_DETAILS_KEY)
                return None
    return None


def _unpack_details(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo | None, str | None]:
    info: error_details_pb2.ErrorInfo | None = None
    field: str | None = None
    for detail in status.details:
        if _holds(detail, error_details_pb2.ErrorInfo):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif _holds(detail, error_details_pb2.BadRequest):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            if bad_request.field_violations:
                field = bad_request.field_violations[0].field
    return info, field


def _code_of(err: grpc.RpcError) -> grpc.StatusCode:
    code = err.code() if hasattr(err, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def error_from_rpc(err: grpc.RpcError) -> Glimpse3DError:
    """The domain error a failed call stands for; use as ``raise error_from_rpc(e) from e``.

    With Glimpse3D details the original class (by ErrorInfo reason, else by code), message, field
    and metadata come back; without them the class follows the code and the message is generic.
    Codes with no domain class (INTERNAL, UNKNOWN, ...) give a plain :class:`Glimpse3DError`, whose
    reason is INTERNAL, so re-raising it on a server answers INTERNAL again.
    """
    code = _code_of(err)
    status = rich_status_of(err)
    if status is None:
        cls = _BY_CODE.get(code, Glimpse3DError)
        return cls(_GENERIC_MESSAGES.get(code, f"downstream call failed ({code.name})"))
    code = _BY_NUMBER.get(status.code, code)
    info, field = _unpack_details(status)
    cls = _BY_CODE.get(code, Glimpse3DError)
    if info is not None and info.domain == DOMAIN and info.reason in _BY_REASON:
        cls = _BY_REASON[info.reason]
    error = cls(status.message, field=field, metadata=dict(info.metadata) if info else None)
    if info is not None and info.reason and info.reason != cls.reason:
        error.reason = info.reason  # keep a service-specific reason the client has no class for
    return error
