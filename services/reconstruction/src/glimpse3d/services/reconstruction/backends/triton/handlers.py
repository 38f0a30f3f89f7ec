"""Server side of the ``reconstruction_triposr`` and ``reconstruction_lgm`` Triton models: the
in-process ``triposr`` / ``lgm`` backend behind the tensor contract of :mod:`.backend`."""

from __future__ import annotations

import numpy as np

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import array_to_camera, array_to_cameras, json_tensor, splat_to_tensors, tensor_json
from glimpse3d.services.reconstruction.api import ExtraView


def tensors_to_views(inputs: Tensors) -> list[ExtraView]:
    if "VIEW_RGB" not in inputs:
        return []
    rgb, cameras = inputs["VIEW_RGB"], array_to_cameras(require(inputs, "VIEW_CAMERAS"), "VIEW_CAMERAS")
    masks = inputs.get("VIEW_MASK")
    if rgb.ndim != 4 or rgb.shape[0] != len(cameras) or (masks is not None and masks.shape != rgb.shape[:3]):
        raise InvalidInput(f"VIEW_RGB {list(rgb.shape)}, VIEW_CAMERAS and VIEW_MASK disagree on the views",
                           field="VIEW_RGB")
    return [ExtraView(camera=cam, rgb=rgb[i],
                      mask=None if masks is None or np.isnan(masks[i]).all() else masks[i])
            for i, cam in enumerate(cameras)]


class _ReconstructionHandler(Handler):
    registry = "glimpse3d.services.reconstruction.api:REGISTRY"

    def run(self, inputs: Tensors) -> Tensors:
        params = tensor_json(inputs.get("PARAMS"))
        result = self.backend.reconstruct(
            require(inputs, "IMAGE"), require(inputs, "DEPTH"), inputs.get("MASK"),
            array_to_camera(require(inputs, "CAMERA")), tensors_to_views(inputs), fit_steps=params.get("fit_steps", 0),
            max_gaussians=params.get("max_gaussians", 0), seed=params.get("seed", 0))
        return {**splat_to_tensors(result.splat), "METRICS": json_tensor(result.metrics)}


class TripoSRHandler(_ReconstructionHandler):
    backend_name = "triposr"


class LGMHandler(_ReconstructionHandler):
    backend_name = "lgm"
