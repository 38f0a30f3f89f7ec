"""Reconstruction gRPC servicer: a thin adapter over a :class:`ReconstructionBackend`.

``ExportMesh`` is the service's own method, served whichever backend is configured (``triton`` too):
it meshes a splat with :func:`glimpse3d.core.mesh.splat_to_mesh` in this process (torch and the
rasterizer live here, not in the gateway; docs/mesh.md), in the same compute slots as the backend.
The last MESH_CACHE meshes are kept per (tenant, splat sha256), so that a version asked for in the
other mesh format is only written, not meshed again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from glimpse3d.core import convert, service
from glimpse3d.core.artifacts import current_tenant
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import SplatFormat, formats
from glimpse3d.core.formats.mesh import mesh_to_glb, mesh_to_obj_zip
from glimpse3d.core.rpc import Registration
from glimpse3d.core.service import ServiceRuntime, backend_from_settings
from glimpse3d.core.splat import Splat
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
MESH_CACHE = 4  # meshes kept (a few MB each: up to 20 000 faces and a 1024² texture)
# How each mesh format writes a mesh already made (a format not listed meshes the splat itself).
MESH_WRITERS: dict[str, Callable[[Any], bytes]] = {"obj": mesh_to_obj_zip, "mesh-glb": mesh_to_glb}


def _check_limit(value: int, limit: int, field: str) -> None:
    if value > limit:
        raise InvalidInput(f"{field} must be at most {limit}, got {value}", field=field)


def _background(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (0.0, 0.0, 0.0)
    if len(values) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InvalidInput(f"background must be 3 values in [0, 1], got {list(values)}", field="background")
    return (float(values[0]), float(values[1]), float(values[2]))


def mesh_format(name: str) -> SplatFormat:
    """The export-only (mesh) format called ``name``; InvalidInput naming ``format`` otherwise."""
    meshes = {fmt.name: fmt for fmt in formats() if fmt.export_only}
    if name not in meshes:
        raise InvalidInput(f"format must be one of the mesh formats {', '.join(meshes)}; got {name!r}",
                           field="format")
    return meshes[name]


class ReconstructionServicer(reconstruction_pb2_grpc.ReconstructionServicer):
    def __init__(self, backend: ReconstructionBackend, runtime: ServiceRuntime) -> None:
        self.backend = backend
        self.rt = runtime
        # (tenant, splat uri) -> its trimesh; the meshing under way per key, shared by concurrent calls.
        self._meshes: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._meshing: dict[tuple[str, str], asyncio.Future[Any]] = {}

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

    async def _mesh_of(self, splat: Splat, uri: str) -> Any:
        """The mesh of ``splat`` (read from ``uri``), made once while it is among the last MESH_CACHE.
        The URI is content-addressed (the store verifies the sha256 on reading): one URI, one splat."""
        from glimpse3d.core.mesh import splat_to_mesh

        key = (current_tenant() or "", uri)
        if key in self._meshes:
            self._meshes.move_to_end(key)
            return self._meshes[key]
        pending = self._meshing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self.rt.limiter.run(splat_to_mesh, splat))
            self._meshing[key] = pending
            pending.add_done_callback(lambda done: self._meshed(key, done))
        return await asyncio.shield(pending)  # a caller that goes away leaves it to the others

    def _meshed(self, key: tuple[str, str], done: asyncio.Future[Any]) -> None:
        self._meshing.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return
        self._meshes[key] = done.result()
        while len(self._meshes) > MESH_CACHE:
            self._meshes.popitem(last=False)

    async def ExportMesh(  # noqa: N802 - gRPC method name
        self, request: reconstruction_pb2.ExportMeshRequest, context: grpc.aio.ServicerContext
    ) -> reconstruction_pb2.ExportMeshResponse:
        spec = mesh_format(request.format)
        splat = await self.rt.io.splat(request.splat, "splat")
        start = time.perf_counter()
        write = MESH_WRITERS.get(spec.name)
        if write is None:
            data = await self.rt.limiter.run(spec.writer, splat)
        else:
            data = await self.rt.limiter.run(write, await self._mesh_of(splat, request.splat.uri))
        seconds = time.perf_counter() - start
        # Durable like a version's splat: the gateway hands its reference out as the download.
        ref = await asyncio.to_thread(self.rt.io.store.put, data, spec.media_type)
        return reconstruction_pb2.ExportMeshResponse(mesh=convert.artifact_to_proto(ref), seconds=seconds)


def build(runtime: ServiceRuntime) -> tuple[Registration, Callable[[], None]]:
    backend = backend_from_settings(REGISTRY, runtime.settings, DEFAULT_BACKEND)
    servicer = ReconstructionServicer(backend, runtime)
    return [(reconstruction_pb2_grpc.add_ReconstructionServicer_to_server, servicer)], backend.load


def main() -> None:
    """``glimpse3d-reconstruction``: serve until SIGTERM (config from GLIMPSE3D_*)."""
    service.main("reconstruction", [SERVICE_NAME], build)
