"""Closing a lifted front layer into a whole object: a back layer and rim walls.

- **Thickness.** Behind each front point the object is as thick as an inflated silhouette: at
  ``d`` px from the mask edge (``R`` the largest such distance) the half-thickness is
  ``sqrt(d (2R - d))`` px, converted to world units at the centre depth; the world origin is the
  centre when that is plausible for this depth map.
- **Back layer.** Front samples move by that thickness along the object axis (the camera ray
  through the silhouette's centroid), so the outline stays put from behind and from the side.
- **Back colour.** The front's colours blurred (sigma ``blur`` x the silhouette's inscribed radius,
  :func:`low_frequency_colors`) and darkened: the back keeps the colour layout, not the texture
  (a copied texture shows as a mirror image, :func:`..checks.mirrored_back_score`).
- **Rim walls.** Gaussians long along the object axis bridge the front and back rims (one per 3
  footprints of the gap, at most 8), graded from the front's colour to the back's.
- Back samples and walls near the contour start inside the fitted front's opaque region, so they
  do not cover the photo's soft edge.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import cv2
import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.lifting import (
    THIN,
    Layer,
    lift_layer,
    outward_directions,
    rays_at,
    rotmat_to_quat,
    to_world,
)

logger = logging.getLogger(__name__)

_MAX_SILHOUETTE_RATIO = 0.8  # R / hypot(f, R) cap: an object filling the view is not a huge sphere
_MAX_WALL_SEGMENTS = 8  # with 4, most walls were needles over 4 footprints long (see the module docstring)
INSET = 0.5  # back and wall samples start at least this many footprints inside the opaque front


def edge_distance(valid: np.ndarray) -> np.ndarray:
    """[H, W] float32 Euclidean distance (px) of each ``valid`` pixel to the nearest invalid one."""
    return cv2.distanceTransform(valid.astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32)


def half_thickness(depth: np.ndarray, valid: np.ndarray, camera: Camera) -> np.ndarray:
    """[H, W] world half-thickness of the object from the silhouette's inflation (0 outside ``valid``)."""
    dist = edge_distance(valid)
    radius = float(dist.max())
    h_px = np.sqrt(np.clip(dist * (2.0 * radius - dist), 0.0, None))  # [H, W]
    f = math.sqrt(camera.fx * camera.fy)
    ratio = min(radius / math.hypot(f, radius), _MAX_SILHOUETTE_RATIO)
    z_near = float(np.percentile(depth[valid], 2.0))
    px_to_world = z_near / (1.0 - ratio) / math.hypot(f, radius)
    return np.where(valid, h_px * px_to_world, 0.0).astype(np.float32)


def origin_depth(depth: np.ndarray, valid: np.ndarray, camera: Camera) -> float | None:
    """Camera z of the world origin when it plausibly is the object's centre, else None.

    Objects are normalised to sit at the origin (common.proto), and the depth service puts the
    object centre there; the origin is accepted when it lies behind the object's nearest surface,
    within a generous bound of the size its silhouette suggests, and projects inside the silhouette's
    bounding box.
    """
    z = float(camera.translation[2])
    z_near = float(np.percentile(depth[valid], 2.0))
    if not z > z_near:
        return None
    radius = float(edge_distance(valid).max())
    f = math.sqrt(camera.fx * camera.fy)
    size = max(radius, 1.0) * z / math.hypot(f, radius)  # world radius of the silhouette at depth z
    uv, _ = camera.project(np.zeros((1, 3)))  # [1, 2] (u, v) of the origin
    rows, cols = np.nonzero(valid)
    inside = cols.min() <= uv[0, 0] <= cols.max() + 1 and rows.min() <= uv[0, 1] <= rows.max() + 1
    return z if inside and z - z_near <= 2.5 * size else None


def back_thickness(depth: np.ndarray, valid: np.ndarray, camera: Camera, min_gap: np.ndarray) -> np.ndarray:
    """[H, W] front-to-back distance: the front mirrored behind the object's centre depth.

    The centre is the world origin when plausible (:func:`origin_depth`); otherwise each pixel's
    centre lies one inflated half-thickness behind its front depth (:func:`half_thickness`).
    At least ``min_gap`` [H, W] everywhere inside ``valid``.
    """
    centre = origin_depth(depth, valid, camera)
    if centre is None:
        logger.debug("closure: world origin is not the object centre; using the silhouette inflation")
        thickness = 2.0 * half_thickness(depth, valid, camera)
    else:
        thickness = 2.0 * np.clip(centre - depth, 0.0, None)
    return np.where(valid, np.maximum(thickness, min_gap), 0.0).astype(np.float32)


