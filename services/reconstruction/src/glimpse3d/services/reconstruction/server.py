"""Reconstruction gRPC servicer: a thin adapter over a :class:`ReconstructionBackend`."""

from __future__ import annotations

import math
from collections.abc import Callable

import grpc
import numpy as np

from glimpse3d.core import convert, service
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.services.reconstruction.api import (
    MAX_EXTRA_VIEWS,
    MAX_FIT_STEPS,
    MAX_GAUSSIANS,
    REGISTRY,
    ExtraView,
    ReconstructionBackend,
)
from glimpse3d.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc

SERVICE_NAME = reconstruction_pb2.DESCRIPTOR.services_by_name["Reconstruction"].full_name
DEFAULT_BACKEND = "lift"
MAX_RENDER_VIEWS = 64


def _check_limit(value: int, limit: int, field: str) -> None:
    if value > limit:
        raise InvalidInput(f"{field} must be at most {limit}, got {value}", field=field)


def _background(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (0.0, 0.0, 0.0)
    if len(values) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InvalidInput(f"background must be 3 values in [0, 1], got {list(values)}", field="background")
    return (float(values[0]), float(values[1]), float(values[2]))


class ReconstructionServicer(reconstruction_pb2_grpc.ReconstructionServicer):
    def __init__(self, backend: ReconstructionBackend, runtime: ServiceRuntime) -> None:
        self.backend = backend
        self.rt = runtime

    def _camera_for(self, msg: common_pb2.Camera, field: str, hw: tuple[int, int]) -> Camera:
        camera = convert.camera_from_proto(msg, field)
        if (camera.height, camera.width) != hw:
            raise InvalidInput(
                f"{field} is {camera.width}x{camera.height} but its image is {hw[1]}x{hw[0]}", field=field
            )
        return camera

    async def _views(self, request: reconstruction_pb2.ReconstructRequest) -> list[ExtraView]:
        _check_limit(len(request.views), MAX_EXTRA_VIEWS, "views")
        views = []
        for i, v in enumerate(request.views):
            rgb = await self.rt.io.image(v.rgb, f"views[{i}].rgb")
            hw = rgb.shape[:2]
            mask = await self.rt.io.array(v.mask, f"views[{i}].mask", shape=hw) if v.mask.uri else None
            camera = self._camera_for(v.camera, f"views[{i}].camera", hw)
            views.append(ExtraView(camera=camera, rgb=rgb[..., :3], mask=mask))
        return views

    async def Reconstruct(  # noqa: N802 - gRPC method name
        self, request: reconstruction_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> reconstruction_pb2.ReconstructResponse:
        _check_limit(request.fit_steps, MAX_FIT_STEPS, "fit_steps")
        _check_limit(request.max_gaussians, MAX_GAUSSIANS, "max_gaussians")
        image = await self.rt.io.image(request.image, "image")
        hw = image.shape[:2]
        depth = await self.rt.io.array(request.depth, "depth", shape=hw)
        mask = await self.rt.io.array(request.mask, "mask", shape=hw)
        camera = self._camera_for(request.camera, "camera", hw)
        views = await self._views(request)
        result = await self.rt.limiter.run(
            self.backend.reconstruct, image, depth, mask, camera, views,
            fit_steps=request.fit_steps, max_gaussians=request.max_gaussians, seed=request.seed,
        )
        return reconstruction_pb2.ReconstructResponse(
            splat=await self.rt.io.put_splat(result.splat),
            num_gaussians=result.splat.num_gaussians,
            input_view_psnr_db=float(result.metrics.get("input_view_psnr_db", float("nan"))),
            backend=self.backend.name,
        )

    async def Render(  # noqa: N802 - gRPC method name
        self, request: reconstruction_pb2.RenderRequest, context: grpc.aio.ServicerContext
    ) -> reconstruction_pb2.RenderResponse:
        if not request.views:
            raise InvalidInput("views must list at least one view", field="views")
        _check_limit(len(request.views), MAX_RENDER_VIEWS, "views")
        background = _background(list(request.background))
        cameras = [convert.view_from_proto(v, f"views[{i}]") for i, v in enumerate(request.views)]
        splat = await self.rt.io.splat(request.splat, "splat")
        images = await self.rt.limiter.run(self.backend.render, splat, cameras, background)
        response = reconstruction_pb2.RenderResponse()
        for camera, img in zip(cameras, images, strict=True):
            response.views.add(
                camera=convert.camera_to_proto(camera),
                rgb=await self.rt.io.put_png(np.clip(img.rgb, 0.0, 1.0), temporary=True),
                depth=await self.rt.io.put_array(img.depth, temporary=True),
                alpha=await self.rt.io.put_array(img.alpha, temporary=True),
            )
        return response


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = ReconstructionServicer(backend, runtime)
    return [(reconstruction_pb2_grpc.add_ReconstructionServicer_to_server, servicer)], backend.load


def main() -> None:
    """``glimpse3d-reconstruction``: serve until SIGTERM (config from GLIMPSE3D_*)."""
    service.main("reconstruction", [SERVICE_NAME], build)
