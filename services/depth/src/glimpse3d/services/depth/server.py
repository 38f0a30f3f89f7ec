"""Depth gRPC servicer: a thin adapter over a :class:`DepthBackend`."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from glimpse3d.core import convert
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.services.depth.backends import REGISTRY, DepthBackend
from glimpse3d.v1 import depth_pb2, depth_pb2_grpc

SERVICE_NAME = depth_pb2.DESCRIPTOR.services_by_name["Depth"].full_name
DEFAULT_BACKEND = "silhouette"
DEFAULT_FOV_Y_DEG = 40.0


def default_camera(width: int, height: int) -> Camera:
    """The camera assumed for a photo without one: 40 degree vertical field of view, looking at the
    object centre from the default orbit radius along -z (azimuth 0)."""
    return orbit_camera(0.0, 0.0, convert.DEFAULT_ORBIT_RADIUS, width=width, height=height,
                        fov_y_deg=DEFAULT_FOV_Y_DEG)


class DepthServicer(depth_pb2_grpc.DepthServicer):
    def __init__(self, backend: DepthBackend, runtime: ServiceRuntime) -> None:
        self.backend = backend
        self.rt = runtime

    async def Estimate(  # noqa: N802 - gRPC method name
        self, request: depth_pb2.EstimateDepthRequest, context: grpc.aio.ServicerContext
    ) -> depth_pb2.EstimateDepthResponse:
        image = await self.rt.io.image(request.image, "image")
        h, w = image.shape[:2]
        if request.HasField("camera"):
            camera = convert.camera_from_proto(request.camera, "camera")
            if (camera.width, camera.height) != (w, h):
                camera = camera.with_size(w, h)
        else:
            camera = default_camera(w, h)
        result = await self.rt.limiter.run(self.backend.estimate, image, camera)
        return depth_pb2.EstimateDepthResponse(
            depth=await self.rt.io.put_array(result.depth, temporary=True),
            mask=await self.rt.io.put_array(result.mask, temporary=True),
            camera=convert.camera_to_proto(camera),
            backend=self.backend.name,
        )


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = DepthServicer(backend, runtime)
    return [(depth_pb2_grpc.add_DepthServicer_to_server, servicer)], backend.load
