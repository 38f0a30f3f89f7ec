"""A tiny Glimpse3D gRPC server run as a subprocess by tests/service/test_rpc.py (graceful SIGTERM).

``python tests/rpc_slow_server.py GRACE_SECONDS`` prints its port on stdout, then serves:
``/glimpse3d.test.Slow/Sleep`` (request: seconds as ASCII, reply ``b"slept"``) and
``/glimpse3d.test.Slow/Echo`` (reply: the request). JSON logs go to stderr.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from glimpse3d.core.logs import configure_logging
from glimpse3d.core.rpc import create_server

SERVICE = "glimpse3d.test.Slow"


async def _sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b"slept"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])


async def main(grace_seconds: float) -> None:
    configure_logging("rpc-slow-server", level="INFO", json=True)
    server, port = create_server(_register, [SERVICE], grace_seconds=grace_seconds, metrics_port=None)
    print(port, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
