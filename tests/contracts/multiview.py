"""The multiview service's contract: ``Generate`` views of the photo's object at target cameras."""

from __future__ import annotations

from functools import cache
from typing import Any

import grpc
import numpy as np
import pytest

from glimpse3d.core import convert, synthetic
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.formats import splat_to_ply_bytes
from glimpse3d.core.images import decode_image, decode_npy, encode_npy, encode_png
from glimpse3d.core.splat import Splat
from glimpse3d.services.multiview import server
from glimpse3d.services.multiview.api import GeneratedView, MultiviewBackend
from glimpse3d.v1 import common_pb2, multiview_pb2, multiview_pb2_grpc

from . import BackendContract

SIZE = 32


@cache
def _scene() -> tuple[Splat, Camera, np.ndarray]:
    """(the object, the photo's camera, the photo RGBA uint8 [SIZE, SIZE, 4])."""
    splat = synthetic.textured_object(seed=1, n=1500)
    camera = synthetic.default_input_camera(SIZE)
    return splat, camera, synthetic.render_image(splat, camera, background=(0.9, 0.9, 0.9), rgba=True)


def _targets() -> list[Camera]:
    return [orbit_camera(a, 15.0, 2.7, width=40, height=24) for a in (90.0, 200.0)]


class MultiviewContract(BackendContract):
    service = "multiview"
    api = MultiviewBackend
    server_module = server
    stub = multiview_pb2_grpc.MultiviewStub

    def get_dummy_inputs(self, seed: int = 0) -> dict[str, Any]:
        splat, camera, rgba = _scene()
        return {"image": rgba[..., :3], "mask": rgba[..., 3].astype(np.float32) / 255.0, "input_camera": camera,
                "splat": splat, "cameras": _targets(), "seed": seed}

    def call(self, backend: Any, inputs: dict[str, Any]) -> list[GeneratedView]:
        return backend.generate(**inputs)

    def check_outputs(self, result: Any, inputs: dict[str, Any]) -> None:
        assert isinstance(result, list) and len(result) == len(inputs["cameras"])
        for view, cam in zip(result, inputs["cameras"], strict=True):
            assert isinstance(view, GeneratedView)
            assert view.rgb.shape == (cam.height, cam.width, 3) and view.rgb.dtype == np.uint8
            assert view.mask.shape == (cam.height, cam.width) and view.mask.dtype == np.float32
            assert 0.0 <= view.mask.min() and view.mask.max() <= 1.0

    def assert_same(self, a: Any, b: Any) -> None:
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.rgb, y.rgb)
            np.testing.assert_array_equal(x.mask, y.mask)

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        good = self.get_dummy_inputs()
        cam = good["cameras"][0]
        cases: list[tuple[dict[str, Any], str]] = [
            ({"cameras": []}, "views"),
            ({"cameras": [cam] * 17}, "views"),
            ({"cameras": [cam, "side"]}, "views[1]"),
            ({"steps": 201}, "steps"),
            ({"seed": -1}, "seed"),
            ({"image": good["image"][..., :2]}, "image"),
            ({"mask": good["mask"][1:]}, "mask"),
            ({"mask": good["mask"] + 2.0}, "mask"),
            ({"input_camera": None}, "input_camera"),
        ]
        return [(good | override, field) for override, field in cases]

    async def grpc_scenario(self, stub: Any, store: FileArtifactStore) -> None:
        def put(data: bytes, media: str) -> common_pb2.ArtifactRef:
            return convert.artifact_to_proto(store.put(data, media))

        splat, camera, rgba = _scene()
        views = [common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=a, elevation_deg=10, width=40, height=24))
                 for a in (120, 240)]
        req = multiview_pb2.GenerateViewsRequest(
            image=put(encode_png(rgba[..., :3]), "image/png"),
            mask=put(encode_npy(rgba[..., 3].astype(np.float32) / 255.0), "application/x-npy"),
            input_camera=convert.camera_to_proto(camera),
            splat=put(splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply"), views=views, seed=9)
        first = await stub.Generate(req)
        assert first.backend == self.backend and len(first.views) == 2
        rgb = decode_image(store.get(convert.artifact_from_proto(first.views[1].rgb)))
        matte = decode_npy(store.get(convert.artifact_from_proto(first.views[1].mask)), field="mask")
        assert rgb.shape == (24, 40, 3) and matte.shape == (24, 40) and matte.dtype == np.float32
        again = await stub.Generate(req)
        assert [v.rgb.sha256 for v in again.views] == [v.rgb.sha256 for v in first.views]
        del req.views[:]
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Generate(req)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


