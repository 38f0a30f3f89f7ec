"""Building, running and draining a Glimpse3D gRPC server.

Lifecycle, the same in every service::

    server, port = create_server(register, ["glimpse3d.v1.DepthService"], address=cfg.address)
    await server.serve_forever(load=backend.load)  # start, signals, load, SERVING, wait

Health (``grpc.health.v1``): the overall status ``""`` and every listed service are NOT_SERVING
from start until :meth:`Server.set_serving` (call it once the backend has loaded), and NOT_SERVING
again, for good, as soon as shutdown begins. SIGTERM/SIGINT (after :meth:`install_signal_handlers`)
start a graceful stop: health turns NOT_SERVING, the :meth:`Server.on_drain` hook (if any) runs while
calls are still accepted, then new calls are refused and calls in flight get what is left of
``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from glimpse3d.core.config import DEFAULT_MAX_MESSAGE_BYTES, ServerConfig
from glimpse3d.core.rpc.interceptors import ObservingInterceptor, RpcMetrics
from glimpse3d.core.tls import server_credentials_from_config

logger = logging.getLogger("glimpse3d.rpc")

AddServicer = Callable[[Any, grpc.aio.Server], None]
Registration = Callable[[grpc.aio.Server], None] | Sequence[tuple[AddServicer, object]]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    """A started-on-demand ``grpc.aio.Server`` with health, metrics and graceful shutdown."""

    def __init__(
        self,
        server: grpc.aio.Server,
        *,
        port: int,
        service_names: Sequence[str],
        health_servicer: health.aio.HealthServicer,  # pyright: ignore[reportAttributeAccessIssue]  # typeshed lacks aio
        registry: CollectorRegistry,
        metrics_address: tuple[str, int] | None,
        grace_seconds: float,
    ) -> None:
        self._server = server
        self._port = port
        self._service_names = tuple(service_names)
        self._health = health_servicer
        self._registry = registry
        self._metrics_address = metrics_address
        self._metrics: tuple[WSGIServer, threading.Thread] | None = None
        self._grace_seconds = grace_seconds
        self._stop_task: asyncio.Task[None] | None = None
        self._drain: Callable[[float], Awaitable[object]] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def registry(self) -> CollectorRegistry:
        """This server's Prometheus registry; services register their own metrics here."""
        return self._registry

    @property
    def metrics_port(self) -> int | None:
        """The port serving ``/metrics`` once started; ``None`` before start or when disabled."""
        return self._metrics[0].server_port if self._metrics else None

    async def start(self) -> None:
        """Serve ``/metrics``, mark every service NOT_SERVING, and start accepting calls."""
        for name in ("", *self._service_names):
            await self._health.set(name, _NOT_SERVING)
        if self._metrics_address is not None:
            host, port = self._metrics_address
            self._metrics = start_http_server(port, addr=host, registry=self._registry)
        await self._server.start()
        logger.info("grpc server started", extra={
            "port": self._port, "metrics_port": self.metrics_port,
            "services": list(self._service_names),
        })

    async def set_serving(self) -> None:
        """Report SERVING for ``""`` and every service (ignored once shutdown has begun)."""
        await self._set_health(_SERVING)

    async def set_not_serving(self) -> None:
        """Report NOT_SERVING (e.g. the backend lost its GPU); calls are still accepted."""
        await self._set_health(_NOT_SERVING)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)
        logger.info("health changed", extra={"health": health_pb2.HealthCheckResponse.ServingStatus.Name(status)})

    def on_drain(self, drain: Callable[[float], Awaitable[object]]) -> None:
        """Run ``await drain(grace)`` when shutdown begins, after health turns NOT_SERVING and while
        calls are still accepted (the application refuses new work and finishes what is in flight),
        bounded by the grace; calls in flight then get what is left of it."""
        self._drain = drain

    async def stop(self, grace: float | None = None) -> None:
        """Stop once (later calls wait for the first): NOT_SERVING, refuse new calls, let calls
        in flight run for ``grace`` seconds (default: the server's grace), then cancel them."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(
                self._shutdown(self._grace_seconds if grace is None else grace)
            )
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, grace: float) -> None:
        logger.info("grpc server stopping", extra={"grace_seconds": grace})
        await self._health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        began = loop.time()
        if self._drain is not None and grace > 0:
            try:
                await asyncio.wait_for(self._drain(grace), grace)
            except TimeoutError:
                logger.warning("drain did not finish within the grace period")
            except Exception:
                logger.exception("drain failed")
        await self._server.stop(max(0.0, grace - (loop.time() - began)))
        if self._metrics is not None:
            await asyncio.to_thread(_stop_http_server, *self._metrics)
        logger.info("grpc server stopped")

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped and shutdown has finished."""
        await self._server.wait_for_termination()
        if self._stop_task is not None:
            await asyncio.shield(self._stop_task)

    def install_signal_handlers(
        self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """On the running loop, make ``signals`` start :meth:`stop` with the server's grace."""
        loop = asyncio.get_running_loop()
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: signal.Signals) -> None:
        if self._stop_task is not None:
            logger.info("already stopping, ignoring %s", signum.name)
            return
        logger.info("received %s, draining", signum.name)
        self._stop_task = asyncio.ensure_future(self._shutdown(self._grace_seconds))

    async def serve_forever(self, load: Callable[[], Awaitable[object]] | None = None) -> None:
        """Start, install signal handlers, await ``load()`` (warm-up), mark SERVING, and return
        after a signal (or :meth:`stop`) has shut the server down. If ``load`` fails the server
        stops at once and the error propagates. A signal during ``load`` stops the server (new
        calls are refused) but this method returns only once ``load`` itself has returned."""
        await self.start()
        self.install_signal_handlers()
        if load is not None:
            try:
                await load()
            except BaseException:
                logger.exception("backend failed to load")
                await self.stop(0)
                raise
        await self.set_serving()
        await self.wait_for_termination()


