"""Typed domain errors, raised by plain-Python code and mapped to gRPC status codes in one place
(:mod:`glimpse3d.core.rpc.errors`).

Every message names the offending field and, where it helps, the value it had.
"""

from __future__ import annotations

from collections.abc import Mapping


class Glimpse3DError(Exception):
    """Base class. ``reason`` is a stable UPPER_SNAKE identifier (google.rpc.ErrorInfo.reason)."""

    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.metadata = dict(metadata or {})


class InvalidInput(Glimpse3DError):
    """The caller sent something malformed: wrong shape, non-finite value, bad file, bad enum."""

    reason = "INVALID_INPUT"


class NotFound(Glimpse3DError):
    """A named resource (job, version, artifact) does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(Glimpse3DError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(Glimpse3DError):
    """The request is well formed but the resource is in the wrong state (e.g. enhancing a failed job)."""

    reason = "FAILED_PRECONDITION"


class RoundRejected(FailedPrecondition):
    """An enhancement round that would have made the model worse against the photo; nothing changed."""

    reason = "ROUND_REJECTED"


class NotReady(Glimpse3DError):
    """The backend has not finished loading; the caller may retry later."""

    reason = "NOT_READY"


class Overloaded(Glimpse3DError):
    """A bounded queue is full; the caller should back off."""

    reason = "OVERLOADED"


class Cancelled(Glimpse3DError):
    reason = "CANCELLED"


class DeadlineExceeded(Glimpse3DError):
    reason = "DEADLINE_EXCEEDED"


class IntegrityError(Glimpse3DError):
    """Stored bytes do not match their recorded sha256: data corruption, never the caller's fault."""

    reason = "INTEGRITY"


class Unauthenticated(Glimpse3DError):
    """The call carries no valid credentials (missing, malformed, expired or unverifiable)."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(Glimpse3DError):
    """The caller is authenticated but may not do this (e.g. it names another tenant)."""

    reason = "PERMISSION_DENIED"


class Unavailable(Glimpse3DError):
    """A dependency (artifact store, downstream service) cannot be reached right now."""

    reason = "UNAVAILABLE"


SHORT_VALUE_CHARS = 80


def shorten(value: object, limit: int = SHORT_VALUE_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (``...`` and the original length mark a cut),
    for echoing what a caller sent in an error message: a 100 KB name must not become a 100 KB status."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an int with more digits than Python converts to text
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    suffix = f"... ({size} chars)"
    return text[: max(0, limit - len(suffix))] + suffix
