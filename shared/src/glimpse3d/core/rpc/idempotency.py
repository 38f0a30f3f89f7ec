"""Repeated calls answered from memory: the server side of the gateway's stage retries.

The gateway sends every stage call with an idempotency key in the ``x-glimpse3d-request-id``
metadata (job, round and stage). When a call completed but its response was lost (the connection
broke, the gateway restarted the call after a timeout of the transport), the retry carries the same
key and the same request; :class:`IdempotencyInterceptor` then returns the stored response instead of
computing it again. Entries are keyed by (method, tenant, key, SHA-256 of the serialized request), so a
key reused with a different request, or by another tenant, is computed afresh, never answered with
another request's (or tenant's) result.

The cache is small and in memory (:class:`ResponseCache`: least recently used first out, each entry
kept at most ``ttl_s`` seconds); responses of the services are artifact references and figures, a
few hundred bytes each. A restarted process starts empty, which only costs a recomputation. Only
successful unary-unary responses are stored; errors are never replayed.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from glimpse3d.core.artifacts.base import current_tenant

IDEMPOTENCY_KEY = "x-glimpse3d-request-id"
MAX_KEY_CHARS = 256
DEFAULT_CACHE_ENTRIES = 512
DEFAULT_CACHE_TTL_S = 900.0

CacheKey = tuple[str, str, str, bytes]  # method, tenant ('' outside a tenant scope), key, request digest


class ResponseCache:
    """A bounded LRU map with a time to live; ``clock`` is injectable for tests."""

    def __init__(
        self,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, Any]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Any | None:
        """The stored value, or None when absent or older than ``ttl_s`` (then dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if self._clock() - stored_at > self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: CacheKey, value: Any) -> None:
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def idempotency_key(context: grpc.aio.ServicerContext) -> str | None:
    """The call's ``x-glimpse3d-request-id`` (None when absent, empty or longer than 256 characters)."""
    for key, value in context.invocation_metadata() or ():
        if key == IDEMPOTENCY_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text if 0 < len(text) <= MAX_KEY_CHARS else None
    return None


def request_digest(request: Any) -> bytes:
    """SHA-256 of the request's deterministic serialization."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


class IdempotencyInterceptor(grpc.aio.ServerInterceptor):
    """Answers a repeated unary-unary call (same method, key and request) with the stored response."""

    def __init__(self, cache: ResponseCache | None = None) -> None:
        self.cache = cache or ResponseCache()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        behavior = handler.unary_unary
        if not inspect.iscoroutinefunction(behavior):
            return handler
        method = handler_call_details.method
        cache = self.cache

        async def deduplicated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            key = idempotency_key(context)
            if key is None:
                return await behavior(request, context)
            cache_key = (method, current_tenant() or "", key, request_digest(request))
            stored = cache.get(cache_key)
            if stored is not None:
                return stored
            response = await behavior(request, context)
            code = context.code()
            if response is not None and (code is None or code == grpc.StatusCode.OK):
                cache.put(cache_key, response)
            return response

        return grpc.unary_unary_rpc_method_handler(
            deduplicated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