def _stop_http_server(httpd: WSGIServer, thread: threading.Thread) -> None:
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _register(server: grpc.aio.Server, register: Registration) -> None:
    if callable(register):
        register(server)
        return
    for add_servicer, servicer in register:
        add_servicer(servicer, server)


def create_server(
    register: Registration,
    service_names: Sequence[str],
    *,
    address: str = "127.0.0.1:0",
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    grace_seconds: float = 10.0,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[Server, int]:
    """Build a server (call inside a running event loop) and bind it; returns it and its port.

    ``register`` is ``fn(grpc_server)`` or a list of ``(add_XServicer_to_server, servicer)``.
    ``service_names`` are the full names listed by health and reflection. ``metrics_port`` 0
    picks a free port, ``None`` disables ``/metrics``. ``options`` are extra grpc channel args.
    ``interceptors`` run inside the observing one (their errors are mapped, counted and logged).
    ``credentials`` (:mod:`glimpse3d.core.tls`): the port accepts TLS (or mutual TLS) only; None: plaintext.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    server = grpc.aio.server(
        interceptors=[ObservingInterceptor(RpcMetrics(registry)), *interceptors],
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *options,
        ],
    )
    _register(server, register)
    health_servicer = health.aio.HealthServicer()  # pyright: ignore[reportAttributeAccessIssue]  # typeshed lacks aio
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    wrapper = Server(
        server, port=port, service_names=service_names, health_servicer=health_servicer,
        registry=registry, grace_seconds=grace_seconds,
        metrics_address=None if metrics_port is None else (metrics_host, metrics_port),
    )
    return wrapper, port


def create_server_from_config(
    register: Registration, service_names: Sequence[str], config: ServerConfig,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[Server, int]:
    """:func:`create_server` with address, metrics, limits, grace and TLS taken from ``config``; a TLS
    file that is missing or not what its setting asks for is a ConfigError naming the setting."""
    return create_server(
        register, service_names, address=config.address, metrics_host=config.metrics_host,
        metrics_port=config.metrics_port_or_none, max_message_bytes=config.max_message_bytes,
        grace_seconds=config.grace_seconds, interceptors=interceptors,
        credentials=server_credentials_from_config(config),
    )