def object_axis(valid: np.ndarray, camera: Camera) -> np.ndarray:
    """[3] unit camera-space direction of the ray through the centroid of ``valid`` [H, W]."""
    rows, cols = np.nonzero(valid)
    centroid = np.array([[rows.mean(), cols.mean()]])  # [1, 2] (row, col), pixel-centre offset below
    ray = rays_at(camera, np.zeros((1, 2), np.int64), centroid[:, ::-1])[0]  # [3]
    return (ray / np.linalg.norm(ray)).astype(np.float32)


def opaque_core(alpha: np.ndarray, valid: np.ndarray, threshold: float = 0.97) -> np.ndarray:
    """bool [H, W]: where the fitted front (alpha [H, W]) is opaque; ``valid`` if that is nearly empty."""
    core = (alpha >= threshold) & valid
    return core if int(core.sum()) >= max(4, int(0.05 * valid.sum())) else valid


def inset_shifts(core: np.ndarray, pixels: np.ndarray, inset_px: float) -> np.ndarray:
    """[N, 2] (x, y) px moving each of ``pixels`` [N, 2] to at least ``inset_px`` inside ``core`` [H, W]."""
    inside = core.astype(np.uint8)
    signed = (cv2.distanceTransform(inside, cv2.DIST_L2, 5)
              - cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)).astype(np.float32)  # [H, W] > 0 inside
    amount = np.clip(inset_px - signed[pixels[:, 0], pixels[:, 1]], 0.0, None)[:, None]  # [N, 1]
    return (-amount * outward_directions(signed, pixels)[:, :2]).astype(np.float32)


def interior_colors(layer: Layer, dist: np.ndarray, band_px: float) -> np.ndarray:
    """[N, 3] colours, each sample within ``band_px`` of the contour taking its nearest inner sample's."""
    d = dist[layer.pixels[:, 0], layer.pixels[:, 1]]  # [N]
    inner, rim = np.flatnonzero(d > band_px), np.flatnonzero(d <= band_px)
    colors = layer.colors.copy()
    if inner.size == 0 or rim.size == 0:
        return colors
    inner_px = layer.pixels[inner].astype(np.float32)  # [I, 2]
    for start in range(0, rim.size, 256):  # [256, I] distance blocks keep memory small
        block = rim[start : start + 256]
        d2 = np.sum((layer.pixels[block, None, :].astype(np.float32) - inner_px[None]) ** 2, axis=-1)
        colors[block] = layer.colors[inner[np.argmin(d2, axis=1)]]
    return colors


