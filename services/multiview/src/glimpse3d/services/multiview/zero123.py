"""The learned ``zero123`` multiview backend: Zero-1-to-3 novel views of the input photo.

Per request (the sampling itself is :mod:`.zero123_pipeline`):

1. **Matte and framing.** The object's matte is the request's mask (or the image's alpha; without
   either, the pixels that differ from the photo's border colour). The photo is composited over
   white (Zero-1-to-3 was trained on Objaverse renders over white) and cropped/scaled by one
   similarity so that the matte's bounding box is centred and its longer side is
   ``foreground_ratio`` of the model's square resolution ``R`` (256 for the published weights):
   ``u_z = R/2 + s (u - u_c)`` with ``s = foreground_ratio * R / extent``.
2. **Relative poses** (:func:`relative_pose`). Zero-1-to-3 was trained on Blender renders (+z up)
   with ``T = [theta_t - theta_i, sin(phi_t - phi_i), cos(phi_t - phi_i), d_t - d_i]`` where ``theta``
   is the camera's polar angle from the up axis, ``phi = atan2(y, x)`` its azimuth
   (counter-clockwise seen from above) and ``d`` its distance to the object. Our world is +y up,
   with orbit azimuth 0 on +z turning towards +x (also counter-clockwise seen from above), so the
   rotation ``(x, y, z) -> (z, x, y)`` maps it onto Blender's axes and ``phi = atan2(x, z)`` is exactly
   our orbit azimuth, ``theta = acos(y / d)`` = 90 deg - elevation. Hence the first entry is
   **minus** the elevation change: raising the camera by 30 deg gives ``-pi/6``; moving it from
   azimuth 0 to 90 gives ``sin = 1, cos = 0``. Zero-1-to-3 objects fill a unit cube seen from
   1.5-2.2 units away, so distances are relative: ``d_t - d_i = reference_radius * (r_t / r_i - 1)``.
   Camera roll is not modelled (the orbit cameras have none).
3. **Sampling**: all views of a chunk of ``batch_size`` in one DDIM loop, ``steps`` (the request's,
   else the option), ``guidance_scale``, ``eta``; deterministic per seed.
4. **Placement.** Each ``R x R`` result is mapped into its target camera by the similarity that
   makes the model's virtual camera agree with the target's intrinsics: the model image centre
   goes to the target's projection of the object centre (the point seen at the input's framing
   centre, at the depth of the world origin), and one model pixel spans ``f_t / (s f_i)`` target
   pixels per axis. Outside the model image is background.
5. **Mask.** The generated object is what differs from the white background by more than
   ``mask_threshold`` (largest channel difference), closed and hole-filled with
   :func:`.render_views.object_hull`; the final view is the generated colour inside that matte and
   the photo's background colour (:func:`.render_views.photo_background`) outside.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from glimpse3d.core.backends import config_with_overrides
from glimpse3d.core.cameras import Camera, orbit_angles
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.models import (
    DEFAULT_MODEL_DIR,
    DeviceOptions,
    offline_hub,
    require_model,
    resolve_device,
    resolve_dtype,
)
from glimpse3d.core.splat import Splat
from glimpse3d.services.multiview.backends import MAX_STEPS, MAX_VIEWS, GeneratedView, check_request
from glimpse3d.services.multiview.models import ZERO123_XL
from glimpse3d.services.multiview.render_views import object_hull, photo_background

log = logging.getLogger(__name__)

REQUIRED_FILES = (
    "unet/config.json",
    "vae/config.json",
    "image_encoder/config.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
)
CLOSE_FRACTION = 0.03  # closing disc of the generated object's matte, fraction of R


@dataclass(frozen=True)
class Zero123Config:
    """Options of the ``zero123`` backend (``GLIMPSE3D_BACKEND_OPTIONS``)."""

    steps: int = 50  # DDIM steps when the request leaves ``steps`` at 0
    guidance_scale: float = 3.0  # classifier-free guidance; <= 1 disables the unconditional branch
    eta: float = 1.0  # DDIM stochasticity (1.0 as in the Zero-1-to-3 demo)
    batch_size: int = 8  # views per denoising loop
    foreground_ratio: float = 0.8  # the object's longer side / R in the model's input
    reference_radius: float = 1.85  # Zero-1-to-3 distance the input camera's distance stands for
    mask_threshold: float = 0.1  # colour difference from white that counts as object in a generated view
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    variant: str = "auto"  # weight files: auto, fp16, fp16_ema or full
    attention_slicing: bool = False  # CUDA memory option
    cpu_offload: bool = False  # CUDA memory option: models wait on the CPU until they run

    def __post_init__(self) -> None:
        for name, hi in (("steps", MAX_STEPS), ("batch_size", MAX_VIEWS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise InvalidInput(f"zero123 option {name} must be an integer in 1..{hi}, got {value!r}", field=name)
        ranges = {"guidance_scale": (0.0, 30.0), "eta": (0.0, 1.0), "foreground_ratio": (0.3, 1.0),
                  "reference_radius": (0.1, 10.0), "mask_threshold": (0.01, 0.9)}
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                raise InvalidInput(f"zero123 option {name} must be in [{lo}, {hi}], got {value!r}", field=name)
        for name in ("attention_slicing", "cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInput(f"zero123 option {name} must be true or false", field=name)
        if self.variant not in ("auto", "fp16", "fp16_ema", "full"):
            raise InvalidInput(f"zero123 option variant must be auto, fp16, fp16_ema or full, got {self.variant!r}",
                               field="variant")


# --- poses -------------------------------------------------------------------------------------


def _spherical(camera: Camera, field: str) -> tuple[float, float, float]:
    """(polar angle from +y, azimuth, distance) of the camera centre around the origin, in radians."""
    azimuth_deg, elevation_deg, r = orbit_angles(camera)
    if r < 1e-9:
        raise InvalidInput("camera sits at the object centre (the world origin); no viewpoint to condition on",
                           field=field)
    return math.pi / 2 - math.radians(elevation_deg), math.radians(azimuth_deg), r


def relative_pose(input_camera: Camera, target: Camera, reference_radius: float = 1.85,
                  field: str = "views") -> np.ndarray:
    """Zero-1-to-3's conditioning ``[d_polar, sin d_azimuth, cos d_azimuth, d_radius]`` (float32 [4])
    of ``target`` relative to ``input_camera`` (see the module docstring for the convention)."""
    polar_i, az_i, r_i = _spherical(input_camera, "input_camera")
    polar_t, az_t, r_t = _spherical(target, field)
    d_az = (az_t - az_i) % (2.0 * math.pi)
    return np.array([polar_t - polar_i, math.sin(d_az), math.cos(d_az), reference_radius * (r_t / r_i - 1.0)],
                    np.float32)


# --- framing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Framing:
    """The similarity from input-photo pixels to model pixels: ``u_z = R/2 + scale * (u - centre)``."""

    scale: float
    centre: tuple[float, float]  # (u, v) image coordinates in the input photo
    resolution: int

    def matrix(self) -> np.ndarray:
        """[2, 3] OpenCV affine (pixel indices) from the photo to the model image."""
        s, (uc, vc), half = self.scale, self.centre, self.resolution / 2.0
        return np.array([[s, 0.0, half - 0.5 + s * (0.5 - uc)], [0.0, s, half - 0.5 + s * (0.5 - vc)]])


def estimate_matte(image: np.ndarray, threshold: float) -> np.ndarray:
    """float32 [H, W] matte of a photo that came without one: pixels whose colour differs from the
    median of the border ring by more than ``threshold``, closed and hole-filled; all ones when
    nothing differs (the whole frame is the object)."""
    ring = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # [2H + 2W, 3]
    diff = np.abs(image - np.median(ring, axis=0)).max(axis=2)  # [H, W]
    hull = object_hull((diff > threshold).astype(np.float32), 0.5, CLOSE_FRACTION)
    return hull.astype(np.float32) if hull.any() else np.ones(image.shape[:2], np.float32)


def _antialias(image: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian pre-blur before shrinking by ``scale`` < 1 (sigma = (1/scale - 1) / 2)."""
    if scale >= 1.0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=(1.0 / scale - 1.0) / 2.0)


