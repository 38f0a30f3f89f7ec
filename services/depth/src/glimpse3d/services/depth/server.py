"""Depth gRPC servicer: a thin adapter over a :class:`~glimpse3d.services.depth.api.DepthBackend`.

The user's matte corrections (``matte_points``) are applied here, the same way for every backend:
the backend's :meth:`~glimpse3d.services.depth.api.DepthBackend.matte` is recomputed with them and
handed to the backend as the photo's alpha channel, which every backend takes as the matte. The
``Matte`` RPC returns that same matte. A photo that already has a (not all opaque) alpha channel
keeps it: the user drew that matte. Every response carries the matte's plausibility check
(:func:`glimpse3d.core.matte.check_matte`).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from glimpse3d.core import convert, service
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.matte import MatteCheck, check_matte
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.services.depth.api import REGISTRY, DepthBackend
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
        points = _points(request.matte_points)
        if points and not _has_matte(image):
            matte = await self.rt.limiter.run(self.backend.matte, image, points=points)
            alpha = np.round(np.clip(matte, 0.0, 1.0) * 255.0).astype(np.uint8)
            if int(alpha.max()) < 128:
                raise InvalidInput("the matte corrections leave no object: every pixel is background; "
                                   "mark the object with a keep point", field="matte_points")
            if int(alpha.min()) == 255:  # an all-opaque alpha would mean "no matte" to the backend
                raise InvalidInput("the matte corrections leave no background: the whole photo is object; "
                                   "mark some background with a remove point", field="matte_points")
            image = np.dstack([image[..., :3], alpha])
        result = await self.rt.limiter.run(self.backend.estimate, image, camera)
        return depth_pb2.EstimateDepthResponse(
            depth=await self.rt.io.put_array(result.depth, temporary=True),
            mask=await self.rt.io.put_array(result.mask, temporary=True),
            camera=convert.camera_to_proto(camera),
            backend=self.backend.name,
            matte_check=_check_to_proto(check_matte(result.mask)),
        )

    async def Matte(  # noqa: N802 - gRPC method name
        self, request: depth_pb2.MatteRequest, context: grpc.aio.ServicerContext
    ) -> depth_pb2.MatteResponse:
        image = await self.rt.io.image(request.image, "image")
        mask = await self.rt.limiter.run(self.backend.matte, image, points=_points(request.matte_points))
        return depth_pb2.MatteResponse(mask=await self.rt.io.put_array(mask, temporary=True),
                                       check=_check_to_proto(check_matte(mask)))


def _points(points) -> list[tuple[float, float, bool]]:
    return [(p.x, p.y, p.keep) for p in points]


def _has_matte(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[2] == 4 and int(image[..., 3].min()) < 255


def _check_to_proto(check: MatteCheck) -> depth_pb2.MatteCheck:
    return depth_pb2.MatteCheck(coverage=check.coverage, border_fraction=check.border_fraction,
                                fragments=check.fragments, warning=check.warning or "")


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = DepthServicer(backend, runtime)
    return [(depth_pb2_grpc.add_DepthServicer_to_server, servicer)], backend.load


def main() -> None:
    """``glimpse3d-depth``: serve until SIGTERM (config from GLIMPSE3D_*)."""
    service.main("depth", [SERVICE_NAME], build)
