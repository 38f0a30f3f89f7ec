"""Diffusion gRPC servicer: a thin adapter over a :class:`DiffusionBackend`."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from glimpse3d.core import service
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.services.diffusion.api import REGISTRY, DiffusionBackend, apply_proto_defaults
from glimpse3d.v1 import common_pb2, diffusion_pb2, diffusion_pb2_grpc

SERVICE_NAME = diffusion_pb2.DESCRIPTOR.services_by_name["Diffusion"].full_name
DEFAULT_BACKEND = "classical"


class DiffusionServicer(diffusion_pb2_grpc.DiffusionServicer):
    def __init__(self, backend: DiffusionBackend, runtime: ServiceRuntime) -> None:
        self.backend = backend
        self.rt = runtime

    async def _optional_array(self, msg: common_pb2.ArtifactRef, field: str, hw: tuple[int, int]) -> np.ndarray | None:
        return await self.rt.io.array(msg, field, shape=hw) if msg.uri else None

    async def Enhance(  # noqa: N802 - gRPC method name
        self, request: diffusion_pb2.EnhanceViewRequest, context: grpc.aio.ServicerContext
    ) -> diffusion_pb2.EnhanceViewResponse:
        view = await self.rt.io.image(request.view, "view")
        hw = view.shape[:2]
        depth = await self._optional_array(request.depth, "depth", hw)
        alpha = await self._optional_array(request.alpha, "alpha", hw)
        reference = await self.rt.io.image(request.reference, "reference") if request.reference.uri else None
        strength, steps, guidance = apply_proto_defaults(request.strength, request.steps, request.guidance)
        out = await self.rt.limiter.run(
            self.backend.enhance, view, depth=depth, alpha=alpha, reference=reference, prompt=request.prompt,
            strength=strength, steps=steps, guidance=guidance, seed=request.seed,
        )
        view_ref = await self.rt.io.put_png(out, temporary=True)
        return diffusion_pb2.EnhanceViewResponse(view=view_ref, backend=self.backend.name)


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = DiffusionServicer(backend, runtime)
    return [(diffusion_pb2_grpc.add_DiffusionServicer_to_server, servicer)], backend.load


def main() -> None:
    """``glimpse3d-diffusion``: serve until SIGTERM (config from GLIMPSE3D_*)."""
    service.main("diffusion", [SERVICE_NAME], build)
