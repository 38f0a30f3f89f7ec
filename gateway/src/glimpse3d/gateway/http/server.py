"""Serving the facade from inside the gateway process: uvicorn on the gateway's own event loop.

The gateway's gRPC server owns the process (and its signal handlers); uvicorn runs next to it as one
more task of the same loop, so both transports drive the same :class:`GatewayApp` objects (asyncio
queues, job tasks, event subscriptions) without threads. The listening socket is bound here before
uvicorn starts, which makes port 0 race free (the port is known at once) and turns a taken port
into a clear configuration error. Stopping ends the open event streams first, then lets uvicorn
finish the requests in flight for up to ``grace_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from glimpse3d.core.config import ConfigError
from glimpse3d.gateway.http.sse import StreamRegistry

logger = logging.getLogger(__name__)
_UVICORN_LOGGER = "uvicorn.error"  # its INFO lines repeat ours (started, shutting down) with terminal colours


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


class HttpServer:
    """``await start()`` -> the bound port; ``await stop()`` ends streams and waits for uvicorn."""

    def __init__(self, app: FastAPI, host: str, port: int, *, streams: StreamRegistry | None = None,
                 grace_s: float = 5.0) -> None:
        self._app = app
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
                                timeout_graceful_shutdown=max(1, round(self._grace_s)), server_header=False)
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
