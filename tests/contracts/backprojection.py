"""The backprojection service's contract: ``refine`` fuses a small view into a small splat."""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import grpc
import numpy as np

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.formats import read_ply, splat_to_ply_bytes
from glimpse3d.core.images import decode_npy, encode_png
from glimpse3d.core.splat import Splat
from glimpse3d.core.synthetic import render_image, textured_object
from glimpse3d.services.backprojection import server
from glimpse3d.services.backprojection.api import BackprojectionBackend, RefineOptions, RefineResult
from glimpse3d.v1 import backprojection_pb2, backprojection_pb2_grpc

from . import BackendContract

SIZE = 32


@cache
def _scene() -> tuple[Splat, Camera, np.ndarray]:
    """(splat, camera, view uint8 [SIZE, SIZE, 3]): the splat's own render, so a CLIP check passes."""
    splat = textured_object(seed=0, n=300)
    camera = orbit_camera(20.0, 10.0, 2.7, width=SIZE, height=SIZE)
    return splat, camera, render_image(splat, camera, background=(1.0, 1.0, 1.0))


class BackprojectionContract(BackendContract):
    service = "backprojection"
    api: ClassVar[type] = BackprojectionBackend
    server_module = server
    stub = backprojection_pb2_grpc.BackprojectionStub

    def get_dummy_inputs(self, seed: int = 0) -> dict[str, Any]:
        splat, camera, view = _scene()
        return {"splat": splat, "view": view, "camera": camera, "view_depth": None, "confidence": None,
                "options": RefineOptions(steps=2, seed=seed), "reference": None}

    def call(self, backend: Any, inputs: dict[str, Any]) -> RefineResult:
        return backend.refine(**inputs)

    def check_outputs(self, result: Any, inputs: dict[str, Any]) -> None:
        n = inputs["splat"].num_gaussians
        assert isinstance(result, RefineResult) and result.splat.num_gaussians == n
        conf = result.confidence
        assert conf.shape == (n,) and conf.dtype == np.float32 and np.isfinite(conf).all() and conf.min() >= 0
        r = result.report
        assert 0.0 <= r.accepted_fraction <= 1.0 and r.steps in (0, inputs["options"].steps)
        assert r.rejected == (r.steps == 0) and r.clip_note
        assert r.clip_score is None or -1.0 <= r.clip_score <= 1.0

    def assert_same(self, a: Any, b: Any) -> None:
        assert a.splat.allclose(b.splat, atol=0)
        np.testing.assert_array_equal(a.confidence, b.confidence)
        assert a.report == b.report

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        good = self.get_dummy_inputs()
        return [
            ({**good, "view": np.zeros((SIZE, SIZE + 1, 3), np.uint8)}, "view"),
            ({**good, "view_depth": np.full((SIZE, SIZE), np.nan, np.float32)}, "view_depth"),
            ({**good, "confidence": np.zeros(7, np.float32)}, "confidence"),
            ({**good, "reference": np.zeros((4, 4), np.uint8)}, "reference"),
            ({**good, "camera": "front"}, "camera"),
            ({**good, "splat": None}, "splat"),
            ({**good, "options": {"steps": 2}}, "options"),
        ]

    async def grpc_scenario(self, stub: Any, store: FileArtifactStore) -> None:
        splat, camera, view = _scene()

        def put(data: bytes, media: str) -> Any:
            return convert.artifact_to_proto(store.put(data, media))

        req = backprojection_pb2.RefineRequest(
            splat=put(splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply"),
            view=put(encode_png(view), "image/png"), camera=convert.camera_to_proto(camera),
            options=backprojection_pb2.RefineOptions(steps=2, seed=5))
        resp = await stub.Refine(req)
        assert read_ply(store.get(convert.artifact_from_proto(resp.splat))).num_gaussians == splat.num_gaussians
        conf = decode_npy(store.get(convert.artifact_from_proto(resp.confidence)), field="confidence")
        assert conf.shape == (splat.num_gaussians,)
        assert resp.report.steps in (0, 2) and resp.report.clip_note
        assert (await stub.Refine(req)).splat.sha256 == resp.splat.sha256  # same seed -> identical bytes
        req.camera.CopyFrom(convert.camera_to_proto(camera.with_size(SIZE // 2, SIZE // 2)))
        try:
            await stub.Refine(req)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "view" in err.details()
        else:
            raise AssertionError("a view of another size than its camera was accepted")
