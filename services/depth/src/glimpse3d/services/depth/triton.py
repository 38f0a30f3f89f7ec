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
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.triton.client import TritonBacked
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import array_to_camera, camera_to_array
from glimpse3d.services.depth.backends import DepthResult

MODEL = "depth_dpt"


class TritonDepthBackend(TritonBacked):
    """Depth from the ``depth_dpt`` model in Triton (options: :class:`~glimpse3d.core.triton.client.TritonOptions`
    fields and ``model``)."""

    default_model = MODEL

    def estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        out = self.triton.infer({"IMAGE": np.ascontiguousarray(image, np.uint8), "CAMERA": camera_to_array(camera)},
                                ["DEPTH", "MASK"])
        return DepthResult(depth=out["DEPTH"].astype(np.float32), mask=out["MASK"].astype(np.float32))


class DepthHandler(Handler):
    """Server side of ``depth_dpt``: the in-process ``dpt`` backend."""

    registry = "glimpse3d.services.depth.backends:REGISTRY"
    backend_name = "dpt"

    def run(self, inputs: Tensors) -> Tensors:
        result = self.backend.estimate(require(inputs, "IMAGE"), array_to_camera(require(inputs, "CAMERA")))
        return {"DEPTH": result.depth.astype(np.float32), "MASK": result.mask.astype(np.float32)}