def low_frequency_colors(pixels: np.ndarray, colors: np.ndarray, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """[N, 3] each sample's colour averaged over the samples around it with Gaussian weights of ``sigma_px``.

    ``pixels`` [N, 2] (row, col) and ``colors`` [N, 3] are samples of an image of ``shape``; only the
    samples contribute (a normalised convolution), so pixels outside the object add nothing.
    """
    if sigma_px <= 0:
        return colors.copy()
    num = np.zeros((*shape, 3), np.float32)
    den = np.zeros(shape, np.float32)
    np.add.at(num, (pixels[:, 0], pixels[:, 1]), colors.astype(np.float32))
    np.add.at(den, (pixels[:, 0], pixels[:, 1]), 1.0)
    num = cv2.GaussianBlur(num, (0, 0), sigma_px, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(den, (0, 0), sigma_px, borderType=cv2.BORDER_CONSTANT)
    at = num[pixels[:, 0], pixels[:, 1]] / np.maximum(den[pixels[:, 0], pixels[:, 1], None], 1e-12)
    return np.clip(at, 0.0, 1.0).astype(np.float32)


def back_layer(
    front: Layer, depth: np.ndarray, valid: np.ndarray, camera: Camera, core: np.ndarray,
    sigma_px: float, *, min_thickness: float = 2.0, darken: float = 0.9, blur: float = 0.5,
) -> tuple[Layer, np.ndarray, np.ndarray]:
    """The back side of ``front``; also each sample's camera-space front point [N, 3] and thickness [N].

    ``depth``/``valid`` [H, W] are the front depth map and its support, ``core`` [H, W] where the
    fitted front is opaque, ``sigma_px`` the samples' footprint; the thickness is at least
    ``min_thickness`` footprints.
    """
    px = front.pixels
    f = math.sqrt(camera.fx * camera.fy)
    axis = object_axis(valid, camera)  # [3]
    # Displacement along the axis that moves a point by the thickness in camera z.
    thickness_map = back_thickness(depth, valid, camera, min_thickness * sigma_px * depth / f) / axis[2]
    dist = edge_distance(valid)
    colors = interior_colors(front, dist, band_px=2.0 * sigma_px + 1.0)
    colors = low_frequency_colors(px, colors, valid.shape, blur * float(dist.max()))
    colors = np.clip(colors * darken, 0.0, 1.0)
    shift = inset_shifts(core, px, inset_px=INSET * sigma_px)  # [N, 2]
    # Orientation and footprint from the back surface as a depth map; positions moved along the axis.
    back_z = np.where(valid, depth + thickness_map * axis[2], 0.0).astype(np.float32)
    layer = lift_layer(back_z, valid, colors, px, sigma_px, camera, shift)
    start = rays_at(camera, px, shift) * depth[px[:, 0], px[:, 1], None]  # [N, 3] camera space
    thickness = thickness_map[px[:, 0], px[:, 1]]  # [N]
    back = replace(layer, means=to_world(start + thickness[:, None] * axis, camera))
    return back, start, thickness


def wall_segments(gap: np.ndarray, sigma: np.ndarray, budget: int) -> np.ndarray:
    """[R] wall Gaussians per rim sample: one per 3 footprints of ``gap`` [R] (2..8), scaled down to ``budget``."""
    want = np.clip(np.ceil(gap / (3.0 * sigma)), 2, _MAX_WALL_SEGMENTS)  # [R]
    if want.sum() > budget:
        want = np.maximum(np.floor(want * budget / want.sum()), 1)
    if want.sum() > budget:  # rounding up to one each overshot: one each (the caller ensures that fits)
        want = np.ones_like(want)
    return want.astype(int)


def wall_budget_share(valid: np.ndarray, budget: int, per_rim_sample: float = 3.0) -> int:
    """Front samples to take so that front + back + rim walls fit ``budget`` for the silhouette ``valid``.

    With grid spacing s, area A and perimeter P (px): 2 A / s^2 + per_rim_sample * 1.5 P / s = budget.
    """
    area = float(valid.sum())
    perimeter = float((valid & ~cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)).sum())
    b = per_rim_sample * 1.5 * perimeter
    inv_s = (-b + math.sqrt(b * b + 8.0 * area * budget)) / (4.0 * area)  # positive root, 1 / s
    return max(1, min(int(area * inv_s * inv_s), budget // 2))


def wall_layer(
    back: Layer, start: np.ndarray, thickness: np.ndarray, valid: np.ndarray, camera: Camera,
    spacing: float, sigma_px: float, budget: int, darken: float = 0.9,
) -> Layer | None:
    """Needles along the object axis from the outermost front samples to their back copies.

    ``start`` [N, 3] and ``thickness`` [N] come from :func:`back_layer`. Each sample within 1.5 grid
    spacings of the contour gets up to 8 Gaussians, long along the axis, wide along the contour and
    thin across it (seen from the input camera they are short dashes hidden behind the front).
    Colours blend from the undarkened back colour to the darkened one. At most ``budget`` in all
    (:func:`wall_segments`); None when even one per rim sample does not fit.
    """
    dist = edge_distance(valid)
    rim = np.flatnonzero(dist[back.pixels[:, 0], back.pixels[:, 1]] <= 1.5 * spacing)  # [R]
    if rim.size == 0 or budget < rim.size:
        return None
    axis = object_axis(valid, camera)  # [3]
    sigma = sigma_px * start[rim, 2] / math.sqrt(camera.fx * camera.fy)  # [R] world footprint
    gap = thickness[rim]  # [R]
    count = wall_segments(gap, sigma, budget)  # [R]
    owner = np.repeat(np.arange(rim.size), count)  # [M] index into rim
    step = (np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count) + 0.5) / count[owner]  # [M] (0, 1)
    points = start[rim][owner] + (step * gap[owner])[:, None] * axis  # [M, 3] camera space
    outward = outward_directions(dist, back.pixels[rim])[owner]  # [M, 3] in the image plane
    e3 = outward - np.sum(outward * axis, axis=1, keepdims=True) * axis  # across the contour
    e3 /= np.maximum(np.linalg.norm(e3, axis=1, keepdims=True), 1e-12)
    e2 = np.cross(e3, axis)  # along the contour; (axis, e2, e3) is right-handed
    e1 = np.broadcast_to(axis, e3.shape)
    rot_world = camera.rotation.T[None] @ np.stack([e1, e2, e3], axis=2)  # [M, 3, 3]
    half = gap[owner] / (2.5 * count[owner])  # [M] std dev along the axis; the ends overshoot by 0.3 segment
    wide = sigma[owner]
    scales = np.stack([np.maximum(half, wide), wide, THIN * wide], axis=1)  # [M, 3]
    darker = back.colors[rim][owner]  # [M, 3]
    lighter = np.clip(darker / max(darken, 1e-3), 0.0, 1.0)
    colors = (1.0 - step[:, None]) * lighter + step[:, None] * darker
    return Layer(to_world(points, camera), rotmat_to_quat(rot_world), np.log(scales).astype(np.float32),
                 colors.astype(np.float32), back.pixels[rim][owner])
