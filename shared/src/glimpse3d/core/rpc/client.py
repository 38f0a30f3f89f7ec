"""Channels from one Glimpse3D process to another.

:func:`create_channel` gives every call the same behaviour: UNAVAILABLE (the only code that says
"nothing happened, try again": connection refused, server draining, backend still loading) is
retried with exponential backoff by gRPC itself; every other code reaches the caller at once.
Calls that set no ``timeout`` get ``default_timeout_s``, so that no call can hang forever.

Channels are plaintext unless given TLS credentials (:mod:`glimpse3d.core.tls`): explicitly, or for
every channel created inside ``with channel_credentials(creds):`` (how the gateway gives its stage
channels its client certificate).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from glimpse3d.core.artifacts.base import TENANT_METADATA_KEY, current_tenant
from glimpse3d.core.config import DEFAULT_MAX_MESSAGE_BYTES

MAX_RETRY_ATTEMPTS = 5  # gRPC caps maxAttempts at 5
Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]
# The credentials of channels created without explicit ones (None: plaintext); see channel_credentials.
_CREDENTIALS: contextvars.ContextVar[grpc.ChannelCredentials | None] = contextvars.ContextVar(
    "glimpse3d_channel_credentials", default=None)


@contextlib.contextmanager
def channel_credentials(credentials: grpc.ChannelCredentials | None) -> Iterator[None]:
    """Inside the block, :func:`create_channel` without ``credentials`` uses these (None: plaintext)."""
    token = _CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        _CREDENTIALS.reset(token)


def retry_service_config(
    attempts: int,
    initial_backoff_s: float,
    max_backoff_s: float,
    *,
    codes: Sequence[str] = ("UNAVAILABLE",),
    wait_for_ready: bool = False,
    method: Mapping[str, str] | None = None,
) -> str:
    """The ``grpc.service_config`` JSON retrying ``codes`` (UNAVAILABLE) on every method of the channel,
    or only on ``method`` (``{"service": ..., "method": ...}``); ``wait_for_ready``: its calls wait for
    the server to be reachable (up to their deadline) instead of failing at once."""
    if not 2 <= attempts <= MAX_RETRY_ATTEMPTS:
        raise ValueError(f"retry attempts must be in 2..{MAX_RETRY_ATTEMPTS}, got {attempts}")
    if not 0.001 <= initial_backoff_s <= max_backoff_s:
        raise ValueError(
            f"backoff must satisfy 0.001 <= initial ({initial_backoff_s}) <= max ({max_backoff_s})"
        )
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": f"{initial_backoff_s:.9f}s",
        "maxBackoff": f"{max_backoff_s:.9f}s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": list(codes),
    }
    config: dict[str, Any] = {"name": [dict(method or {})], "retryPolicy": policy}
    if wait_for_ready:
        config["waitForReady"] = True
    return json.dumps({"methodConfig": [config]})


class _DefaultTimeout:
    """Gives ``timeout_s`` to every call that was made without a timeout."""

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"default timeout must be > 0, got {timeout_s}")
        self._timeout_s = timeout_s

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=self._timeout_s,
            metadata=details.metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files each interceptor under the first call kind it implements, so one class per kind.
class _UnaryUnaryTimeout(_DefaultTimeout, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_deadline(client_call_details), request)


class _UnaryStreamTimeout(_DefaultTimeout, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_deadline(client_call_details), request)


class _StreamUnaryTimeout(_DefaultTimeout, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Continuation, client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_deadline(client_call_details), request_iterator)


class _StreamStreamTimeout(_DefaultTimeout, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Continuation, client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_deadline(client_call_details), request_iterator)


class _UnaryUnaryTenant(grpc.aio.UnaryUnaryClientInterceptor):
    """Names the tenant of the enclosing ``tenant_scope`` (glimpse3d.core.artifacts) in the call's
    ``x-glimpse3d-tenant`` metadata, unless the call names one itself: how the gateway's stage calls
    carry their job's tenant to the services."""

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        tenant = current_tenant()
        metadata = list(client_call_details.metadata or ())
        if tenant is not None and not any(key == TENANT_METADATA_KEY for key, _ in metadata):
            client_call_details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=client_call_details.timeout,
                metadata=grpc.aio.Metadata(*metadata, (TENANT_METADATA_KEY, tenant)),
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


def default_timeout_interceptors(timeout_s: float) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors (one per call kind) giving ``timeout_s`` to calls made without one."""
    kinds = (_UnaryUnaryTimeout, _UnaryStreamTimeout, _StreamUnaryTimeout, _StreamStreamTimeout)
    return [kind(timeout_s) for kind in kinds]


def create_channel(
    target: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    retry_attempts: int = 4,
    initial_backoff_s: float = 0.1,
    max_backoff_s: float = 2.0,
    default_timeout_s: float | None = 30.0,
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` (``host:port``); call inside a running loop.

    ``retry_attempts`` counts every attempt, the first included (1 disables retries, at most 5).
    ``default_timeout_s`` applies to calls made without ``timeout`` (``None``: no default; give
    long-lived streams such as health watches an explicit timeout). ``options`` are extra
    channel args appended last. ``credentials``: TLS (see :mod:`glimpse3d.core.tls`); None: those set by
    :func:`channel_credentials` around this call, else plaintext.
    """
    if retry_attempts < 1:
        raise ValueError(f"retry attempts must be >= 1, got {retry_attempts}")
    channel_options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", int(retry_attempts > 1)),
    ]
    if retry_attempts > 1:
        config = retry_service_config(retry_attempts, initial_backoff_s, max_backoff_s)
        channel_options.append(("grpc.service_config", config))
    interceptors = [] if default_timeout_s is None else default_timeout_interceptors(default_timeout_s)
    interceptors.append(_UnaryUnaryTenant())
    credentials = credentials if credentials is not None else _CREDENTIALS.get()
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=[*channel_options, *options], interceptors=interceptors
        )
    return grpc.aio.insecure_channel(
        target, options=[*channel_options, *options], interceptors=interceptors
    )
