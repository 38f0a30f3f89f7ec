"""Novel views on Triton: the ``triton`` backend (client) and the ``multiview_zero123`` model's
handler (server), which runs the ``zero123`` backend inside Triton.

==================  ======  ===============  =================================================
tensor              type    shape            meaning
==================  ======  ===============  =================================================
IMAGE               UINT8   [H, W, 3]        the photo
MASK (optional)     FP32    [H, W]           its matte in [0, 1]
INPUT_CAMERA        FP64    [22]             the photo's camera
CAMERAS             FP64    [N, 22]          the views wanted
PARAMS              UINT8   [L]              JSON {"seed", "steps"}
RGB                 UINT8   [N, h, w, 3]     the views, in camera order
VIEW_MASK           FP32    [N, h, w]        their mattes
==================  ======  ===============  =================================================

The splat is not sent (Zero-1-to-3 works from the photo alone). No dynamic batching: a request
already denoises all its views as one batch, with its own seed.
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core.splat import Splat
from glimpse3d.core.triton.client import TritonMixin
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import (
    array_to_camera,
    array_to_cameras,
    camera_to_array,
    cameras_to_array,
    json_tensor,
    tensor_json,
)
from glimpse3d.services.multiview.api import GeneratedView, MultiviewBackend, ViewRequest

MODEL = "multiview_zero123"


class TritonMultiviewBackend(TritonMixin, MultiviewBackend):
    """Views from ``multiview_zero123`` in Triton."""

    default_model = MODEL

    def _generate(self, req: ViewRequest, splat: Splat | None) -> list[GeneratedView]:
        image = np.rint(req.image * 255.0).astype(np.uint8)  # exact for uint8 photos
        out = self.triton.infer(
            {"IMAGE": np.ascontiguousarray(image), "MASK": req.mask,
             "INPUT_CAMERA": camera_to_array(req.input_camera), "CAMERAS": cameras_to_array(req.cameras),
             "PARAMS": json_tensor({"seed": req.seed, "steps": req.steps})},
            ["RGB", "VIEW_MASK"])
        return [GeneratedView(rgb=out["RGB"][i], mask=out["VIEW_MASK"][i].astype(np.float32))
                for i in range(out["RGB"].shape[0])]


class Zero123Handler(Handler):
    """Server side of ``multiview_zero123``: the in-process ``zero123`` backend."""

    registry = "glimpse3d.services.multiview.api:REGISTRY"
    backend_name = "zero123"

    def run(self, inputs: Tensors) -> Tensors:
        params = tensor_json(inputs.get("PARAMS"))
        views = self.backend.generate(
            require(inputs, "IMAGE"), inputs.get("MASK"),
            array_to_camera(require(inputs, "INPUT_CAMERA"), "INPUT_CAMERA"),
            None, array_to_cameras(require(inputs, "CAMERAS"), "CAMERAS"),
            seed=params.get("seed", 0), steps=params.get("steps", 0))
        return {"RGB": np.stack([v.rgb for v in views]).astype(np.uint8),
                "VIEW_MASK": np.stack([v.mask for v in views]).astype(np.float32)}