def frame_input(image: np.ndarray, matte: np.ndarray, ratio: float, resolution: int) -> tuple[np.ndarray, Framing]:
    """The model input (uint8 [R, R, 3], the object over white, centred) and its :class:`Framing`."""
    rows, cols = np.nonzero(matte >= 0.5)
    if rows.size == 0:
        raise InvalidInput("the mask has no object pixels (none >= 0.5)", field="mask")
    extent = max(cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    centre = ((cols.min() + cols.max() + 1) / 2.0, (rows.min() + rows.max() + 1) / 2.0)
    framing = Framing(ratio * resolution / float(extent), centre, resolution)
    over_white = image * matte[..., None] + (1.0 - matte[..., None])  # [H, W, 3]
    warped = cv2.warpAffine(_antialias(over_white.astype(np.float32), framing.scale), framing.matrix(),
                            (resolution, resolution), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(1.0, 1.0, 1.0))
    return np.rint(np.clip(warped, 0.0, 1.0) * 255.0).astype(np.uint8), framing


def object_centre(input_camera: Camera, framing: Framing) -> np.ndarray:
    """[3] world point seen at the framing centre, at the input camera's depth of the world origin."""
    _, depth = input_camera.project(np.zeros((1, 3)))
    if depth[0] <= 1e-9:
        raise InvalidInput("the world origin (the object) is behind the input camera", field="input_camera")
    return input_camera.unproject(np.array([framing.centre]), depth)[0]


def placement(framing: Framing, input_camera: Camera, target: Camera, centre: np.ndarray, field: str) -> np.ndarray:
    """[2, 3] OpenCV affine from the model image to the ``target`` image (see the module docstring)."""
    uv, depth = target.project(centre[None])
    if depth[0] <= 1e-9:
        raise InvalidInput("the object centre is behind this camera", field=field)
    kx = target.fx / (framing.scale * input_camera.fx)
    ky = target.fy / (framing.scale * input_camera.fy)
    half = framing.resolution / 2.0
    u0, v0 = uv[0]
    return np.array([[kx, 0.0, u0 - 0.5 + kx * (0.5 - half)], [0.0, ky, v0 - 0.5 + ky * (0.5 - half)]])


def generated_matte(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """float32 [R, R] matte of a generated view ([R, R, 3] in [0, 1] over white)."""
    diff = (1.0 - rgb).max(axis=2)
    return object_hull((diff > threshold).astype(np.float32), 0.5, CLOSE_FRACTION).astype(np.float32)


def place_view(rgb: np.ndarray, matte: np.ndarray, affine: np.ndarray, target: Camera,
               background: np.ndarray) -> GeneratedView:
    """One generated ``R x R`` view (colour over white, matte) mapped into ``target``'s image."""
    size = (target.width, target.height)
    k = min(affine[0, 0], affine[1, 1])
    colour = cv2.warpAffine(_antialias(rgb.astype(np.float32), k), affine, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(1.0, 1.0, 1.0))
    mask = cv2.warpAffine(_antialias(matte, k), affine, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    mask = np.clip(mask, 0.0, 1.0).astype(np.float32)
    out = colour * mask[..., None] + background[None, None, :] * (1.0 - mask[..., None])
    return GeneratedView(np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8), mask)


# --- backend -----------------------------------------------------------------------------------


class Zero123Backend:
    """The ``zero123`` backend (see the module docstring)."""

    name = "zero123"

    def __init__(self, model_dir: Path | str = DEFAULT_MODEL_DIR, device: str = "auto",
                 config: Zero123Config | None = None, **overrides: object) -> None:
        self.config = config_with_overrides(Zero123Config, config, overrides, "zero123")
        self.device_options = DeviceOptions(device=device, dtype=self.config.dtype,
                                            attention_slicing=self.config.attention_slicing,
                                            cpu_offload=self.config.cpu_offload)
        self.model_dir = Path(model_dir)
        self._components: Any = None
        self._hooks: list[Any] = []
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._components is not None

    def load(self) -> None:
        """Load the weights from ``<model_dir>/multiview/zero123-xl`` (idempotent)."""
        with self._lock:
            if self._components is not None:
                return
            offline_hub()
            root = require_model(self.model_dir, ZERO123_XL, REQUIRED_FILES)
            device = resolve_device(self.device_options.device)
            dtype = resolve_dtype(self.device_options.dtype, device)
            from glimpse3d.services.multiview import zero123_pipeline as zp

            start = time.perf_counter()
            components = zp.load_components(root, device, dtype, self.config.variant)
            on_cuda = device.type == "cuda"
            self._hooks = zp.place(components, self.config.attention_slicing and on_cuda,
                                   self.config.cpu_offload and on_cuda)
            self._components = components
            log.info("zero123 backend loaded in %.1f s", time.perf_counter() - start,
                     extra={"device": str(device), "dtype": str(dtype), "resolution": components.resolution})

    def generate(
        self,
        image: np.ndarray,
        mask: np.ndarray | None,
        input_camera: Camera,
        splat: Splat | None,
        cameras: Sequence[Camera],
        seed: int = 0,
        steps: int = 0,
    ) -> list[GeneratedView]:
        """One view per camera; the splat is not used (the views come from the photo alone)."""
        if self._components is None:
            raise NotReady("the zero123 backend is not loaded yet")
        req = check_request(image, mask, input_camera, cameras, seed, steps)
        cfg = self.config
        matte = req.mask if req.mask is not None else estimate_matte(req.image, cfg.mask_threshold)
        poses = np.stack([relative_pose(req.input_camera, cam, cfg.reference_radius, f"views[{i}]")
                          for i, cam in enumerate(req.cameras)])  # [B, 4]
        model_input, framing = frame_input(req.image, matte, cfg.foreground_ratio, self._components.resolution)
        centre = object_centre(req.input_camera, framing)
        affines = [placement(framing, req.input_camera, cam, centre, f"views[{i}]")
                   for i, cam in enumerate(req.cameras)]
        background = photo_background(req.image, matte)
        rgbs = self._sample(model_input, poses, req.seed, req.steps or cfg.steps)
        views = [place_view(rgb, generated_matte(rgb, cfg.mask_threshold), affine, cam, background)
                 for rgb, affine, cam in zip(rgbs, affines, req.cameras, strict=True)]
        log.info("zero123 backend: %d view(s)", len(views), extra={"steps": req.steps or cfg.steps})
        return views

    def _sample(self, model_input: np.ndarray, poses: np.ndarray, seed: int, steps: int) -> np.ndarray:
        import torch

        from glimpse3d.services.multiview import zero123_pipeline as zp

        cfg = self.config
        settings = zp.SamplerSettings(steps=steps, guidance_scale=float(cfg.guidance_scale), eta=float(cfg.eta))
        try:
            with torch.inference_mode():
                return zp.sample_views(self._components, model_input, poses, seed, settings, cfg.batch_size)
        finally:
            for hook in self._hooks:
                hook.offload()
