"""Backprojection gRPC servicer: a thin adapter over MVCRM (:mod:`.mvcrm`)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from glimpse3d.core import convert, service
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.services.backprojection.api import (
    DEFAULT_BACKEND,
    REGISTRY,
    BackprojectionBackend,
    RefineOptions,
    TrustedView,
)
from glimpse3d.services.backprojection.pose import KnownView, PoseHint, find_pose
from glimpse3d.v1 import backprojection_pb2, backprojection_pb2_grpc

SERVICE_NAME = backprojection_pb2.DESCRIPTOR.services_by_name["Backprojection"].full_name


class BackprojectionServicer(backprojection_pb2_grpc.BackprojectionServicer):
    def __init__(self, backend: BackprojectionBackend, runtime: ServiceRuntime) -> None:
        self.backend = backend
        self.rt = runtime

    async def Refine(  # noqa: N802 - gRPC method name
        self, request: backprojection_pb2.RefineRequest, context: grpc.aio.ServicerContext
    ) -> backprojection_pb2.RefineResponse:
        options = RefineOptions.from_proto(request.options, self.backend.defaults)
        camera = convert.camera_from_proto(request.camera, "camera")
        view = await self.rt.io.image(request.view, "view")
        if view.shape[:2] != (camera.height, camera.width):
            raise InvalidInput(
                f"view is {view.shape[1]}x{view.shape[0]} but camera is {camera.width}x{camera.height}", field="view"
            )
        hw = (camera.height, camera.width)
        splat = await self.rt.io.splat(request.splat, "splat")
        view_depth = None
        if request.view_depth.uri:
            view_depth = await self.rt.io.array(request.view_depth, "view_depth", shape=hw)
        confidence = None
        if request.confidence.uri:
            confidence = await self.rt.io.array(request.confidence, "confidence", shape=(splat.num_gaussians,))
        reference = await self.rt.io.image(request.reference, "reference") if request.reference.uri else None
        trusted = [await self._trusted_view(t, f"trusted_views[{i}]") for i, t in enumerate(request.trusted_views)]
        photo_cameras = [convert.camera_from_proto(c, f"photo_cameras[{i}]")
                         for i, c in enumerate(request.photo_cameras)]
        result = await self.rt.limiter.run(
            self.backend.refine, splat, view[..., :3], camera, view_depth, confidence, options,
            reference=None if reference is None else reference[..., :3], trusted=trusted, photo_cameras=photo_cameras,
        )
        r = result.report
        report = backprojection_pb2.RefineReport(
            accepted_fraction=r.accepted_fraction, photometric_error_before=r.photometric_error_before,
            photometric_error_after=r.photometric_error_after, clip_note=r.clip_note, rejected=r.rejected,
            steps=r.steps, mean_confidence=r.mean_confidence, relift_replaced=r.relift_replaced,
            relift_added=r.relift_added,
        )
        if r.clip_score is not None:
            report.clip_score = r.clip_score
        return backprojection_pb2.RefineResponse(
            splat=await self.rt.io.put_splat(result.splat),
            confidence=await self.rt.io.put_array(result.confidence),
            report=report,
        )

    async def Pose(  # noqa: N802 - gRPC method name
        self, request: backprojection_pb2.PoseRequest, context: grpc.aio.ServicerContext
    ) -> backprojection_pb2.PoseResponse:
        field = request.field or "image"
        image = await self.rt.io.image(request.image, field)
        splat = await self.rt.io.splat(request.splat, "splat")
        mask = await self.rt.io.array(request.mask, f"{field}.mask", shape=image.shape[:2])
        hint = None
        if request.HasField("azimuth_deg"):
            elevation = request.elevation_deg if request.HasField("elevation_deg") else None
            try:
                hint = PoseHint(request.azimuth_deg, elevation)
            except InvalidInput as err:
                raise InvalidInput(f"{field}: {err.message}", field=f"{field}.{err.field}") from None
        elif request.HasField("elevation_deg"):
            raise InvalidInput(f"{field}: an elevation hint needs an azimuth hint too", field=f"{field}.azimuth_deg")
        fov = request.fov_y_deg or convert.DEFAULT_FOV_Y_DEG
        known = None
        if request.HasField("known_mask") != request.HasField("known_camera"):
            missing = "known_camera" if request.HasField("known_mask") else "known_mask"
            raise InvalidInput(f"a known view needs both known_mask and known_camera; {missing} is missing",
                               field=missing)
        if request.HasField("known_camera"):
            camera = convert.camera_from_proto(request.known_camera, "known_camera")
            known = KnownView(camera, await self.rt.io.array(request.known_mask, "known_mask",
                                                             shape=(camera.height, camera.width)))
        photo_cameras = [convert.camera_from_proto(c, f"photo_cameras[{i}]")
                         for i, c in enumerate(request.photo_cameras)]
        found = await self.rt.limiter.run(find_pose, splat, image[..., :3], mask, hint, field=field, fov_y_deg=fov,
                                          known=known, photo_cameras=photo_cameras)
        p = found.pose
        return backprojection_pb2.PoseResponse(
            camera=convert.camera_to_proto(found.camera), azimuth_deg=p.azimuth_deg, elevation_deg=p.elevation_deg,
            roll_deg=p.roll_deg, distance=p.distance, silhouette_iou=found.iou,
            photometric_error=found.photometric_error, hint_kept=found.hint_kept)

    async def _trusted_view(self, msg: backprojection_pb2.TrustedView, field: str) -> TrustedView:
        camera = convert.camera_from_proto(msg.camera, f"{field}.camera")
        image = await self.rt.io.image(msg.image, f"{field}.image")
        if image.shape[:2] != (camera.height, camera.width):
            raise InvalidInput(f"{field}.image is {image.shape[1]}x{image.shape[0]} but its camera is "
                               f"{camera.width}x{camera.height}", field=f"{field}.image")
        mask = await self.rt.io.array(msg.mask, f"{field}.mask", shape=(camera.height, camera.width))
        weight = msg.weight if msg.weight else 1.0
        try:
            return TrustedView(image[..., :3], camera, mask, weight)
        except InvalidInput as err:
            raise InvalidInput(err.message.replace("trusted view", field), field=field) from None


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = BackprojectionServicer(backend, runtime)
    return [(backprojection_pb2_grpc.add_BackprojectionServicer_to_server, servicer)], backend.load


def main() -> None:
    """``glimpse3d-backprojection``: serve until SIGTERM (config from GLIMPSE3D_*)."""
    service.main("backprojection", [SERVICE_NAME], build)
