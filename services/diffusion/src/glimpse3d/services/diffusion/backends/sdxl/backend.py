"""The learned ``sdxl`` diffusion backend: SDXL 1.0 img2img guided by a depth ControlNet (diffusers'
``StableDiffusionXLControlNetImg2ImgPipeline``; weights in :mod:`glimpse3d.services.diffusion.weights`).

One enhancement: the view is the img2img start and its depth, as the disparity-like map the ControlNet
was trained on (:mod:`.conditioning`), holds the geometry. As in diffusers' img2img, ``int(steps *
strength)`` steps are denoised; when that is 0 the view comes back unchanged without running the model.
Without depth the ControlNet is off (scale 0). An empty prompt becomes ``default_prompt``; the
generator is seeded on the CPU, so the output is a pure function of the inputs on one device and build.
The result is restored to the view's size, its colours fitted to the photo when there is one and
``colour_transfer`` is on (:func:`~glimpse3d.services.diffusion.colour.transfer_to_photo`), and
composited over the view with its coverage, so background pixels come back as given.

``dtype`` ``auto`` is float16 on CUDA (with the fp16-fix VAE unless ``vae`` says ``base``) and float32 on
the CPU. Pipeline calls are serialised: a diffusers pipeline keeps per-call state.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from glimpse3d.core.backend import LearnedBackend, LearnedOptions
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.services.diffusion.api import MAX_PROMPT_CHARS, DiffusionBackend, EnhanceRequest
from glimpse3d.services.diffusion.backends.sdxl.conditioning import (
    Canvas,
    composite,
    coverage,
    from_working,
    prepare_canvas,
)
from glimpse3d.services.diffusion.colour import lab_to_rgb, prepare_reference, rgb_to_lab, transfer_to_photo
from glimpse3d.services.diffusion.weights import (
    CONTROLNET_DEPTH,
    CONTROLNET_DEPTH_FILES,
    SDXL_BASE,
    SDXL_BASE_FILES,
    VAE_FP16_FIX,
    VAE_FP16_FIX_FILES,
    WEIGHTS_VARIANT,
)

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a sharp, detailed, high quality photo of the object, realistic texture, soft even lighting"
DEFAULT_NEGATIVE_PROMPT = "blurry, low quality, noisy, distorted, deformed, artifacts, text, watermark"
DEFAULT_RESOLUTION = 1024  # SDXL's native size
MIN_RESOLUTION, MAX_RESOLUTION = 64, 4096
DEFAULT_CONTROLNET_SCALE = 0.5  # the ControlNet model card's example value
MAX_CONTROLNET_SCALE = 2.0


class SDXLOptions(LearnedOptions):
    """resolution: the working canvas's longest side; controlnet_scale: the depth condition's weight;
    default_prompt: used for an empty prompt; negative_prompt: for every call (empty: none); vae: ``auto``
    (fp16-fix in float16), ``base`` or ``fp16-fix``; colour_transfer: fit the result's colours to the photo;
    attention_slicing, cpu_offload (CUDA only), vae_tiling: trade speed for peak memory."""

    resolution: int = Field(default=DEFAULT_RESOLUTION, ge=MIN_RESOLUTION, le=MAX_RESOLUTION, multiple_of=8)
    controlnet_scale: float = Field(default=DEFAULT_CONTROLNET_SCALE, ge=0.0, le=MAX_CONTROLNET_SCALE,
                                    allow_inf_nan=False)
    default_prompt: str = Field(default=DEFAULT_PROMPT, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default=DEFAULT_NEGATIVE_PROMPT, max_length=MAX_PROMPT_CHARS)
    vae: Literal["auto", "base", "fp16-fix"] = "auto"
    colour_transfer: bool = True
    attention_slicing: bool = False
    cpu_offload: bool = False
    vae_tiling: bool = False

    @field_validator("default_prompt")
    @classmethod
    def _default_prompt(cls, value: str) -> str:
        return value.strip() or DEFAULT_PROMPT

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, value: str) -> str:
        return value.strip()


def _on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """diffusers ``callback_on_step_end``: stop between steps when the gRPC call was cancelled."""
    check_cancelled()
    return tensors


def match_reference_colour(enhanced: np.ndarray, cover: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """float RGB [H, W, 3] in [0, 1] -> the same with the object's (``cover >= 0.5``) colours fitted to
    the uint8 ``reference`` photo [h, w, 3|4] (:func:`~glimpse3d.services.diffusion.colour.transfer_to_photo`)."""
    reference, ref_lab, ref_fg = prepare_reference(reference, enhanced.shape[:2])
    return lab_to_rgb(transfer_to_photo(rgb_to_lab(enhanced), cover >= 0.5, ref_lab, ref_fg, reference))


class SDXLDiffusionBackend(DiffusionBackend, LearnedBackend):
    """SDXL 1.0 img2img + depth ControlNet (diffusers), fp16 on CUDA, float32 on the CPU."""

    name = "sdxl"
    Options = SDXLOptions
    options: SDXLOptions

    def _setup(self) -> None:
        self._call_lock = threading.Lock()
        self._pipe: Any = None
        self._multiple = 8
        self._vae_name = ""

    # ----------------------------------------------------------------------------------------- #
    # Loading
    # ----------------------------------------------------------------------------------------- #

    def _load_model(self) -> None:
        import torch

        o = self.options
        base = self.require_model(SDXL_BASE, SDXL_BASE_FILES)
        control_dir = self.require_model(CONTROLNET_DEPTH, CONTROLNET_DEPTH_FILES)
        fix_vae = o.vae == "fp16-fix" or (o.vae == "auto" and self.dtype == torch.float16)
        vae_dir = self.require_model(VAE_FP16_FIX, VAE_FP16_FIX_FILES) if fix_vae else None
        pipe = self._build_pipeline(base, control_dir, vae_dir, self.dtype)
        self._place(pipe, self.device)
        self._multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)
        self._vae_name = "fp16-fix" if fix_vae else "base"
        self._pipe = pipe

    def _describe_loaded(self) -> dict[str, Any]:
        return {**super()._describe_loaded(), "vae": self._vae_name, "multiple": self._multiple}

    @staticmethod
    def _build_pipeline(base: Path, control_dir: Path, vae_dir: Path | None, dtype: Any) -> Any:
        import torch
        from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionXLControlNetImg2ImgPipeline

        try:
            controlnet = ControlNetModel.from_pretrained(
                control_dir, dtype=dtype, variant=WEIGHTS_VARIANT, local_files_only=True)
            extra = {}
            if vae_dir is not None:
                extra["vae"] = AutoencoderKL.from_pretrained(vae_dir, dtype=dtype, local_files_only=True)
            pipe = StableDiffusionXLControlNetImg2ImgPipeline.from_pretrained(
                base, controlnet=controlnet, dtype=dtype, variant=WEIGHTS_VARIANT, local_files_only=True,
                add_watermarker=False, **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise FailedPrecondition(
                f"the sdxl models under {base.parent.parent} could not be loaded ({err}); "
                "run `make models` again to re-fetch them", field="model_dir") from err
        pipe.set_progress_bar_config(disable=True)
        if pipe.vae.dtype == torch.float32 and pipe.vae.config.force_upcast:
            # the base VAE asks to be upcast from float16; in float32 that is a no-op (that diffusers
            # still performs and warns about on every call)
            pipe.vae.register_to_config(force_upcast=False)
        return pipe

    def _place(self, pipe: Any, device: Any) -> None:
        o = self.options
        if o.attention_slicing:
            pipe.enable_attention_slicing()
        if o.vae_tiling:
            pipe.vae.enable_tiling()
        if o.cpu_offload and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
            return
        if o.cpu_offload:
            log.info("cpu_offload ignored: the backend runs on the CPU")
        pipe.to(device)

    # ----------------------------------------------------------------------------------------- #
    # Enhancement
    # ----------------------------------------------------------------------------------------- #

    def _enhance(self, req: EnhanceRequest) -> np.ndarray:
        cover = coverage(req.depth, req.alpha, req.view.shape[:2])
        if min(int(req.steps * req.strength), req.steps) < 1 or not (cover > 0).any():
            log.info("nothing to denoise; view returned unchanged",
                     extra={"strength": req.strength, "steps": req.steps, "covered": bool((cover > 0).any())})
            return req.view.copy()
        started = time.perf_counter()
        canvas = prepare_canvas(req.view, req.depth, req.alpha, resolution=self.options.resolution,
                                multiple=self._multiple)
        enhanced = from_working(self._generate(req, canvas), canvas.geometry)  # [H, W, 3] float32 in [0, 1]
        if self.options.colour_transfer and req.reference is not None:
            enhanced = match_reference_colour(enhanced, canvas.cover, req.reference)
        geom = canvas.geometry
        log.info("view enhanced", extra={"seed": req.seed, "canvas": f"{geom.padded_width}x{geom.padded_height}",
                                         "seconds": round(time.perf_counter() - started, 2)})
        return composite(req.view, enhanced, canvas.cover)

    def _generate(self, req: EnhanceRequest, canvas: Canvas) -> np.ndarray:
        """One pipeline call on the canvas -> float32 [padded_h, padded_w, 3] in [0, 1]."""
        import torch
        from PIL import Image

        geom = canvas.geometry
        control = torch.from_numpy(np.ascontiguousarray(canvas.control.transpose(2, 0, 1)))[None]  # [1, 3, h, w]
        scale = self.options.controlnet_scale if req.depth is not None else 0.0
        generator = torch.Generator("cpu").manual_seed(req.seed)
        check_cancelled()
        with self._call_lock, torch.inference_mode():
            out = self._pipe(
                prompt=req.prompt.strip() or self.options.default_prompt,
                negative_prompt=self.options.negative_prompt or None,
                image=Image.fromarray(canvas.image),
                control_image=control,
                height=geom.padded_height,
                width=geom.padded_width,
                strength=req.strength,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance,
                controlnet_conditioning_scale=scale,
                generator=generator,
                output_type="np",
                callback_on_step_end=_on_step_end,
            )
        images = np.asarray(out.images, dtype=np.float32)  # [1, h, w, 3]
        assert images.shape == (1, geom.padded_height, geom.padded_width, 3), images.shape
        if not np.isfinite(images).all():
            raise FailedPrecondition("the sdxl pipeline produced non-finite pixels (try dtype float32 or vae fp16-fix)",
                                     field="dtype")
        return images[0]
