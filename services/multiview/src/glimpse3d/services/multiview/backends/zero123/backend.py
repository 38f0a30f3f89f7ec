"""The learned ``zero123`` backend: Zero-1-to-3 novel views of the input photo (the splat is unused).

Per request: matte the photo (its mask, its alpha, or :func:`.geometry.estimate_matte`), frame it
over white for the model, sample one view per relative pose (:mod:`.pipeline`), then place each view
into its target camera over the photo's background. Weights: ``multiview/zero123-xl``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from glimpse3d.core.backend import LearnedBackend, LearnedOptions
from glimpse3d.core.splat import Splat
from glimpse3d.services.multiview.api import MAX_STEPS, MAX_VIEWS, GeneratedView, MultiviewBackend, ViewRequest
from glimpse3d.services.multiview.backends.zero123.geometry import (
    estimate_matte,
    frame_input,
    generated_matte,
    object_centre,
    place_view,
    placement,
    relative_pose,
)
from glimpse3d.services.multiview.matte import photo_background
from glimpse3d.services.multiview.weights import ZERO123_XL

log = logging.getLogger(__name__)

REQUIRED_FILES = (
    "unet/config.json",
    "vae/config.json",
    "image_encoder/config.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
)


class Zero123Options(LearnedOptions):
    """Options of the ``zero123`` backend (``GLIMPSE3D_BACKEND_OPTIONS``)."""

    steps: int = Field(default=50, ge=1, le=MAX_STEPS)  # DDIM steps when the request leaves ``steps`` at 0
    guidance_scale: float = Field(default=3.0, ge=0.0, le=30.0)  # <= 1 disables the unconditional branch
    eta: float = Field(default=1.0, ge=0.0, le=1.0)  # DDIM stochasticity (1.0 as in the Zero-1-to-3 demo)
    batch_size: int = Field(default=8, ge=1, le=MAX_VIEWS)  # views per denoising loop
    foreground_ratio: float = Field(default=0.8, ge=0.3, le=1.0)  # the object's longer side / R in the input
    reference_radius: float = Field(default=1.85, ge=0.1, le=10.0)  # Zero-1-to-3 distance of the input camera
    mask_threshold: float = Field(default=0.1, ge=0.01, le=0.9)  # difference from white that counts as object
    variant: Literal["auto", "fp16", "fp16_ema", "full"] = "auto"  # weight files
    attention_slicing: bool = False  # CUDA memory option
    cpu_offload: bool = False  # CUDA memory option: models wait on the CPU until they run


class Zero123Backend(LearnedBackend, MultiviewBackend):
    """The ``zero123`` backend (see the module docstring)."""

    name = "zero123"
    Options = Zero123Options
    options: Zero123Options

    def _setup(self) -> None:
        self._components: Any = None
        self._hooks: list[Any] = []

    def _load_model(self) -> None:
        root = self.require_model(ZERO123_XL, REQUIRED_FILES)
        from glimpse3d.services.multiview.backends.zero123 import pipeline

        components = pipeline.load_components(root, self.device, self.dtype, self.options.variant)
        on_cuda = self.device.type == "cuda"
        self._hooks = pipeline.place(components, self.options.attention_slicing and on_cuda,
                                     self.options.cpu_offload and on_cuda)
        self._components = components

    def _describe_loaded(self) -> dict[str, Any]:
        return {**super()._describe_loaded(), "resolution": self._components.resolution}

    def _generate(self, req: ViewRequest, splat: Splat | None) -> list[GeneratedView]:
        cfg = self.options
        matte = req.mask if req.mask is not None else estimate_matte(req.image, cfg.mask_threshold)
        poses = np.stack([relative_pose(req.input_camera, cam, cfg.reference_radius, f"views[{i}]")
                          for i, cam in enumerate(req.cameras)])  # [B, 4]
        model_input, framing = frame_input(req.image, matte, cfg.foreground_ratio, self._components.resolution)
        centre = object_centre(req.input_camera, framing)
        affines = [placement(framing, req.input_camera, cam, centre, f"views[{i}]")
                   for i, cam in enumerate(req.cameras)]
        background = photo_background(req.image, matte)
        steps = req.steps or cfg.steps
        rgbs = self._sample(model_input, poses, req.seed, steps)
        views = [place_view(rgb, generated_matte(rgb, cfg.mask_threshold), affine, cam, background)
                 for rgb, affine, cam in zip(rgbs, affines, req.cameras, strict=True)]
        log.info("zero123 backend: %d view(s)", len(views), extra={"steps": steps})
        return views

    def _sample(self, model_input: np.ndarray, poses: np.ndarray, seed: int, steps: int) -> np.ndarray:
        import torch

        from glimpse3d.services.multiview.backends.zero123 import pipeline

        cfg = self.options
        settings = pipeline.SamplerSettings(steps=steps, guidance_scale=float(cfg.guidance_scale), eta=float(cfg.eta))
        try:
            with torch.inference_mode():
                return pipeline.sample_views(self._components, model_input, poses, seed, settings, cfg.batch_size)
        finally:
            for hook in self._hooks:
                hook.offload()
