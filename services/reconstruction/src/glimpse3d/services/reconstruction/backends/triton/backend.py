"""The ``triton`` reconstruction backend: ``reconstruction_triposr`` (default) or
``reconstruction_lgm`` served by Triton (their handlers: :mod:`.handlers`). Tensors:

==================  ======  ===============  =================================================
tensor              type    shape            meaning
==================  ======  ===============  =================================================
IMAGE               UINT8   [H, W, 3|4]      the photo
DEPTH               FP32    [H, W]           camera z of the object surface
MASK (optional)     FP32    [H, W]           the object matte in [0, 1]
CAMERA              FP64    [22]             the photo's camera
VIEW_RGB (opt.)     UINT8   [N, h, w, 3]     extra views (all the same size)
VIEW_MASK (opt.)    FP32    [N, h, w]        their mattes; a view without one is all NaN
VIEW_CAMERAS (opt.) FP64    [N, 22]          their cameras
PARAMS              UINT8   [L]              JSON {"fit_steps", "max_gaussians", "seed"}
SPLAT_*             FP32    [N, …]           the splat (:func:`~glimpse3d.core.triton.tensors.splat_to_tensors`)
METRICS             UINT8   [L]              JSON {name: number}
==================  ======  ===============  =================================================

Rendering runs in the service process with the project's rasterizer (no model needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.triton.client import TritonMixin
from glimpse3d.core.triton.tensors import (
    SPLAT_FIELDS,
    camera_to_array,
    cameras_to_array,
    json_tensor,
    tensor_json,
    tensors_to_splat,
)
from glimpse3d.services.reconstruction.api import ExtraView, ReconstructionBackend, ReconstructionResult

MODELS = {"triposr": "reconstruction_triposr", "lgm": "reconstruction_lgm"}
OUTPUTS = [f"SPLAT_{name}" for name, _ in SPLAT_FIELDS] + ["METRICS"]


def views_to_tensors(views: Sequence[ExtraView]) -> dict[str, np.ndarray]:
    """Extra views as VIEW_RGB / VIEW_MASK / VIEW_CAMERAS (nothing for no views)."""
    if not views:
        return {}
    shapes = {tuple(np.shape(v.rgb)[:2]) for v in views}
    if len(shapes) != 1:
        raise InvalidInput(f"extra views sent to Triton must share one size, got {sorted(shapes)}", field="views")
    out = {"VIEW_RGB": np.stack([np.asarray(v.rgb, np.uint8)[..., :3] for v in views]),
           "VIEW_CAMERAS": cameras_to_array([v.camera for v in views])}
    if any(v.mask is not None for v in views):
        h, w = shapes.pop()
        out["VIEW_MASK"] = np.stack([np.full((h, w), np.nan, np.float32) if v.mask is None
                                     else np.asarray(v.mask, np.float32) for v in views])
    return out


class TritonReconstructionBackend(TritonMixin, ReconstructionBackend):
    """Reconstruction by ``reconstruction_triposr`` (default) or ``reconstruction_lgm`` in Triton."""

    default_model = MODELS["triposr"]

    def _reconstruct(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, camera: Camera,
                     views: Sequence[ExtraView], fit_steps: int, max_gaussians: int, seed: int) -> ReconstructionResult:
        inputs = {"IMAGE": np.ascontiguousarray(image, np.uint8), "DEPTH": np.asarray(depth, np.float32),
                  "MASK": None if mask is None else np.asarray(mask, np.float32), "CAMERA": camera_to_array(camera),
                  **views_to_tensors(views),
                  "PARAMS": json_tensor({"fit_steps": fit_steps, "max_gaussians": max_gaussians, "seed": seed})}
        out = self.triton.infer(inputs, OUTPUTS)
        metrics = tensor_json(out["METRICS"], "METRICS")
        return ReconstructionResult(tensors_to_splat(out), {k: float(v) for k, v in metrics.items()})
