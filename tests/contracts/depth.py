"""The depth service's contract: ``Estimate`` a photo's matte and camera-space depth (and ``Matte``)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.images import decode_npy, encode_png
from glimpse3d.services.depth import server
from glimpse3d.services.depth.api import DepthBackend, DepthResult
from glimpse3d.v1 import common_pb2, depth_pb2, depth_pb2_grpc

from . import BackendContract

W, H = 48, 40  # not square


def _camera(width: int = W, height: int = H) -> Camera:
    return orbit_camera(0.0, 0.0, 2.7, width=width, height=height)


def _photo(seed: int = 0) -> np.ndarray:
    """RGB uint8 [H, W, 3]: a coloured disc (its colour from ``seed``) on a plain grey background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W, 3), (200, 200, 196), np.uint8)
    img[(xx - 25) ** 2 + (yy - 19) ** 2 <= 13**2] = rng.integers(0, 120, 3, dtype=np.uint8)
    return img


class DepthContract(BackendContract):
    service = "depth"
    api = DepthBackend
    server_module = server
    stub = depth_pb2_grpc.DepthStub

    def get_dummy_inputs(self, seed: int = 0) -> dict[str, Any]:
        return {"image": _photo(seed), "camera": _camera()}

    def call(self, backend: Any, inputs: dict[str, Any]) -> DepthResult:
        return backend.estimate(**inputs)

    def check_outputs(self, result: Any, inputs: dict[str, Any]) -> None:
        assert isinstance(result, DepthResult)
        assert result.depth.shape == result.mask.shape == (H, W)
        assert result.depth.dtype == result.mask.dtype == np.float32
        assert 0.0 <= result.mask.min() and result.mask.max() <= 1.0
        inside = result.mask >= 0.5
        assert inside.any() and (result.depth[~inside] == 0).all() and (result.depth[inside] > 0).all()

    def assert_same(self, a: Any, b: Any) -> None:
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.mask, b.mask)

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        good = self.get_dummy_inputs()
        cases: list[tuple[dict[str, Any], str]] = [
            ({"image": good["image"][..., :2]}, "image"),
            ({"image": [[1, 2, 3]]}, "image"),
            ({"image": np.zeros((H, W, 3), np.int32)}, "image"),
            ({"camera": _camera(W + 1, H)}, "camera"),
            ({"camera": "front"}, "camera"),
        ]
        return [(good | override, field) for override, field in cases]

    async def grpc_scenario(self, stub: Any, store: FileArtifactStore) -> None:
        image = convert.artifact_to_proto(store.put(encode_png(_photo()), "image/png"))
        req = depth_pb2.EstimateDepthRequest(image=image, camera=convert.camera_to_proto(_camera()))
        first = await stub.Estimate(req)
        assert first.backend == self.backend
        depth = decode_npy(store.get(convert.artifact_from_proto(first.depth)), field="depth")
        mask = decode_npy(store.get(convert.artifact_from_proto(first.mask)), field="mask")
        assert depth.shape == mask.shape == (H, W) and depth.dtype == mask.dtype == np.float32
        assert (depth[mask < 0.5] == 0).all() and (depth[mask >= 0.5] > 0).all()
        assert (await stub.Estimate(req)).depth.sha256 == first.depth.sha256
        matte = await stub.Matte(depth_pb2.MatteRequest(image=image))
        np.testing.assert_array_equal(decode_npy(store.get(convert.artifact_from_proto(matte.mask)), field="mask"),
                                      mask)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Estimate(depth_pb2.EstimateDepthRequest(
                image=image, matte_points=[common_pb2.MattePoint(x=1.5, y=0.5, keep=True)]))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
