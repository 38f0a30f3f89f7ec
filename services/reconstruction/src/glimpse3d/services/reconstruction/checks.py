"""Checks of a single-photo splat's unseen sides, from renders alone (no ground truth needed).

- :func:`mirrored_back_score`: the normalised cross-correlation of the high-pass luma of the front
  render, mirrored, and the back render (inside their common silhouette, after alignment): 1 when
  the back is a mirror image of the front, near 0 otherwise.
- :func:`streak_index`: in a side view, high-pass luma energy across horizontal lines over that
  along them: about 1 for detail without a direction, well above 1 for streaks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from glimpse3d.core.cameras import Camera, turned_about_up
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
HIGHPASS_SIGMA_PX = 3.0  # detail finer than about this many pixels is compared
MAX_SHIFT_PX = 3  # residual misalignment searched when comparing a back with a mirrored front
_OPAQUE = 0.5
_FLAT = 1e-4


@dataclass(frozen=True)
class View:
    """One render: rgb [H, W, 3] and alpha [H, W], float32 in [0, 1]."""

    rgb: np.ndarray
    alpha: np.ndarray


def render_view(splat: Splat, camera: Camera, background: Sequence[float] = (1.0, 1.0, 1.0)) -> View:
    """``splat`` rendered from ``camera`` without gradients."""
    with torch.no_grad():
        out = rasterize(splat, camera, background=tuple(background))
    rgb, alpha = out.rgb.clamp(0.0, 1.0).numpy(), out.alpha.clamp(0.0, 1.0).numpy()
    return View(rgb.astype(np.float32), alpha.astype(np.float32))


def highpass_luma(rgb: np.ndarray, mask: np.ndarray, sigma_px: float = HIGHPASS_SIGMA_PX,
                  axis: int | None = None) -> np.ndarray:
    """[H, W] luma of ``rgb`` [H, W, 3] minus its mask-normalised Gaussian blur (0 outside ``mask``).

    The blur averages only pixels inside ``mask`` [H, W] bool, so the silhouette's outline against the
    background adds nothing. ``axis`` 0 or 1 blurs along that image axis only (0: along y, 1: along x).
    """
    luma = (rgb.astype(np.float32) @ _LUMA).astype(np.float32)
    w = mask.astype(np.float32)
    k = cv2.getGaussianKernel(2 * int(np.ceil(3.0 * sigma_px)) + 1, sigma_px).astype(np.float32)
    one = np.ones((1, 1), np.float32)
    kx, ky = {None: (k, k), 0: (one, k), 1: (k, one)}[axis]

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(a, -1, kx, ky, borderType=cv2.BORDER_CONSTANT)

    low = blur(luma * w) / np.maximum(blur(w), 1e-6)
    return np.where(mask, luma - low, 0.0).astype(np.float32)


def inner_mask(alpha: np.ndarray, margin_px: float) -> np.ndarray:
    """bool [H, W]: opaque pixels of ``alpha`` at least ``margin_px`` from the silhouette's outline."""
    opaque = (alpha > _OPAQUE).astype(np.uint8)
    return cv2.distanceTransform(opaque, cv2.DIST_L2, 5) > margin_px


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` [H, W] over ``mask``; 0 when either is flat there
    (RMS deviation at most 1e-4)."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    sxx, syy = float(np.sum(x * x)), float(np.sum(y * y))
    if min(sxx, syy) <= x.size * _FLAT**2:  # rounding noise of a flat image is no detail
        return 0.0
    return float(np.sum(x * y) / math.sqrt(sxx * syy))


def mirrored(front: View, onto: View) -> View:
    """``front`` mirrored left-right, then warped by the affine map that best lines it up with ``onto``.

    The map is found by OpenCV's ECC alignment of the two lumas (both composited on grey, so the
    silhouettes take part), started from the plain mirror image; if it does not converge, the plain
    mirror image is returned.
    """
    flipped = View(np.ascontiguousarray(front.rgb[:, ::-1]), np.ascontiguousarray(front.alpha[:, ::-1]))

    def luma(view: View) -> np.ndarray:
        return ((view.rgb @ _LUMA) * view.alpha + 0.5 * (1.0 - view.alpha)).astype(np.float32)

    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    try:
        # OpenCV's stubs require inputMask; the binding takes None for no mask
        _, warp = cv2.findTransformECC(luma(onto), luma(flipped), warp, cv2.MOTION_AFFINE, criteria, None, 5)  # pyright: ignore[reportArgumentType, reportCallIssue]
    except cv2.error:
        return flipped
    size = (onto.alpha.shape[1], onto.alpha.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    rgb = cv2.warpAffine(flipped.rgb, warp, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(flipped.alpha, warp, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    return View(rgb, alpha)


def mirror_similarity(front: View, back: View, sigma_px: float = HIGHPASS_SIGMA_PX,
                      max_shift_px: int = MAX_SHIFT_PX) -> float:
    """High-pass luma NCC of ``back`` and ``front`` mirrored left-right, inside both silhouettes.

    The mirrored front is first aligned with the back by an affine map (:func:`mirrored`), then the
    best of the shifts up to ``max_shift_px`` in x and y is taken (the back of a lifted object is
    seen at other depths than its front, so it is not an exact mirror image). Each image is
    high-passed inside its own silhouette; pixels within ``2 sigma_px + 1 +
    max_shift_px`` of either outline are left out. 1 for ``back`` equal to the mirrored ``front``.
    """
    flipped = mirrored(front, back)
    margin = 2.0 * sigma_px + 1.0 + max_shift_px
    common = inner_mask(flipped.alpha, margin) & inner_mask(back.alpha, margin)
    a = highpass_luma(flipped.rgb, flipped.alpha > _OPAQUE, sigma_px)
    b = highpass_luma(back.rgb, back.alpha > _OPAQUE, sigma_px)
    shifts = range(-max_shift_px, max_shift_px + 1)
    return max(ncc(np.roll(a, (dy, dx), axis=(0, 1)), b, common) for dy in shifts for dx in shifts)


def mirrored_back_score(splat: Splat, camera: Camera, sigma_px: float = HIGHPASS_SIGMA_PX) -> float:
    """How much the back of ``splat`` (seen half-way round from ``camera``) is its front mirrored.

    ``camera`` is the photo's camera (for the project's photos: orbit azimuth 0 at the default orbit
    radius); the back view is the same camera turned 180 degrees about the world's vertical axis
    through the origin, so it has the same distance, elevation and intrinsics. Near 1: the back is
    a mirrored copy of the front; near 0: it is not.
    """
    front = render_view(splat, camera)
    back = render_view(splat, turned_about_up(camera, 180.0))
    return mirror_similarity(front, back, sigma_px)


def streak_index(view: View, sigma_px: float = HIGHPASS_SIGMA_PX) -> float:
    """RMS high-pass luma across image rows (along y) over that along them (along x), inside the silhouette."""
    mask = view.alpha > _OPAQUE
    inner = inner_mask(view.alpha, 2.0 * sigma_px + 1.0)
    if not inner.any():
        return float("nan")
    across = highpass_luma(view.rgb, mask, sigma_px, axis=0)[inner]
    along = highpass_luma(view.rgb, mask, sigma_px, axis=1)[inner]
    return float(np.sqrt(np.mean(across**2)) / max(float(np.sqrt(np.mean(along**2))), 1e-6))


def side_streak_index(splat: Splat, camera: Camera, sigma_px: float = HIGHPASS_SIGMA_PX) -> float:
    """:func:`streak_index` of ``splat`` seen from the side: ``camera`` turned 90 degrees about the vertical."""
    return streak_index(render_view(splat, turned_about_up(camera, 90.0)), sigma_px)
