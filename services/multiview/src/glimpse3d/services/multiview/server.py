"""Multiview gRPC servicer: a thin adapter over a :class:`MultiviewBackend`."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from glimpse3d.core import convert, service
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.services.multiview.api import MAX_STEPS, MAX_VIEWS, REGISTRY, MultiviewBackend
from glimpse3d.v1 import multiview_pb2, multiview_pb2_grpc

SERVICE_NAME = multiview_pb2.DESCRIPTOR.services_by_name["Multiview"].full_name
DEFAULT_BACKEND = "render"


class MultiviewServicer(multiview_pb2_grpc.MultiviewServicer):
    def __init__(self, backend: MultiviewBackend, runtime: ServiceRuntime) -> None:
        self.backend = backend
        self.rt = runtime

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: multiview_pb2.GenerateViewsRequest, context: grpc.aio.ServicerContext
    ) -> multiview_pb2.GenerateViewsResponse:
        if not 1 <= len(request.views) <= MAX_VIEWS:
            raise InvalidInput(f"views must list 1..{MAX_VIEWS} viewpoints, got {len(request.views)}", field="views")
        if request.steps > MAX_STEPS:
            raise InvalidInput(f"steps must be at most {MAX_STEPS}, got {request.steps}", field="steps")
        cameras = [convert.view_from_proto(v, f"views[{i}]") for i, v in enumerate(request.views)]
        image = await self.rt.io.image(request.image, "image")
        hw = image.shape[:2]
        mask = await self.rt.io.array(request.mask, "mask", shape=hw) if request.mask.uri else None
        input_camera = convert.camera_from_proto(request.input_camera, "input_camera")
        splat = await self.rt.io.splat(request.splat, "splat") if request.splat.uri else None
        views = await self.rt.limiter.run(
            self.backend.generate, image, mask, input_camera, splat, cameras, request.seed, request.steps
        )
        response = multiview_pb2.GenerateViewsResponse(backend=self.backend.name)
        for camera, view in zip(cameras, views, strict=True):
            response.views.add(
                camera=convert.camera_to_proto(camera),
                rgb=await self.rt.io.put_png(view.rgb, temporary=True),
                mask=await self.rt.io.put_array(view.mask, temporary=True),
            )
        return response


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = MultiviewServicer(backend, runtime)
    return [(multiview_pb2_grpc.add_MultiviewServicer_to_server, servicer)], backend.load


def main() -> None:
    """``glimpse3d-multiview``: serve until SIGTERM (config from GLIMPSE3D_*)."""
    service.main("multiview", [SERVICE_NAME], build)
