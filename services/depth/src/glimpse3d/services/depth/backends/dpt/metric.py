"""Relative disparity -> metric camera-space z, for the ``dpt`` backend.

The networks predict affine-invariant inverse depth ``d = s / z + t`` (unknown ``s > 0``, ``t``).
The pipeline's conventions fix them: the object is an ellipsoid of revolution centred at the world
origin (camera-space depth ``z0``, :func:`~glimpse3d.services.depth.common.object_distance`), its
lateral semi-axis ``r = z0 R / sqrt(f^2 + R^2)`` from the silhouette's inscribed radius ``R`` px, its
depth semi-axis ``c = depth_extent * r`` (capped at ``0.95 z0``). The nearest point is
``z_near = z0 - c``, the rim (where the rays graze it) ``z_far = z0 - c^2 / z0``.

With ``d_lo`` / ``d_hi`` the ``percentile`` / ``100 - percentile`` percentiles of ``d`` inside the
mask, ``n = clip((d - d_lo) / (d_hi - d_lo), 0, 1)`` and ``z = 1 / (1 / z_far + n (1 / z_near - 1 / z_far))``:
independent of ``s`` and ``t``, monotone (larger disparity, nearer). A flat disparity gives a plane
at ``z_far``; 0 outside the mask. Limits: ``depth_extent`` is a prior, not measured; on-axis size
correction only; the outer ``percentile`` % at each end are flattened.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from pydantic import Field

from glimpse3d.core.backend import BackendOptions
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.services.depth.common import check_camera, check_mask, inflate, object_distance

log = logging.getLogger(__name__)

DEFAULT_DEPTH_EXTENT = 1.0
MIN_DEPTH_EXTENT, MAX_DEPTH_EXTENT = 0.05, 4.0
DEFAULT_PERCENTILE = 1.0
MAX_PERCENTILE = 20.0
MAX_SEMI_AXIS_FRACTION = 0.95  # c <= 0.95 z0: the camera stays outside the object
FLAT_SPREAD = 1e-6  # relative disparity spread below which the disparity is treated as flat


class DepthScale(BackendOptions):
    """How relative disparity becomes metric z (model: module docstring); the ``dpt`` backend's options
    derive from it.

    depth_extent: depth semi-axis of the object as a multiple of its silhouette radius; 1 = as deep as
        it is wide.
    percentile: the disparity range is taken between this percentile and ``100 - percentile`` of
        the values inside the mask.
    object_distance: camera-space depth of the object centre in world units; None = the depth of
        the world origin in the camera (2.7 when the camera sits at the origin).
    """

    depth_extent: float = Field(default=DEFAULT_DEPTH_EXTENT, ge=MIN_DEPTH_EXTENT, le=MAX_DEPTH_EXTENT)
    percentile: float = Field(default=DEFAULT_PERCENTILE, ge=0.0, le=MAX_PERCENTILE)
    object_distance: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


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
    m = check_mask(mask, shape)
    cam = check_camera(camera, shape)
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
