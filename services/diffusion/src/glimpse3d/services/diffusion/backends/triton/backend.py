"""Diffusion on Triton: the ``triton`` backend (client) and the ``diffusion_sdxl`` model's handler
(server), which runs the in-process ``sdxl`` backend inside Triton.

===================  ======  ===============  ================================================
tensor               type    shape            meaning
===================  ======  ===============  ================================================
VIEW                 UINT8   [H, W, 3|4]      the rendered view
DEPTH (optional)     FP32    [H, W]           its camera z, 0 = background
ALPHA (optional)     FP32    [H, W]           its coverage in [0, 1]
REFERENCE (opt.)     UINT8   [h, w, 3|4]      the input photo
PARAMS               UINT8   [L]              JSON {"prompt", "strength", "steps", "guidance", "seed"}
IMAGE                UINT8   [H, W, 3]        the enhanced view
===================  ======  ===============  ================================================

Requests are validated by :class:`~glimpse3d.services.diffusion.api.DiffusionBackend` before anything
is sent. No dynamic batching: each request is a full sampler run; scale with instances.
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core.triton.client import TritonMixin
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import json_tensor, tensor_json
from glimpse3d.services.diffusion.api import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    DiffusionBackend,
    EnhanceRequest,
)

MODEL = "diffusion_sdxl"


class TritonDiffusionBackend(TritonMixin, DiffusionBackend):
    """Enhancement by ``diffusion_sdxl`` in Triton."""

    default_model = MODEL

    def _enhance(self, req: EnhanceRequest) -> np.ndarray:
        out = self.triton.infer(
            {"VIEW": req.view, "DEPTH": req.depth, "ALPHA": req.alpha, "REFERENCE": req.reference,
             "PARAMS": json_tensor({"prompt": req.prompt, "strength": req.strength, "steps": req.steps,
                                    "guidance": req.guidance, "seed": req.seed})},
            ["IMAGE"])
        return out["IMAGE"]


class SDXLHandler(Handler):
    """Server side of ``diffusion_sdxl``: the in-process ``sdxl`` backend."""

    registry = "glimpse3d.services.diffusion.api:REGISTRY"
    backend_name = "sdxl"

    def run(self, inputs: Tensors) -> Tensors:
        params = tensor_json(inputs.get("PARAMS"))
        image = self.backend.enhance(
            require(inputs, "VIEW"), depth=inputs.get("DEPTH"), alpha=inputs.get("ALPHA"),
            reference=inputs.get("REFERENCE"), prompt=params.get("prompt", ""),
            strength=params.get("strength", DEFAULT_STRENGTH), steps=params.get("steps", DEFAULT_STEPS),
            guidance=params.get("guidance", DEFAULT_GUIDANCE), seed=params.get("seed", 0))
        return {"IMAGE": np.ascontiguousarray(image, np.uint8)}
