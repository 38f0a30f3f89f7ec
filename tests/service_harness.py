"""In-process harness for the backend services: start one on a loopback port with chosen settings,
run an async scenario against its stub, stop it. Shared by the weight-free and learned-backend tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx2 as httpx

from glimpse3d.core.artifacts import TENANT_METADATA_KEY, FileArtifactStore
from glimpse3d.core.rpc import create_server
from glimpse3d.core.service import ServiceSettings, running_in_process
from glimpse3d.gateway.http import HttpContext, HttpServer, create_app
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.services.backprojection import server as bp_server
from glimpse3d.services.depth import server as depth_server
from glimpse3d.services.diffusion import server as diffusion_server
from glimpse3d.services.multiview import server as multiview_server
from glimpse3d.services.reconstruction import server as recon_server
from glimpse3d.v1 import (
    backprojection_pb2_grpc,
    depth_pb2_grpc,
    diffusion_pb2_grpc,
    glimpse3d_pb2_grpc,
    multiview_pb2_grpc,
    reconstruction_pb2_grpc,
)

MODULES = {
    "depth": (depth_server, depth_pb2_grpc.DepthStub),
    "reconstruction": (recon_server, reconstruction_pb2_grpc.ReconstructionStub),
    "multiview": (multiview_server, multiview_pb2_grpc.MultiviewStub),
    "diffusion": (diffusion_server, diffusion_pb2_grpc.DiffusionStub),
    "backprojection": (bp_server, backprojection_pb2_grpc.BackprojectionStub),
}

TENANT = "default"
"""The tenant the harness's calls work for: the one keys without a tenant (what tests put) belong to."""


class _NamesTenant(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends ``x-glimpse3d-tenant`` as the gateway does (services refuse calls without one)."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = [*(details.metadata or ()), (TENANT_METADATA_KEY, self.tenant)]
        return await continuation(grpc.aio.ClientCallDetails(
            details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials,
            details.wait_for_ready), request)


def run_service(
    name: str, store: FileArtifactStore, scenario: Callable, settings: ServiceSettings | None = None
) -> None:
    """Start the named service in process (``settings`` choose the backend; default: the weight-free
    one), run ``scenario(stub)`` against it over a loopback channel, stop it."""
    module, stub_cls = MODULES[name]

    async def main() -> None:
        settings_ = settings or ServiceSettings(backend="", max_concurrency=1, max_waiting=4)
        async with running_in_process(module.build, [module.SERVICE_NAME], settings_, store) as (port, _):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[_NamesTenant(TENANT)]) as ch:
                await scenario(stub_cls(ch))

    asyncio.run(asyncio.wait_for(main(), 300))


@dataclass
class GatewayListeners:
    """A gateway's loopback gRPC and HTTP listeners, with a client for each."""

    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    grpc_addr: str
    http_base: str


@asynccontextmanager
async def gateway_listeners(servicer: Glimpse3DServicer, context: HttpContext, web_dir: Path, timeout: float,
                            interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                            ) -> AsyncIterator[GatewayListeners]:
    """Serve ``servicer`` over gRPC and ``context`` over HTTP on loopback ports, as ``serve()`` wires
    them; stop both (and close the clients) on exit. The app behind them is the caller's to start and
    close."""
    server, port = create_server([(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, servicer)], [SERVICE_NAME],
                                 metrics_port=None, interceptors=list(interceptors))
    await server.start()
    await server.set_serving()
    http = HttpServer(create_app(context, web_dir=web_dir), "127.0.0.1", 0, streams=context.streams, grace_s=1.0)
    try:
        base = f"http://127.0.0.1:{await http.start()}"
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        client = httpx.AsyncClient(base_url=base, timeout=timeout)
        try:
            yield GatewayListeners(glimpse3d_pb2_grpc.Glimpse3DStub(channel), channel, client,
                                   f"127.0.0.1:{port}", base)
        finally:
            await client.aclose()
            await channel.close()
            await http.stop()
    finally:
        await server.stop(0)
