"""Depth on Triton: the ``triton`` backend (client) and the handlers of its models (server).

Model ``depth_dpt`` runs the ``dpt`` backend (IMAGE, CAMERA -> DEPTH, MASK); model ``depth_matting``
runs the learned matting (IMAGE, POINTS -> MASK). With the option ``matting_model`` the matte comes
from ``depth_matting`` and is handed to ``depth_dpt`` as the photo's alpha; without it the matte is
the one ``depth_dpt`` makes. Tensor tables: docs/backends/depth.md ("On Triton"); the server side:
docs/triton.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import field_validator

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.triton.client import TritonBackendOptions, TritonMixin
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import array_to_camera, camera_to_array
from glimpse3d.services.depth.api import DepthBackend, DepthResult

MODEL = "depth_dpt"
MATTING_MODEL = "depth_matting"


def points_to_array(points: Sequence[tuple[float, float, bool]]) -> np.ndarray:
    """[(x, y, keep)] -> FP32 [N, 3] (keep as 1 / 0)."""
    return np.asarray([(float(x), float(y), 1.0 if keep else 0.0) for x, y, keep in points], np.float32).reshape(-1, 3)


def array_to_points(array: np.ndarray) -> list[tuple[float, float, bool]]:
    a = np.asarray(array, np.float32)
    if a.ndim != 2 or a.shape[1] != 3:
        raise InvalidInput(f"POINTS must be [N, 3] (x, y, keep), got {list(a.shape)}", field="POINTS")
    return [(float(x), float(y), bool(k > 0.5)) for x, y, k in a]


class TritonDepthOptions(TritonBackendOptions):
    """``matting_model``: the Triton model of the learned matte; empty: the matte ``depth_dpt`` makes."""

    matting_model: str = ""

    @field_validator("matting_model")
    @classmethod
    def _matting_model(cls, value: str) -> str:
        if value and not all(c.isalnum() or c in "_-." for c in value):
            raise ValueError("must be a Triton model name")
        return value


class TritonDepthBackend(TritonMixin, DepthBackend):
    """Depth from the ``depth_dpt`` model in Triton (module docstring)."""

    default_model = MODEL
    Options = TritonDepthOptions
    options: TritonDepthOptions

    def _setup(self) -> None:
        super()._setup()
        self.matting = self.triton_model(self.options.matting_model) if self.options.matting_model else None

    def _load(self) -> None:
        if self.matting is not None:
            self.matting.wait_ready()
        super()._load()

    def _matte(self, image: np.ndarray, points: list[tuple[float, float, bool]]) -> np.ndarray:
        if self.matting is None:
            return super()._matte(image, points)
        inputs = {"IMAGE": image}
        if points:
            inputs["POINTS"] = points_to_array(points)
        return self.matting.infer(inputs, ["MASK"])["MASK"].astype(np.float32)

    def _estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        img = image
        if self.matting is not None and not (img.shape[2] == 4 and int(img[..., 3].min()) < 255):
            alpha = np.round(np.clip(self._matte(img, []), 0.0, 1.0) * 255.0).astype(np.uint8)
            img = np.ascontiguousarray(np.dstack([img[..., :3], alpha]))
        out = self.triton.infer({"IMAGE": img, "CAMERA": camera_to_array(camera)}, ["DEPTH", "MASK"])
        return DepthResult(depth=out["DEPTH"].astype(np.float32), mask=out["MASK"].astype(np.float32))


class DepthHandler(Handler):
    """Server side of ``depth_dpt``: the in-process ``dpt`` backend."""

    registry = "glimpse3d.services.depth.api:REGISTRY"
    backend_name = "dpt"

    def run(self, inputs: Tensors) -> Tensors:
        result = self.backend.estimate(require(inputs, "IMAGE"), array_to_camera(require(inputs, "CAMERA")))
        return {"DEPTH": result.depth.astype(np.float32), "MASK": result.mask.astype(np.float32)}


class MattingHandler(Handler):
    """Server side of ``depth_matting``: the ``silhouette`` backend's ``matte`` with the learned matting its
    ``backend_options`` name (``{"matting": "matting/sam2.1-hiera-tiny"}``)."""

    registry = "glimpse3d.services.depth.api:REGISTRY"
    backend_name = "silhouette"

    def load(self) -> None:
        if not self.options.get("matting"):
            raise InvalidInput("depth_matting needs backend_options {\"matting\": \"<model>\"}", field="matting")
        super().load()

    def run(self, inputs: Tensors) -> Tensors:
        points = array_to_points(inputs["POINTS"]) if "POINTS" in inputs else []
        return {"MASK": self.backend.matte(require(inputs, "IMAGE"), points=points).astype(np.float32)}
