"""The reconstruction service's contract: ``Reconstruct`` a photo (+ depth, mask, extra views) into a
splat, and ``Render`` a splat."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import grpc
import numpy as np
import pytest

from glimpse3d.core import convert, synthetic
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import Camera, orbit_camera, turned_about_up
from glimpse3d.core.images import decode_image, decode_npy, encode_npy, encode_png
from glimpse3d.core.splat import Splat
from glimpse3d.services.reconstruction import server
from glimpse3d.services.reconstruction.api import ExtraView, ReconstructionBackend, ReconstructionResult, RenderedImage
from glimpse3d.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc

from . import BackendContract

SIZE = 64
MAX_GAUSSIANS = 400


@cache
def _scene() -> dict[str, Any]:
    """The synthetic object photographed from the default camera (RGB, depth, matte) and the three
    views at +90/+180/+270 degrees that the ``lgm`` backend needs (the others ignore them)."""
    obj = synthetic.textured_object(seed=1, n=1500)
    camera = orbit_camera(0.0, 0.0, 2.7, width=SIZE, height=SIZE)
    rgba = synthetic.render_image(obj, camera, background=(0.9, 0.9, 0.9), rgba=True)
    depth, alpha = synthetic.render_depth_alpha(obj, camera)
    views = [ExtraView(c, synthetic.render_image(obj, c)[..., :3])
             for c in (turned_about_up(camera, a) for a in (90.0, 180.0, 270.0))]
    return {"image": rgba[..., :3], "depth": depth, "mask": alpha, "camera": camera, "views": views}


class ReconstructionContract(BackendContract):
    service = "reconstruction"
    api = ReconstructionBackend
    server_module = server
    stub = reconstruction_pb2_grpc.ReconstructionStub

    def get_dummy_inputs(self, seed: int = 0) -> dict[str, Any]:
        return {**_scene(), "fit_steps": 2, "max_gaussians": MAX_GAUSSIANS, "seed": seed}

    def call(self, backend: Any, inputs: dict[str, Any]) -> ReconstructionResult:
        return backend.reconstruct(**inputs)

    def check_outputs(self, result: Any, inputs: dict[str, Any]) -> None:
        assert isinstance(result, ReconstructionResult) and isinstance(result.splat, Splat)
        splat = result.splat
        assert 0 < splat.num_gaussians <= inputs["max_gaussians"]
        assert splat.means.dtype == np.float32 and np.isfinite(splat.means).all()
        assert result.metrics["num_gaussians"] == splat.num_gaussians
        assert math.isfinite(result.metrics["input_view_psnr_db"])

    def assert_same(self, a: Any, b: Any) -> None:
        assert a.splat.allclose(b.splat, atol=0)
        assert a.metrics["input_view_psnr_db"] == b.metrics["input_view_psnr_db"]

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        good = self.get_dummy_inputs()
        nan_depth = good["depth"].copy()
        nan_depth[SIZE // 2, SIZE // 2] = np.nan
        cases: list[tuple[dict[str, Any], str]] = [
            ({"mask": good["mask"][:-1]}, "mask"),
            ({"mask": np.zeros_like(good["mask"])}, "mask"),
            ({"depth": nan_depth}, "depth"),
            ({"camera": orbit_camera(0.0, 0.0, 2.7, width=SIZE + 1, height=SIZE)}, "camera"),
            ({"fit_steps": 5001}, "fit_steps"),
            ({"max_gaussians": -1}, "max_gaussians"),
            ({"seed": -3}, "seed"),
            ({"views": [good["views"][0]] * 17}, "views"),
        ]
        return [(good | override, field) for override, field in cases]

    def test_render_has_declared_shapes(self, loaded: Any) -> None:
        splat = self.call(loaded, self.get_dummy_inputs()).splat
        cameras: list[Camera] = [orbit_camera(30.0, 10.0, 2.7, width=40, height=32),
                                 orbit_camera(200.0, -5.0, 3.0, width=24, height=24)]
        views = loaded.render(splat, cameras, background=(0.2, 0.4, 0.6))
        assert len(views) == 2 and all(isinstance(v, RenderedImage) for v in views)
        for view, cam in zip(views, cameras, strict=True):
            assert view.rgb.shape == (cam.height, cam.width, 3) and view.rgb.dtype == np.float32
            assert view.depth.shape == view.alpha.shape == (cam.height, cam.width)
            assert 0.0 <= view.alpha.min() and view.alpha.max() <= 1.0

    async def grpc_scenario(self, stub: Any, store: FileArtifactStore) -> None:
        def put(data: bytes, media: str) -> common_pb2.ArtifactRef:
            return convert.artifact_to_proto(store.put(data, media))

        scene = _scene()
        views = [reconstruction_pb2.ViewImage(camera=convert.camera_to_proto(v.camera),
                                              rgb=put(encode_png(v.rgb), "image/png")) for v in scene["views"]]
        request = reconstruction_pb2.ReconstructRequest(
            image=put(encode_png(scene["image"]), "image/png"),
            depth=put(encode_npy(scene["depth"]), "application/x-npy"),
            mask=put(encode_npy(scene["mask"]), "application/x-npy"),
            camera=convert.camera_to_proto(scene["camera"]), views=views, fit_steps=2,
            max_gaussians=MAX_GAUSSIANS, seed=7)
        resp = await stub.Reconstruct(request)
        assert resp.backend == self.backend and 0 < resp.num_gaussians <= MAX_GAUSSIANS
        assert math.isfinite(resp.input_view_psnr_db)
        view = common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=45, width=48, height=40))
        rendered = await stub.Render(reconstruction_pb2.RenderRequest(splat=resp.splat, views=[view]))
        assert decode_image(store.get(convert.artifact_from_proto(rendered.views[0].rgb))).shape == (40, 48, 3)
        alpha = decode_npy(store.get(convert.artifact_from_proto(rendered.views[0].alpha)), field="alpha")
        assert alpha.shape == (40, 48)
        request.max_gaussians = 10**9
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Reconstruct(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
