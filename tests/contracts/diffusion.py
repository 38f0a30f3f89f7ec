"""The diffusion service's contract: ``enhance`` of a small view with depth, alpha and a photo."""

from __future__ import annotations

from typing import Any, ClassVar

import grpc
import numpy as np

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.images import decode_image, encode_npy, encode_png
from glimpse3d.services.diffusion import server
from glimpse3d.services.diffusion.api import DiffusionBackend
from glimpse3d.v1 import diffusion_pb2, diffusion_pb2_grpc

from . import BackendContract

H, W = 40, 52  # odd aspect: the learned backends' canvas pads and restores it


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(view uint8 [H, W, 3], depth [H, W], alpha [H, W], photo uint8 [48, 48, 3]): a textured slanted box
    on a plain background, and a photo of a red object on grey."""
    rng = np.random.default_rng(0)
    view = np.full((H, W, 3), 200, np.uint8)
    box = (slice(6, 34), slice(8, 44))
    view[box] = rng.integers(40, 160, (28, 36, 3), dtype=np.uint8)
    depth = np.zeros((H, W), np.float32)
    depth[box] = np.linspace(2.0, 2.3, 36, dtype=np.float32)[None, :]  # no depth edge inside the box
    photo = np.full((48, 48, 3), 220, np.uint8)
    photo[10:38, 10:38] = (190, 50, 40)
    return view, depth, (depth > 0).astype(np.float32), photo


class DiffusionContract(BackendContract):
    service = "diffusion"
    api: ClassVar[type] = DiffusionBackend
    server_module = server
    stub = diffusion_pb2_grpc.DiffusionStub

    def get_dummy_inputs(self, seed: int = 0) -> dict[str, Any]:
        view, depth, alpha, photo = _scene()
        return {"view": view, "depth": depth, "alpha": alpha, "reference": photo, "prompt": "",
                "strength": 0.8, "steps": 4, "guidance": 5.0, "seed": seed}

    def call(self, backend: Any, inputs: dict[str, Any]) -> np.ndarray:
        args = dict(inputs)
        return backend.enhance(args.pop("view"), **args)

    def check_outputs(self, result: Any, inputs: dict[str, Any]) -> None:
        view = inputs["view"]
        assert isinstance(result, np.ndarray) and result.dtype == np.uint8 and result.shape == (*view.shape[:2], 3)
        background = inputs["alpha"] == 0
        np.testing.assert_array_equal(result[background], view[background])  # only the object is enhanced

    def assert_same(self, a: Any, b: Any) -> None:
        np.testing.assert_array_equal(a, b)

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        good = self.get_dummy_inputs()
        return [
            ({**good, "view": np.zeros((8, 8), np.uint8)}, "view"),
            ({**good, "depth": np.zeros((4, 4), np.float32)}, "depth"),
            ({**good, "alpha": np.full((H, W), 2.0, np.float32)}, "alpha"),
            ({**good, "reference": np.zeros((8, 8), np.uint8)}, "reference"),
            ({**good, "strength": 1.5}, "strength"),
            ({**good, "steps": 0}, "steps"),
            ({**good, "guidance": float("nan")}, "guidance"),
            ({**good, "seed": -1}, "seed"),
            ({**good, "prompt": "x" * 1001}, "prompt"),
        ]

    async def grpc_scenario(self, stub: Any, store: FileArtifactStore) -> None:
        view, depth, alpha, photo = _scene()

        def put(data: bytes, media: str) -> Any:
            return convert.artifact_to_proto(store.put(data, media))

        req = diffusion_pb2.EnhanceViewRequest(
            view=put(encode_png(view), "image/png"), depth=put(encode_npy(depth), "application/x-npy"),
            alpha=put(encode_npy(alpha), "application/x-npy"), reference=put(encode_png(photo), "image/png"),
            strength=0.8, steps=4, seed=11)  # guidance: the proto default
        first = await stub.Enhance(req)
        assert first.backend == self.backend
        out = decode_image(store.get(convert.artifact_from_proto(first.view)))
        assert out.shape == view.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[alpha == 0], view[alpha == 0])
        assert (await stub.Enhance(req)).view.sha256 == first.view.sha256  # same seed -> identical bytes
        req.seed = 12
        assert (await stub.Enhance(req)).view.sha256 != first.view.sha256
        req.strength = 1.5
        try:
            await stub.Enhance(req)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "strength" in err.details()
        else:
            raise AssertionError("strength 1.5 was accepted")
