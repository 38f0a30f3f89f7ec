"""Relative disparity -> metric camera-space z, for the learned depth backends.

Monocular depth networks trained on mixed data (MiDaS / DPT, Depth Anything) predict *affine-invariant
inverse depth*: their output ``d`` equals ``s / z + t`` for an unknown scale ``s > 0`` and shift ``t``
per image. Nothing in one photo fixes ``s`` and ``t``, so the pipeline's own conventions do. The
object sits at the world origin (:mod:`glimpse3d.core.cameras`; the reconstruction normalises it
there), so its centre is at the camera-space depth ``z0`` of the origin (:func:`object_distance`:
``t_z`` of the world-to-camera transform, 2.7 when the camera sits at the origin), and its size
follows from its silhouette.

Model: the object is an ellipsoid of revolution centred at the origin, with lateral semi-axis
``r`` (from the silhouette) and depth semi-axis ``c = depth_extent * r`` (``depth_extent = 1``: a
sphere-like object as deep as it is wide).

- ``r``: the silhouette's inscribed radius ``R`` px (largest distance from a mask pixel to the
  contour, the same measure the weight-free backend inflates) in world units at depth ``z0``. A
  sphere of radius ``r`` at distance ``z0`` is seen under the half-angle ``asin(r / z0)``, so
  ``r = z0 * R / sqrt(f^2 + R^2)`` with ``f = sqrt(fx * fy)``.
- Nearest visible point (the largest disparity): ``z_near = z0 - c``.
- Farthest visible point (the smallest disparity): the silhouette rim. The rays from the camera
  graze the ellipsoid on the polar plane of the camera centre, ``c^2 / z0`` in front of the centre
  plane, so ``z_far = z0 - c^2 / z0`` (for a sphere: ``z0 - r^2 / z0``, exact).
  ``c`` is capped at ``0.95 * z0`` so the camera stays outside the object and ``z_near > 0``.

Inverse depth is affine in the network output, so one affine map sends the disparity range onto
``[1 / z_far, 1 / z_near]``. With ``d_lo`` and ``d_hi`` the ``percentile``-th and
``(100 - percentile)``-th percentiles of ``d`` inside the mask (``mask >= 0.5``; the percentiles
keep a few outliers, typically at the mask edge where the background bleeds in, from setting the
range), the normalised disparity is ``n = clip((d - d_lo) / (d_hi - d_lo), 0, 1)`` (0 = farthest,
1 = nearest) and

    z = 1 / (a * n + b),   b = 1 / z_far,   a = 1 / z_near - 1 / z_far,

that is, the two constraints ``n = 0 -> z_far`` and ``n = 1 -> z_near`` solved for ``a`` and ``b``.
Since ``a > 0``, a larger disparity always gives a smaller z (nearer), and for any ``s > 0`` and
``t`` the result does not depend on them: a disparity that is exact up to scale and shift comes
back as the exact depth. A disparity with no spread inside the mask (``d_hi - d_lo`` below 1e-6 of
its magnitude) has no shape to convey: every pixel gets ``n = 0``, a fronto-parallel plane at
``z_far``. Outside the mask the depth is 0.

Limits: the object's depth extent is a prior (``depth_extent``), not measured; an object far off
the optical axis gets the on-axis size correction only; ``n`` is clipped, so the outer
``percentile`` % at each end of the disparity range are flattened onto ``z_near`` / ``z_far``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.services.depth.silhouette import _check_camera, _check_mask, inflate, object_distance

log = logging.getLogger(__name__)

DEFAULT_DEPTH_EXTENT = 1.0
MIN_DEPTH_EXTENT, MAX_DEPTH_EXTENT = 0.05, 4.0
DEFAULT_PERCENTILE = 1.0
MAX_PERCENTILE = 20.0
MAX_SEMI_AXIS_FRACTION = 0.95  # c <= 0.95 z0: the camera stays outside the object
FLAT_SPREAD = 1e-6  # relative disparity spread below which the disparity is treated as flat


@dataclass(frozen=True)
class DepthScale:
    """How relative disparity becomes metric z (model: module docstring).

    depth_extent: depth semi-axis of the object as a multiple of its silhouette radius, in
        [0.05, 4]; 1 = as deep as it is wide.
    percentile: the disparity range is taken between this percentile and ``100 - percentile`` of
        the values inside the mask, in [0, 20].
    object_distance: camera-space depth of the object centre in world units; None = the depth of
        the world origin in the camera (2.7 when the camera sits at the origin).
    """

    depth_extent: float = DEFAULT_DEPTH_EXTENT
    percentile: float = DEFAULT_PERCENTILE
    object_distance: float | None = None

    def __post_init__(self) -> None:
        extent = _finite(self.depth_extent, "depth_extent")
        if not MIN_DEPTH_EXTENT <= extent <= MAX_DEPTH_EXTENT:
            raise InvalidInput(
                f"depth_extent must be in [{MIN_DEPTH_EXTENT}, {MAX_DEPTH_EXTENT}], got {self.depth_extent}",
                field="depth_extent",
            )
        pct = _finite(self.percentile, "percentile")
        if not 0.0 <= pct <= MAX_PERCENTILE:
            raise InvalidInput(f"percentile must be in [0, {MAX_PERCENTILE}], got {self.percentile}",
                               field="percentile")
        object.__setattr__(self, "depth_extent", extent)
        object.__setattr__(self, "percentile", pct)
        if self.object_distance is not None:
            z0 = _finite(self.object_distance, "object_distance")
            if z0 <= 0:
                raise InvalidInput(f"object_distance must be positive, got {self.object_distance}",
                                   field="object_distance")
            object.__setattr__(self, "object_distance", z0)


def _finite(value: object, field: str) -> float:
    if isinstance(value, bool):
        raise InvalidInput(f"{field} must be a number, got {value!r}", field=field)
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInput(f"{field} must be a number, got {value!r}", field=field) from None
    if not math.isfinite(v):
        raise InvalidInput(f"{field} must be finite, got {value}", field=field)
    return v


def silhouette_radius(inside: np.ndarray, camera: Camera, z0: float) -> float:
    """World radius ``r`` of the object in ``inside`` (bool [H, W]) at depth ``z0``: the inscribed
    radius in pixels, corrected for the tangent cone (``r = z0 R / sqrt(f^2 + R^2)``)."""
    radius_px = float(inflate(inside).max())  # the inflation height peaks at the inscribed radius
    return z0 * radius_px / math.hypot(math.sqrt(camera.fx * camera.fy), radius_px)


def depth_range(radius: float, z0: float, depth_extent: float) -> tuple[float, float]:
    """``(z_near, z_far)`` of the visible surface of the ellipsoid (semi-axes ``radius`` laterally,
    ``depth_extent * radius`` in depth) centred at depth ``z0``."""
    c = min(depth_extent * radius, MAX_SEMI_AXIS_FRACTION * z0)
    return z0 - c, z0 - c * c / z0


def normalised_disparity(disparity: np.ndarray, inside: np.ndarray, percentile: float) -> np.ndarray:
    """[H, W] float64 ``n`` in [0, 1] (0 = the far end of the range inside the mask, 1 = the near end)."""
    values = disparity[inside].astype(np.float64)
    lo, hi = np.percentile(values, [percentile, 100.0 - percentile])
    spread = float(hi - lo)
    if spread <= FLAT_SPREAD * max(abs(float(hi)), abs(float(lo)), 1e-30):
        log.info("disparity is flat inside the mask: a fronto-parallel plane at the far depth")
        return np.zeros(disparity.shape, np.float64)
    return np.clip((disparity.astype(np.float64) - lo) / spread, 0.0, 1.0)


def disparity_to_depth(
    disparity: np.ndarray, mask: np.ndarray, camera: Camera, scale: DepthScale | None = None
) -> np.ndarray:
    """Affine-invariant disparity [H, W] (larger = nearer) -> camera-space z [H, W] float32 in world
    units inside ``mask >= 0.5``, 0 outside (model: module docstring)."""
    if not isinstance(disparity, np.ndarray) or disparity.ndim != 2 or 0 in disparity.shape:
        got = list(disparity.shape) if isinstance(disparity, np.ndarray) else type(disparity).__name__
        raise InvalidInput(f"disparity must be a non-empty [H, W] array, got {got}", field="disparity")
    shape = (disparity.shape[0], disparity.shape[1])
    m = _check_mask(mask, shape)
    cam = _check_camera(camera, shape)
    scale = scale or DepthScale()
    inside = m >= 0.5  # [H, W]
    depth = np.zeros(shape, np.float32)
    if not inside.any():
        log.warning("empty mask: depth is 0 everywhere")
        return depth
    if not np.isfinite(disparity[inside]).all():
        raise InvalidInput("disparity has a non-finite value inside the mask", field="disparity")
    z0 = scale.object_distance if scale.object_distance is not None else object_distance(cam)
    z_near, z_far = depth_range(silhouette_radius(inside, cam, z0), z0, scale.depth_extent)
    n = normalised_disparity(disparity, inside, scale.percentile)  # [H, W]
    inv = 1.0 / z_far + n * (1.0 / z_near - 1.0 / z_far)
    depth[inside] = (1.0 / inv[inside]).astype(np.float32)
    log.debug("disparity mapped to depth", extra={"z0": round(z0, 4), "z_near": round(z_near, 4),
                                                   "z_far": round(z_far, 4)})
    return depth
