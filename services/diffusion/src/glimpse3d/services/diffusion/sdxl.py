"""The learned ``sdxl`` diffusion backend: SDXL img2img guided by a depth ControlNet.

Model
    diffusers' ``StableDiffusionXLControlNetImg2ImgPipeline`` over Stable Diffusion XL 1.0 base with
    the ``diffusers/controlnet-depth-sdxl-1.0`` ControlNet (:mod:`glimpse3d.services.diffusion.models`).
    The rendered view is the img2img starting point; its depth, turned into the disparity-like map
    the ControlNet was trained on (:func:`~glimpse3d.services.diffusion.conditioning.depth_to_control`),
    holds the geometry in place while the diffusion model restores texture and detail.

One enhancement
    1. ``strength`` and ``steps`` follow diffusers' img2img: the view is noised to the level of
       timestep ``strength * T`` and denoised in ``int(steps * strength)`` scheduler steps (the tail of a
       ``steps``-step schedule). When that is 0 (``strength < 1 / steps``; in particular
       ``strength = 0``) the view is returned unchanged, bit for bit, without running the model.
    2. The view and the control map go onto the working canvas (longest side ``resolution``, padded
       to the model's multiple; :mod:`~glimpse3d.services.diffusion.conditioning`). Without a depth
       map the control image is black and the ControlNet's contribution is switched off
       (conditioning scale 0): plain SDXL img2img.
    3. The pipeline runs with the request's ``guidance`` (classifier-free guidance; at or below 1 it
       is off) and a ``torch.Generator`` on the CPU seeded with the request's ``seed``, so the output
       is a pure function of the inputs on one device and build. An empty prompt is replaced by
       ``default_prompt``; ``negative_prompt`` applies to every call (empty: SDXL's zero negative
       embedding). :func:`glimpse3d.core.cancel.check_cancelled` runs after every denoising step.
    4. The result is cropped and resized back to the exact input size; with a reference photo and
       ``colour_transfer`` on, the object's colours get the classical backend's global Lab fit to the
       nearest photo colours (:func:`~glimpse3d.services.diffusion.classical.transfer_to_photo`: the
       photo's object when it has alpha, else every photo colour within a capture distance; bounded
       gains keep a photo from a different angle from overpowering the result).
    5. It is composited over the view with the view's coverage (alpha, else ``depth > 0``, else
       everywhere): background pixels come back exactly as given.

Device
    ``device`` ``auto`` picks CUDA when present. ``dtype`` ``auto`` is float16 on CUDA (the published
    fp16 weights as they are, with the fp16-fix VAE unless ``vae`` says ``base``) and float32 on the
    CPU (the same fp16 files upcast). ``cpu_offload`` (CUDA only) keeps each sub-model on the GPU only
    while it runs (``enable_model_cpu_offload``); ``attention_slicing`` and ``vae_tiling`` trade speed
    for peak memory on any device. Calls are serialised by a lock: a diffusers pipeline keeps
    per-call state (the scheduler's timesteps) and is not safe to run from two threads at once.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition, InvalidInput, NotReady
from glimpse3d.core.models import (
    DEFAULT_MODEL_DIR,
    DeviceOptions,
    offline_hub,
    require_model,
    resolve_device,
    resolve_dtype,
)
from glimpse3d.services.diffusion.backends import MAX_PROMPT_CHARS, EnhanceRequest, validate_request
from glimpse3d.services.diffusion.classical import (
    lab_to_rgb,
    reference_foreground,
    rgb_to_lab,
    transfer_to_photo,
)
from glimpse3d.services.diffusion.conditioning import Canvas, composite, coverage, from_working, prepare_canvas
from glimpse3d.services.diffusion.models import (
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
VAE_CHOICES = ("auto", "base", "fp16-fix")


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false, got {value!r}", field=field)
    return value


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"{field} must be a string of at most {MAX_PROMPT_CHARS} characters", field=field)
    return value


def _resolution(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value % 8:
        raise InvalidInput(f"resolution must be an integer multiple of 8, got {value!r}", field="resolution")
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise InvalidInput(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {value}",
                           field="resolution")
    return int(value)


def _scale(value: object) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    if not ok or not 0.0 <= float(value) <= MAX_CONTROLNET_SCALE:
        raise InvalidInput(f"controlnet_scale must be in [0, {MAX_CONTROLNET_SCALE:g}], got {value!r}",
                           field="controlnet_scale")
    return float(value)


def _on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """diffusers ``callback_on_step_end``: stop between steps when the gRPC call was cancelled."""
    check_cancelled()
    return tensors


def match_reference_colour(enhanced: np.ndarray, cover: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """float RGB [H, W, 3] in [0, 1] -> the same with the object's (``cover >= 0.5``) colours fitted to
    the uint8 ``reference`` photo [h, w, 3|4], by the classical backend's rule
    (:func:`~glimpse3d.services.diffusion.classical.transfer_to_photo`)."""
    h, w = enhanced.shape[:2]
    scale = max(h, w) / max(reference.shape[:2])
    if scale < 1.0:  # statistics need no more pixels than the view has
        size = (max(1, round(reference.shape[1] * scale)), max(1, round(reference.shape[0] * scale)))
        reference = cv2.resize(reference, size, interpolation=cv2.INTER_AREA)
    ref_lab = rgb_to_lab(reference[:, :, :3].astype(np.float32) / 255.0)
    lab = transfer_to_photo(rgb_to_lab(enhanced), cover >= 0.5, ref_lab, reference_foreground(reference), reference)
    return lab_to_rgb(lab)


class SDXLDiffusionBackend:
    """SDXL 1.0 img2img + depth ControlNet (diffusers), fp16 on CUDA, float32 on the CPU."""

    name = "sdxl"

    def __init__(
        self,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        device: str = "auto",
        *,
        dtype: str = "auto",
        resolution: int = DEFAULT_RESOLUTION,
        controlnet_scale: float = DEFAULT_CONTROLNET_SCALE,
        default_prompt: str = DEFAULT_PROMPT,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        vae: str = "auto",
        colour_transfer: bool = True,
        attention_slicing: bool = False,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
    ) -> None:
        if not isinstance(device, str) or not isinstance(dtype, str):
            raise InvalidInput("device and dtype must be strings", field="device" if not isinstance(device, str)
                               else "dtype")
        self._device = DeviceOptions(device=device, dtype=dtype, attention_slicing=_flag(attention_slicing,
                                     "attention_slicing"), cpu_offload=_flag(cpu_offload, "cpu_offload"))
        if vae not in VAE_CHOICES:
            raise InvalidInput(f"vae must be one of {', '.join(VAE_CHOICES)}, got {vae!r}", field="vae")
        self._model_dir = Path(model_dir)
        self._resolution = _resolution(resolution)
        self._controlnet_scale = _scale(controlnet_scale)
        self._default_prompt = _text(default_prompt, "default_prompt").strip() or DEFAULT_PROMPT
        self._negative_prompt = _text(negative_prompt, "negative_prompt").strip()
        self._vae = vae
        self._colour_transfer = _flag(colour_transfer, "colour_transfer")
        self._vae_tiling = _flag(vae_tiling, "vae_tiling")
        self._lock = threading.Lock()
        self._pipe: Any = None
        self._multiple = 8

    @property
    def ready(self) -> bool:
        return self._pipe is not None

    # ----------------------------------------------------------------------------------------- #
    # Loading
    # ----------------------------------------------------------------------------------------- #

    def load(self) -> None:
        """Load the pipeline from the model directory onto the device. Idempotent."""
        with self._lock:
            if self._pipe is not None:
                return
            started = time.perf_counter()
            offline_hub()
            import torch

            device = resolve_device(self._device.device)
            dtype = resolve_dtype(self._device.dtype, device)
            base = require_model(self._model_dir, SDXL_BASE, SDXL_BASE_FILES)
            control_dir = require_model(self._model_dir, CONTROLNET_DEPTH, CONTROLNET_DEPTH_FILES)
            fix_vae = self._vae == "fp16-fix" or (self._vae == "auto" and dtype == torch.float16)
            vae_dir = require_model(self._model_dir, VAE_FP16_FIX, VAE_FP16_FIX_FILES) if fix_vae else None
            pipe = self._build_pipeline(base, control_dir, vae_dir, dtype)
            self._place(pipe, device)
            self._multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)
            self._pipe = pipe
            log.info("sdxl diffusion backend ready", extra={
                "device": str(device), "dtype": str(dtype).removeprefix("torch."), "vae": "fp16-fix" if fix_vae
                else "base", "multiple": self._multiple, "load_s": round(time.perf_counter() - started, 2)})

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
        if self._device.attention_slicing:
            pipe.enable_attention_slicing()
        if self._vae_tiling:
            pipe.vae.enable_tiling()
        if self._device.cpu_offload and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
            return
        if self._device.cpu_offload:
            log.info("cpu_offload ignored: the backend runs on the CPU")
        pipe.to(device)

    # ----------------------------------------------------------------------------------------- #
    # Enhancement
    # ----------------------------------------------------------------------------------------- #

    def enhance(
        self,
        view: np.ndarray,
        *,
        depth: np.ndarray | None,
        alpha: np.ndarray | None = None,
        reference: np.ndarray | None = None,
        prompt: str = "",
        strength: float,
        steps: int,
        guidance: float,
        seed: int,
    ) -> np.ndarray:
        if not self.ready:
            raise NotReady("the sdxl diffusion backend is not loaded yet", field="backend")
        req = validate_request(view, depth=depth, alpha=alpha, reference=reference, prompt=prompt,
                               strength=strength, steps=steps, guidance=guidance, seed=seed)
        cover = coverage(req.depth, req.alpha, req.view.shape[:2])
        if min(int(req.steps * req.strength), req.steps) < 1 or not (cover > 0).any():
            log.info("nothing to denoise; view returned unchanged",
                     extra={"strength": req.strength, "steps": req.steps, "covered": bool((cover > 0).any())})
            return req.view.copy()
        started = time.perf_counter()
        canvas = prepare_canvas(req.view, req.depth, req.alpha, resolution=self._resolution, multiple=self._multiple)
        enhanced = from_working(self._generate(req, canvas), canvas.geometry)  # [H, W, 3] float32 in [0, 1]
        if self._colour_transfer and req.reference is not None:
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
        scale = self._controlnet_scale if req.depth is not None else 0.0
        generator = torch.Generator("cpu").manual_seed(req.seed)
        check_cancelled()
        with self._lock, torch.inference_mode():
            out = self._pipe(
                prompt=req.prompt.strip() or self._default_prompt,
                negative_prompt=self._negative_prompt or None,
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
