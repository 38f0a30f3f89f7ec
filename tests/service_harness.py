"""In-process harness for the backend services: start one on a loopback port with chosen settings,
run an async scenario against its stub, stop it. Shared by the weight-free and learned-backend tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from glimpse3d.core.artifacts import TENANT_METADATA_KEY, FileArtifactStore
from glimpse3d.core.service import ServiceSettings, running_in_process
from glimpse3d.services.backprojection import server as bp_server
from glimpse3d.services.depth import server as depth_server
from glimpse3d.services.diffusion import server as diffusion_server
from glimpse3d.services.multiview import server as multiview_server
from glimpse3d.services.reconstruction import server as recon_server
from glimpse3d.v1 import (
    backprojection_pb2_grpc,
    depth_pb2_grpc,
    diffusion_pb2_grpc,
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
