"""Server interceptor: error mapping, Prometheus metrics and one log line per call.

Every async handler (unary-unary, unary-stream, stream-unary, stream-stream; coroutine or async
generator) is wrapped so that

* a :class:`~glimpse3d.core.errors.Glimpse3DError` or an unexpected exception, raised before or
  in the middle of a stream, ends the call with the rich status built by
  :func:`~glimpse3d.core.rpc.errors.to_rpc_status`;
* ``glimpse3d_rpc_requests_total{method,code}``, ``glimpse3d_rpc_latency_seconds{method,code}``
  and ``glimpse3d_rpc_in_flight{method}`` are updated in the server's own registry;
* one structured line (``method``, ``code``, ``duration_ms``, ``peer``, ``request_id``) is logged.

Health checks and reflection (frequent probes, long-lived watches) pass through untouched, as do
synchronous handlers, which grpc.aio runs in a thread pool with a different context type.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from glimpse3d.core.rpc.errors import to_rpc_status

logger = logging.getLogger("glimpse3d.rpc")

UNOBSERVED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
REQUEST_ID_KEY = "x-request-id"
# From cache hits to multi-minute diffusion passes.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0, 600.0)
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.DATA_LOSS})

Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


class RpcMetrics:
    """The per-server RPC metrics, registered in ``registry`` (one registry per server)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "glimpse3d_rpc_requests", "RPCs finished, by method and status code.",
            ("method", "code"), registry=registry,
        )
        self.latency = Histogram(
            "glimpse3d_rpc_latency_seconds", "RPC duration in seconds, by method and status code.",
            ("method", "code"), buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "glimpse3d_rpc_in_flight", "RPCs being handled now, by method.", ("method",),
            registry=registry,
        )


def _final_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The code a handler left on its context (``context.code()`` is None when never set)."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _cancellation_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """DEADLINE_EXCEEDED when the call ran out of time, CANCELLED when the client gave up."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= 0
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def _request_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            return str(value)
    return None


class _CallObserver:
    """Times one method's calls, maps their failures, and records how they ended."""

    def __init__(self, method: str, metrics: RpcMetrics) -> None:
        self.method = method
        self.metrics = metrics

    def _record(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, start: float) -> None:
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(self.method, code.name).inc()
        self.metrics.latency.labels(self.method, code.name).observe(elapsed)
        level = logging.ERROR if code in _SERVER_FAULTS else logging.INFO
        logger.log(level, "rpc finished", extra={
            "method": self.method, "code": code.name, "duration_ms": round(elapsed * 1000, 3),
            "peer": context.peer(), "request_id": _request_id(context),
        })

    @contextlib.asynccontextmanager
    async def observe(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        start = time.perf_counter()
        gauge = self.metrics.in_flight.labels(self.method)
        gauge.inc()
        try:
            yield
        except grpc.aio.AbortError:  # the handler aborted with its own status
            self._record(context, _final_code(context), start)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away or timed out
            self._record(context, _cancellation_code(context), start)
            raise
        except Exception as exc:
            status = rpc_status.to_status(to_rpc_status(exc, method=self.method))
            self._record(context, status.code, start)
            # typeshed's grpc.aio.ServicerContext lacks abort_with_status (grpc/aio/_base_server.py has it).
            await context.abort_with_status(status)  # pyright: ignore[reportAttributeAccessIssue]
        else:
            self._record(context, _final_code(context), start)
        finally:
            gauge.dec()

    def wrap_coroutine(self, behavior: Handler) -> Handler:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self.observe(context):
                return await behavior(request, context)

        return observed

    def wrap_async_generator(self, behavior: Handler) -> Handler:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self.observe(context):
                async for response in behavior(request, context):
                    yield response

        return observed


_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _wrap_handler(handler: grpc.RpcMethodHandler, observer: _CallObserver) -> grpc.RpcMethodHandler:
    attribute, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)
    if inspect.isasyncgenfunction(behavior):
        wrapped = observer.wrap_async_generator(behavior)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = observer.wrap_coroutine(behavior)
    else:
        logger.debug("not observing synchronous handler %s", observer.method)
        return handler
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every async handler of a server in error mapping, metrics and logging."""

    def __init__(
        self, metrics: RpcMetrics, *, unobserved_prefixes: Sequence[str] = UNOBSERVED_PREFIXES
    ) -> None:
        self._metrics = metrics
        self._unobserved = tuple(unobserved_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._unobserved):
            return handler
        return _wrap_handler(handler, _CallObserver(method, self._metrics))
