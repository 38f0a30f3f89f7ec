"""The weight-free ``silhouette`` depth backend: the matte (weight-free, or SAM 2 when ``matting``
names it), then the silhouette inflated into a dome.

Depth (:func:`estimate_depth`): the inflation height (:func:`~glimpse3d.services.depth.common.inflate`)
becomes world units at the object-centre depth ``z0`` (the camera-space depth of the world origin,
or 2.7 when the camera sits there) with the tangent-cone scale ``z0 / sqrt(f^2 + R^2)``; the rim is
moved ``r^2 / z0`` in front of the centre plane, where the rays graze a sphere. A shading term
("brighter = slightly closer", at most ``shading_weight`` of the inscribed radius, tapered to 0 at
the rim) adds relief. ``depth = z0 - height - rim offset - shading`` inside ``mask >= 0.5``, 0
outside. Limits: one global ``R`` (thin parts are inflated as the body's rim); on-axis correction
only; face-on concavities are not recovered.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
from pydantic import Field

from glimpse3d.core.backend import BackendOptions, Device
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.models import DEFAULT_MODEL_DIR
from glimpse3d.services.depth.api import DepthBackend, DepthResult
from glimpse3d.services.depth.common import (
    _segment,
    check_camera,
    check_image,
    check_mask,
    estimate_mask,
    inflate,
    object_distance,
)
from glimpse3d.services.depth.matting import MatteOptions, Sam2Matting, learned_matting

log = logging.getLogger(__name__)

DEFAULT_SHADING_WEIGHT = 0.05  # fraction of the inscribed radius
MAX_SHADING_WEIGHT = 0.5
MIN_DEPTH_FRACTION = 0.05
SHADING_SIDE = 512  # the shading term is smoothed on a grid of at most this many pixels a side


def _check_weight(value: float, field: str) -> float:
    v = float(value)
    if not math.isfinite(v) or not 0.0 <= v <= MAX_SHADING_WEIGHT:
        raise InvalidInput(f"{field} must be in [0, {MAX_SHADING_WEIGHT}], got {value}", field=field)
    return v


def shading_term(rgb: np.ndarray, inside: np.ndarray, radius_px: float) -> np.ndarray:
    """[H, W] float32 in [-1, 1]: smoothed luma relative to the object's median, 0 outside.

    The smoothing (a Gaussian of sigma 5 % of the inscribed radius, normalised by the blurred mask
    so the background does not bleed in) is wide, so it runs on a grid of at most SHADING_SIDE px
    a side and the result is upsampled.
    """
    h, w = inside.shape
    if not inside.any():
        return np.zeros((h, w), np.float32)
    luma = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    weight = inside.astype(np.float32)
    scale = min(1.0, SHADING_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        luma = cv2.resize(luma * weight, size, interpolation=cv2.INTER_AREA)
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    else:
        luma = luma * weight
    sigma = max(0.5, max(1.0, 0.05 * radius_px) * scale)
    num, den = cv2.GaussianBlur(luma, (0, 0), sigma), cv2.GaussianBlur(weight, (0, 0), sigma)
    smooth = num / np.maximum(den, 1e-6)  # [h', w']
    vals = smooth[weight >= 0.5] if (weight >= 0.5).any() else smooth[weight > 0]
    med = float(np.median(vals))
    spread = float(np.percentile(np.abs(vals - med), 90))
    if spread < 1e-4:
        return np.zeros((h, w), np.float32)
    s = np.clip((smooth - med) / (2.0 * spread), -1.0, 1.0).astype(np.float32)
    if scale < 1.0:
        s = cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(inside, s, 0.0).astype(np.float32)


def estimate_depth(
    image: np.ndarray,
    mask: np.ndarray,
    camera: Camera,
    *,
    z0: float | None = None,
    shading_weight: float = DEFAULT_SHADING_WEIGHT,
) -> np.ndarray:
    """Camera-space z-depth [H, W] float32 of the object in ``mask`` (model: module docstring)."""
    img = check_image(image)
    shape = (img.shape[0], img.shape[1])
    m = check_mask(mask, shape)
    cam = check_camera(camera, shape)
    weight = _check_weight(shading_weight, "shading_weight")
    if z0 is None:
        z0 = object_distance(cam)
    elif not math.isfinite(z0) or z0 <= 0:
        raise InvalidInput(f"z0 must be a positive finite depth, got {z0}", field="z0")
    inside = m >= 0.5  # [H, W] bool
    depth = np.zeros(shape, np.float32)
    if not inside.any():
        log.warning("empty mask: depth is 0 everywhere")
        return depth
    height_px = inflate(inside)  # [H, W]
    radius_px = max(float(height_px.max()), 1e-6)
    f = math.sqrt(cam.fx * cam.fy)
    px_to_world = z0 / math.hypot(f, radius_px)  # z0 / f, corrected for the tangent cone
    radius_world = radius_px * px_to_world
    taper = height_px / radius_px  # [H, W] 0 at the rim, 1 at the top
    relief = height_px * px_to_world + (radius_world**2 / z0) * (1.0 - taper)  # world units
    if weight > 0:
        relief += weight * radius_world * taper * shading_term(img[:, :, :3], inside, radius_px)
    z = np.maximum(z0 - relief, MIN_DEPTH_FRACTION * z0)
    depth[inside] = z[inside]
    return depth


class SilhouetteOptions(MatteOptions):
    """``shading_weight``: the shading relief, a fraction of the inscribed radius; ``object_distance``:
    the object centre's camera-space depth (None: from the camera). ``model_dir`` / ``device``: where
    the ``matting`` model is loaded from and runs (unused without one)."""

    shading_weight: float = Field(default=DEFAULT_SHADING_WEIGHT, ge=0.0, le=MAX_SHADING_WEIGHT)
    object_distance: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    model_dir: Path = Field(default=DEFAULT_MODEL_DIR, strict=False)
    device: Device = "auto"


class SilhouetteDepthBackend(DepthBackend):
    """Weight-free depth backend: GrabCut/alpha matting (or SAM 2, option ``matting``) + silhouette
    inflation. CPU only; without ``matting`` it imports neither torch nor a model library."""

    name = "silhouette"
    Options: ClassVar[type[BackendOptions]] = SilhouetteOptions
    options: SilhouetteOptions

    def _setup(self) -> None:
        self.matting: Sam2Matting | None = learned_matting(self.options, self.options.model_dir, self.options.device)

    def _load(self) -> None:
        """Check that OpenCV's GrabCut runs, then load the matting model when one is configured."""
        probe = np.zeros((32, 32, 3), np.uint8)
        probe[8:24, 8:24] = 200
        _segment(probe, 1)
        if self.matting is not None:
            self.matting.load()

    def _describe_loaded(self) -> dict[str, object]:
        return {"opencv": cv2.__version__, "matting": self.matting.model if self.matting else "grabcut"}

    def _matte(self, image: np.ndarray, points: list[tuple[float, float, bool]]) -> np.ndarray:
        if self.matting is not None:
            return self.matting.matte(image, points)
        o = self.options
        return estimate_mask(image, iterations=o.grabcut_iterations, work_side=o.work_side, points=points)

    def _estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        mask = self._matte(image, [])
        depth = estimate_depth(image, mask, camera, z0=self.options.object_distance,
                               shading_weight=self.options.shading_weight)
        return DepthResult(depth=depth, mask=mask)
