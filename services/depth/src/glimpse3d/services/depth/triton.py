"""Depth on Triton: the ``triton`` backend (client) and the ``depth_dpt`` model's handler (server).

Model ``depth_dpt`` (``deploy/triton/depth_dpt``) runs :class:`~.dpt.DptDepthBackend` inside Triton:

=========  ======  ===============  ==========================================================
tensor     type    shape            meaning
=========  ======  ===============  ==========================================================
IMAGE      UINT8   [H, W, 3|4]      the photo (alpha, when not all opaque, is the matte)
CAMERA     FP64    [22]             its camera (:func:`~glimpse3d.core.triton.tensors.camera_to_array`)
DEPTH      FP32    [H, W]           camera-space z in world units; 0 outside the mask
MASK       FP32    [H, W]           foreground matte in [0, 1]
=========  ======  ===============  ==========================================================

No dynamic batching: photos come in different sizes and each carries its own matting and metric
fit, so requests run one at a time per instance; scale with instances instead.

Model ``depth_matting`` (``deploy/triton/depth_matting``) runs the learned matting
(:class:`~.matting.Sam2Matting`, through the ``silhouette`` backend's ``matte``) inside Triton:

=========  ======  ===============  ==========================================================
tensor     type    shape            meaning
=========  ======  ===============  ==========================================================
IMAGE      UINT8   [H, W, 3|4]      the photo (alpha, when not all opaque, is the matte as is)
POINTS     FP32    [N, 3]           the user's corrections (x, y fractions, keep 1 / remove 0); N >= 0
MASK       FP32    [H, W]           foreground matte in [0, 1]
=========  ======  ===============  ==========================================================

The ``triton`` backend uses it when its option ``matting_model`` names it: the matte comes from that
model and goes to ``depth_dpt`` as the photo's alpha (so both models see one matte).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.triton.client import DEFAULT_URL, TritonBacked, TritonModel, TritonOptions
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import array_to_camera, camera_to_array
from glimpse3d.services.depth.backends import DepthResult
from glimpse3d.services.depth.silhouette import estimate_mask

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


class TritonDepthBackend(TritonBacked):
    """Depth from the ``depth_dpt`` model in Triton (options: :class:`~glimpse3d.core.triton.client.TritonOptions`
    fields, ``model``, and ``matting_model``: the Triton model of the learned matte, empty for the matte
    ``depth_dpt`` makes itself)."""

    default_model = MODEL

    def __init__(self, model: str = "", url: str = DEFAULT_URL, timeout_s: float = 600.0, retry_s: float = 60.0,
                 ready_timeout_s: float = 900.0, matting_model: str = "") -> None:
        super().__init__(model, url, timeout_s, retry_s, ready_timeout_s)
        self.matting = (TritonModel(matting_model, TritonOptions(url, timeout_s, retry_s, ready_timeout_s))
                        if matting_model else None)

    def load(self) -> None:
        if self.matting is not None:
            self.matting.wait_ready()
        super().load()

    def matte(self, image: np.ndarray, points: Sequence[tuple[float, float, bool]] = ()) -> np.ndarray:
        """The learned matte from ``matting_model``; without one, the weight-free matte (computed here)."""
        if self.matting is None:
            return estimate_mask(image, points=points)
        inputs = {"IMAGE": np.ascontiguousarray(image, np.uint8)}
        if points:
            inputs["POINTS"] = points_to_array(points)
        out = self.matting.infer(inputs, ["MASK"])
        return out["MASK"].astype(np.float32)

    def estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        img = np.ascontiguousarray(image, np.uint8)
        if self.matting is not None and not (img.ndim == 3 and img.shape[2] == 4 and int(img[..., 3].min()) < 255):
            alpha = np.round(np.clip(self.matte(img), 0.0, 1.0) * 255.0).astype(np.uint8)
            img = np.ascontiguousarray(np.dstack([img[..., :3], alpha]))
        out = self.triton.infer({"IMAGE": img, "CAMERA": camera_to_array(camera)}, ["DEPTH", "MASK"])
        return DepthResult(depth=out["DEPTH"].astype(np.float32), mask=out["MASK"].astype(np.float32))


class DepthHandler(Handler):
    """Server side of ``depth_dpt``: the in-process ``dpt`` backend."""

    registry = "glimpse3d.services.depth.backends:REGISTRY"
    backend_name = "dpt"

    def run(self, inputs: Tensors) -> Tensors:
        result = self.backend.estimate(require(inputs, "IMAGE"), array_to_camera(require(inputs, "CAMERA")))
        return {"DEPTH": result.depth.astype(np.float32), "MASK": result.mask.astype(np.float32)}


class MattingHandler(Handler):
    """Server side of ``depth_matting``: the ``silhouette`` backend's ``matte`` with the learned matting its
    ``backend_options`` name (``{"matting": "matting/sam2.1-hiera-tiny"}``)."""

    registry = "glimpse3d.services.depth.backends:REGISTRY"
    backend_name = "silhouette"

    def load(self) -> None:
        if not self.options.get("matting"):
            raise InvalidInput("depth_matting needs backend_options {\"matting\": \"<model>\"}", field="matting")
        super().load()

    def run(self, inputs: Tensors) -> Tensors:
        points = array_to_points(inputs["POINTS"]) if "POINTS" in inputs else []
        return {"MASK": self.backend.matte(require(inputs, "IMAGE"), points=points).astype(np.float32)}
