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


class Unavailable(Glimpse3DError):
    """A dependency (artifact store, downstream service) cannot be reached right now."""

    reason = "UNAVAILABLE"
