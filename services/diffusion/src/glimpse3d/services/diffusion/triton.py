"""Diffusion enhancement on Triton: the ``triton`` backend (client) and the ``diffusion_sdxl``
model's handler (server), which runs :class:`~.sdxl.SDXLDiffusionBackend` (SDXL img2img + depth
ControlNet) inside Triton.

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

The client validates every argument with the same checks as the in-process backends
(:func:`~.backends.validate_request`) before anything is sent. No dynamic batching: each request is a
full sampler run with its own seed and step count; scale with instances.
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core.triton.client import TritonBacked
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.core.triton.tensors import json_tensor, tensor_json
from glimpse3d.services.diffusion.backends import DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_STRENGTH, validate_request

MODEL = "diffusion_sdxl"


class TritonDiffusionBackend(TritonBacked):
    """Enhancement by ``diffusion_sdxl`` in Triton."""

    default_model = MODEL

    def enhance(self, view: np.ndarray, *, depth: np.ndarray | None, alpha: np.ndarray | None,
                reference: np.ndarray | None, prompt: str, strength: float, steps: int, guidance: float,
                seed: int) -> np.ndarray:
        req = validate_request(view, depth=depth, alpha=alpha, reference=reference, prompt=prompt,
                               strength=strength, steps=steps, guidance=guidance, seed=seed)
        out = self.triton.infer(
            {"VIEW": req.view, "DEPTH": req.depth, "ALPHA": req.alpha, "REFERENCE": req.reference,
             "PARAMS": json_tensor({"prompt": req.prompt, "strength": req.strength, "steps": req.steps,
                                    "guidance": req.guidance, "seed": req.seed})},
            ["IMAGE"])
        return out["IMAGE"]


class SDXLHandler(Handler):
    """Server side of ``diffusion_sdxl``: the in-process ``sdxl`` backend."""

    registry = "glimpse3d.services.diffusion.backends:REGISTRY"
    backend_name = "sdxl"

    def run(self, inputs: Tensors) -> Tensors:
        params = tensor_json(inputs.get("PARAMS"))
        image = self.backend.enhance(
            require(inputs, "VIEW"), depth=inputs.get("DEPTH"), alpha=inputs.get("ALPHA"),
            reference=inputs.get("REFERENCE"), prompt=params.get("prompt", ""),
            strength=params.get("strength", DEFAULT_STRENGTH), steps=params.get("steps", DEFAULT_STEPS),
            guidance=params.get("guidance", DEFAULT_GUIDANCE), seed=params.get("seed", 0))
        return {"IMAGE": np.ascontiguousarray(image, np.uint8)}
