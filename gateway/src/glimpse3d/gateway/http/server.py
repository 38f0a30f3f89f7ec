"""Serving the facade from inside the gateway process: uvicorn on the gateway's own event loop.

The gateway's gRPC server owns the process (and its signal handlers); uvicorn runs next to it as one
more task of the same loop, so both transports drive the same :class:`GatewayApp` objects (asyncio
queues, job tasks, event subscriptions) without threads. The listening socket is bound here before
uvicorn starts, which makes port 0 race free (the port is known at once) and turns a taken port
into a clear configuration error. Stopping ends the open event streams first, then lets uvicorn
finish the requests in flight for up to ``grace_s`` seconds.

Slow or stalled clients cannot hold connections: :class:`GuardedH11Protocol` closes a connection whose
request headers are not complete ``header_timeout_s`` after it opened (or after its first byte, on a
kept-alive connection), and one whose request body has not fully arrived ``body_timeout_s`` after its
headers, answering 408 when no response has started; ``max_connections`` bounds the open connections
(uvicorn's ``limit_concurrency``: a request over the limit gets 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from glimpse3d.core.config import ConfigError
from glimpse3d.core.tls import SERVER_SETTINGS, ReloadingSSLContext
from glimpse3d.gateway.http.sse import StreamRegistry

logger = logging.getLogger(__name__)
_UVICORN_LOGGER = "uvicorn.error"  # its INFO lines repeat ours (started, shutting down) with terminal colours
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 120.0
DEFAULT_MAX_CONNECTIONS = 1000


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header-read and a body-read deadline (see the module docstring).

    uvicorn itself only times out idle kept-alive connections: a client that sends part of a request
    line, or headers and then part of a body, holds its connection (and a task) for as long as it likes.
    """

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s = DEFAULT_BODY_TIMEOUT_S

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # pyright: ignore[reportArgumentType]
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for = ""
        self._seen_cycle: object | None = None

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state in (h11.IDLE, h11.DONE):
            self._arm(self.header_timeout_s, "request headers")  # a new request on a kept-alive connection
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Move the deadline along: headers in -> the body's deadline (when a body follows); body in -> none."""
        cycle = self.cycle
        if cycle is None:
            return
        if cycle is not self._seen_cycle:  # the headers of a new request arrived
            self._seen_cycle = cycle
            if cycle.more_body:
                self._arm(self.body_timeout_s, "request body")
            else:
                self._disarm()
        elif not cycle.more_body and self._waiting_for == "request body":
            self._disarm()

    def _expired(self, what: str) -> None:
        self._deadline, self._waiting_for = None, ""
        if self.transport.is_closing():
            return
        logger.info("closing an HTTP connection: %s not received in time", what,
                    extra={"peer": f"{self.client[0]}:{self.client[1]}" if self.client else ""})
        started = self.cycle is not None and self.cycle.response_started
        if not started and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                body = f"{what} not received in time\n".encode()
                self.transport.write(self.conn.send(h11.Response(status_code=408, reason=b"Request Timeout", headers=[
                    (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")])) or b"")
                self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
                self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError:  # h11 will not answer in this state; just close
                pass
        if self.cycle is not None:
            self.cycle.response_started = True  # the app's own answer, if any, is dropped
        self.transport.close()


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the host process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (0 = any free port); ConfigError naming
    ``http_port`` when the address cannot be used."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {err}", field="http_host") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen for HTTP on {host}:{port}: {err.strerror or err}; set GLIMPSE3D_HTTP_PORT to a free "
            "port, 0 for any free port, or -1 to switch HTTP off", field="http_port") from err
    return sock


@dataclass(frozen=True)
class HttpTLS:
    """HTTPS for the facade: PEM certificate chain and key; with ``client_ca_file`` every client must
    present a certificate signed by it. Check the files first (:mod:`glimpse3d.core.tls`); renewed files
    are taken for new connections without a restart."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None



class _SslOptions(TypedDict, total=False):
    ssl_certfile: str
    ssl_keyfile: str
    ssl_ca_certs: str
    ssl_cert_reqs: int
    ssl_context_factory: Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]


def _ssl_options(tls: HttpTLS | None) -> _SslOptions:
    """uvicorn's ssl_* arguments for ``tls`` (none: plain HTTP). The context uvicorn builds from the files
    reloads its certificate when they are renewed (:class:`~glimpse3d.core.tls.ReloadingSSLContext`)."""
    if tls is None:
        return {}
    reloader = ReloadingSSLContext(tls.cert_file, tls.key_file, tls.client_ca_file, settings=SERVER_SETTINGS)

    def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        del config
        return reloader.install(default())

    options = _SslOptions(ssl_certfile=str(tls.cert_file), ssl_keyfile=str(tls.key_file),
                          ssl_context_factory=factory)
    if tls.client_ca_file is not None:
        options.update(ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


class HttpServer:
    """``await start()`` -> the bound port; ``await stop()`` ends streams and waits for uvicorn
    (over HTTPS when given ``tls``)."""

    def __init__(self, app: FastAPI, host: str, port: int, *, streams: StreamRegistry | None = None,
                 grace_s: float = 5.0, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, tls: HttpTLS | None = None) -> None:
        self._app = app
        self._tls = tls
        self._protocol = type("ConfiguredH11Protocol", (GuardedH11Protocol,),
                              {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})
        self._max_connections = max_connections
        self._host = host
        self._port = port
        self._streams = streams
        self._grace_s = grace_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> int:
        sock = bind_socket(self._host, self._port)
        self.port = int(sock.getsockname()[1])
        uvicorn_log = logging.getLogger(_UVICORN_LOGGER)
        if uvicorn_log.level == logging.NOTSET:
            uvicorn_log.setLevel(logging.WARNING)
        config = uvicorn.Config(self._app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=max(1, round(self._grace_s)), server_header=False,
                                http=self._protocol, limit_concurrency=self._max_connections,
                                **_ssl_options(self._tls))
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        logger.info("http server started", extra={"host": self._host, "http_port": self.port})
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        if self._streams is not None:
            self._streams.close_all()
        self._server.should_exit = True
        try:
            await self._task
        except (Exception, SystemExit):  # uvicorn exits the startup failure with SystemExit
            logger.exception("http server failed")
        finally:
            self._server = self._task = None
        logger.info("http server stopped")
