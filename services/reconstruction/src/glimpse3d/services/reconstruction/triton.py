"""Reconstruction on Triton: the ``triton`` backend (client) and the handlers of the
``reconstruction_triposr`` and ``reconstruction_lgm`` models (server).

Both models run the project's own backend (:mod:`.triposr.backend`, :mod:`.lgm.backend`) inside
Triton and share one tensor contract:

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

Rendering (:meth:`TritonReconstructionBackend.render`) runs in the service process with the
project's rasterizer: it needs no model, and a splat would cost more to ship to Triton than to draw.
No dynamic batching: each request is one large forward pass with its own seed and fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat
from glimpse3d.core.triton.client import TritonBacked
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import (
    SPLAT_FIELDS,
    array_to_camera,
    array_to_cameras,
    camera_to_array,
    cameras_to_array,
    json_tensor,
    splat_to_tensors,
    tensor_json,
    tensors_to_splat,
)
from glimpse3d.services.reconstruction.backends import ExtraView, ReconstructionResult, RenderedImage

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


class TritonReconstructionBackend(TritonBacked):
    """Reconstruction by ``reconstruction_triposr`` (default) or ``reconstruction_lgm`` in Triton."""

    default_model = MODELS["triposr"]

    def reconstruct(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, camera: Camera,
                    views: Sequence[ExtraView] = (), fit_steps: int = 0, max_gaussians: int = 0,
                    seed: int = 0) -> ReconstructionResult:
        inputs = {"IMAGE": np.ascontiguousarray(image, np.uint8), "DEPTH": np.asarray(depth, np.float32),
                  "MASK": None if mask is None else np.asarray(mask, np.float32), "CAMERA": camera_to_array(camera),
                  **views_to_tensors(views),
                  "PARAMS": json_tensor({"fit_steps": fit_steps, "max_gaussians": max_gaussians, "seed": seed})}
        out = self.triton.infer(inputs, OUTPUTS)
        metrics = tensor_json(out["METRICS"], "METRICS")
        return ReconstructionResult(tensors_to_splat(out), {k: float(v) for k, v in metrics.items()})

    def render(self, splat: Splat, cameras: Sequence[Camera],
               background: Sequence[float] = (0.0, 0.0, 0.0)) -> list[RenderedImage]:
        from glimpse3d.services.reconstruction.lift import render_views

        return render_views(splat, cameras, background)


class _ReconstructionHandler(Handler):
    registry = "glimpse3d.services.reconstruction.backends:REGISTRY"

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
