"""What the depth backends share: input checks, the weight-free matte and silhouette inflation.

Matte (:func:`estimate_mask`): an alpha channel that is not all opaque is the matte. Otherwise GrabCut
on a downscaled copy, seeded from Lab colour models of the centre and the border band plus a centred
prior (border pieces whose colour is unlike the centre's are definite background); the result is
cleaned (main components, holes filled, open/close), upsampled and feathered. Fallbacks: an Otsu
threshold of the colour distance to the border, then a centred ellipse. Never raises for a valid
image. The user's correction points (``(x, y, keep)``, fractions of the width and height) seed
GrabCut again (:func:`_corrected`). Limits: the object is assumed roughly centred; thin parts of the
background's colour are lost.

Inflation (:func:`inflate`): height ``sqrt(2 R D - D^2)`` px from the distance ``D`` to the contour
(``R = max D``), so a disk becomes a hemisphere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TypeGuard, cast

import cv2
import numpy as np

from glimpse3d.core.cameras import MAX_IMAGE_SIDE, Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.images import to_uint8

log = logging.getLogger(__name__)

DEFAULT_OBJECT_DISTANCE = 2.7  # world units; the default orbit radius (core.convert)
DEFAULT_WORK_SIDE = 384  # GrabCut runs at this longest side (it is O(pixels x iterations))
DEFAULT_GRABCUT_ITERATIONS = 5
BORDER_FRACTION = 0.04  # width of the border band, fraction of the shorter side
BORDER_SEGMENTS = 8  # the border band is judged in this many pieces per side
CENTRE_AXES = 0.3  # semi-axes of the central ellipse (the object colour sample), fractions of the sides
COLOUR_ROUNDS = 3  # alternations of the object / background colour models
COLOUR_BINS = 8 * 16 * 16
SURE_BACKGROUND_SCORE = 0.15  # a border piece whose mean P(object | colour) is below this is definite background
KEEP_COMPONENT_FRACTION = 0.2  # a further component is kept at this fraction of the largest's area, if central
MIN_FOREGROUND_FRACTION = 0.002
MAX_FOREGROUND_FRACTION = 0.95

# --------------------------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------------------------- #


def check_image(image: object, field: str = "image") -> np.ndarray:
    """uint8 or float ([0, 1]) [H, W], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3|4]."""
    if not isinstance(image, np.ndarray):
        raise InvalidInput(f"{field} must be a numpy array, got {type(image).__name__}", field=field)
    img = image[:, :, None].repeat(3, axis=2) if image.ndim == 2 else image
    if img.ndim != 3 or img.shape[2] not in (3, 4) or 0 in img.shape:
        raise InvalidInput(f"{field} must have shape [H, W, 3] or [H, W, 4], got {list(image.shape)}", field=field)
    if max(img.shape[:2]) > MAX_IMAGE_SIDE:
        size = f"{img.shape[1]}x{img.shape[0]}"
        raise InvalidInput(f"{field} is {size}; the limit is {MAX_IMAGE_SIDE} a side", field=field)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if not np.issubdtype(img.dtype, np.floating):
        raise InvalidInput(f"{field} must be uint8 or floating point, got {img.dtype}", field=field)
    if not np.isfinite(img).all():
        raise InvalidInput(f"{field} has a non-finite value", field=field)
    return np.ascontiguousarray(to_uint8(img))


def check_mask(mask: object, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.shape != shape:
        got = list(mask.shape) if isinstance(mask, np.ndarray) else type(mask).__name__
        raise InvalidInput(f"mask must have shape {list(shape)} (the image's), got {got}", field="mask")
    m = mask.astype(np.float32)
    if not np.isfinite(m).all() or m.min() < -1e-3 or m.max() > 1 + 1e-3:
        raise InvalidInput("mask values must be finite and in [0, 1]", field="mask")
    return np.clip(m, 0.0, 1.0)


def check_camera(camera: object, shape: tuple[int, int]) -> Camera:
    if not isinstance(camera, Camera):
        raise InvalidInput(f"camera must be a Camera, got {type(camera).__name__}", field="camera")
    if (camera.height, camera.width) != shape:
        raise InvalidInput(
            f"camera is {camera.width}x{camera.height} but the image is {shape[1]}x{shape[0]}", field="camera"
        )
    return camera


def object_distance(camera: Camera) -> float:
    """Camera-space depth of the world origin (the object centre), or the default 2.7."""
    z = float(camera.translation[2])  # x_cam = R @ 0 + t
    return z if z > 1e-6 else DEFAULT_OBJECT_DISTANCE


# --------------------------------------------------------------------------------------------- #
# Matting
# --------------------------------------------------------------------------------------------- #


def _border_width(h: int, w: int) -> int:
    return max(2, round(BORDER_FRACTION * min(h, w)))


def _colour_bins(rgb: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> int32 [h, w] index of the pixel's Lab cell (8 L x 16 a x 16 b = COLOUR_BINS)."""
    lab = cast(np.ndarray, cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB))  # uint8 (OpenCV's stubs: any int or float Mat)
    return ((lab[..., 0] >> 5).astype(np.int32) << 8) | ((lab[..., 1] >> 4).astype(np.int32) << 4) | (lab[..., 2] >> 4)


def _colour_histogram(bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted colour histogram [COLOUR_BINS], smoothed by [1, 2, 1] / 4 along each Lab axis, summing to 1."""
    hist = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=COLOUR_BINS).reshape(8, 16, 16)
    for axis in range(3):
        p = np.pad(hist, [(1, 1) if i == axis else (0, 0) for i in range(3)], mode="edge")
        n = hist.shape[axis]
        lo, mid, hi = (p.take(range(k, n + k), axis) for k in range(3))
        hist = 0.25 * lo + 0.5 * mid + 0.25 * hi
    total = float(hist.sum())
    return (hist / total).ravel() if total > 0 else hist.ravel()


def _border_segments(h: int, w: int, b: int) -> np.ndarray:
    """int32 [h, w]: which of the 4 * BORDER_SEGMENTS pieces of the border band a pixel is in, -1 inside."""
    k = BORDER_SEGMENTS
    seg = np.full((h, w), -1, np.int32)
    xs = np.minimum(np.arange(w) * k // w, k - 1)
    ys = np.minimum(np.arange(h) * k // h, k - 1)
    seg[:, -b:] = ys[:, None] + k  # right, then left; the top and bottom rows own the corners
    seg[:, :b] = ys[:, None] + 3 * k
    seg[:b] = xs[None, :]
    seg[-b:] = xs[None, :] + 2 * k
    return seg


def _centre_distance(h: int, w: int) -> np.ndarray:
    """float32 [h, w]: squared normalised distance from the image centre; 1 on the central ellipse."""
    ys = ((np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (CENTRE_AXES * h)) ** 2
    xs = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (CENTRE_AXES * w)) ** 2
    return ys[:, None] + xs[None, :]


def _grabcut_seeds(rgb: np.ndarray, b: int) -> np.ndarray:
    """GrabCut's initial labels (uint8 [h, w]) from a centre prior and colour models; see the module docstring."""
    h, w = rgb.shape[:2]
    bins = _colour_bins(rgb)
    ell = _centre_distance(h, w)
    seg = _border_segments(h, w, b)
    band = seg >= 0
    centre, border = (ell <= 1.0).astype(np.float64), band.astype(np.float64)
    p = np.full((h, w), 0.5)  # P(object | colour)
    for _ in range(COLOUR_ROUNDS):  # border colours that are the centre's count less as background, and back
        object_hist = _colour_histogram(bins, centre * p)
        background_hist = _colour_histogram(bins, border * (1.0 - p))
        po, pb = object_hist[bins], background_hist[bins]
        p = po / np.maximum(po + pb, 1e-12)
    n_seg = 4 * BORDER_SEGMENTS
    score = np.bincount(seg[band], weights=p[band], minlength=n_seg) / np.maximum(
        np.bincount(seg[band], minlength=n_seg), 1
    )  # [n_seg] mean P(object) of each border piece
    # Colour evidence plus the centred prior (a Gaussian of sigma CENTRE_AXES * sqrt(2) of each side, worth
    # +1 nat at the centre and -1 on the central ellipse), lightly smoothed.
    logit = np.log((p + 1e-4) / (1.0 - p + 1e-4)) + np.log(np.exp(-0.25 * ell) + 1e-2) + 1.0
    prob = cv2.GaussianBlur((1.0 / (1.0 + np.exp(-logit))).astype(np.float32), (0, 0), 1.5)
    gc = np.where(prob > 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[band & (score < SURE_BACKGROUND_SCORE)[np.maximum(seg, 0)]] = cv2.GC_BGD
    return gc


def _grabcut(rgb: np.ndarray, iterations: int) -> np.ndarray | None:
    """uint8 [h, w, 3] -> {0, 1} uint8 [h, w] foreground, or None when GrabCut cannot run."""
    h, w = rgb.shape[:2]
    b = _border_width(h, w)
    if min(h, w) < 4 * b + 4:
        return None
    gc = _grabcut_seeds(rgb, b)
    if not ((gc == cv2.GC_PR_FGD).any() and (gc != cv2.GC_PR_FGD).any()):
        return None  # one class has no pixels to learn its colour model from
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means initialisation draws from OpenCV's (thread-local) RNG
    try:
        # OpenCV's stubs require a rect; GC_INIT_WITH_MASK ignores it and the binding accepts None
        cv2.grabCut(np.ascontiguousarray(rgb[:, :, ::-1]), gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)  # pyright: ignore[reportArgumentType, reportCallIssue]
    except cv2.error as err:
        log.warning("grabcut failed", extra={"error": str(err).strip()[:200]})
        return None
    return ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)


def _border_distance_mask(rgb: np.ndarray) -> np.ndarray:
    """Fallback: Otsu threshold of the Lab distance to the border's median colour -> {0, 1} [h, w]."""
    h, w = rgb.shape[:2]
    b = max(1, min(_border_width(h, w), min(h, w) // 4))
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)  # [h, w, 3]
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    dist = np.linalg.norm(lab - np.median(border, axis=0), axis=-1)  # [h, w]
    dist = cv2.GaussianBlur(dist, (0, 0), 1.0)
    if dist.max() < 8.0:  # nothing stands out from the background colour
        return np.zeros((h, w), np.uint8)
    d8 = np.clip(dist * (255.0 / dist.max()), 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(d8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return fg.astype(np.uint8)


def _ellipse_prior(h: int, w: int) -> np.ndarray:
    fg = np.zeros((h, w), np.uint8)
    cv2.ellipse(fg, (w // 2, h // 2), (max(1, round(0.4 * w)), max(1, round(0.4 * h))), 0, 0, 360, 1, -1)
    return fg


def _main_components(fg: np.ndarray) -> np.ndarray:
    """The largest 8-connected component, plus any other holding KEEP_COMPONENT_FRACTION of its area that
    reaches the central ellipse (an object split by a thin occluder or a shadow); specks are dropped."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros_like(fg)
    areas = stats[1:, cv2.CC_STAT_AREA]
    big = np.flatnonzero(areas >= KEEP_COMPONENT_FRACTION * areas.max()) + 1
    central = np.unique(labels[_centre_distance(*fg.shape) <= 1.0])
    keep = np.union1d(np.intersect1d(big, central), [1 + int(np.argmax(areas))])
    return np.isin(labels, keep).astype(np.uint8)


def _fill_holes(fg: np.ndarray) -> np.ndarray:
    """Background regions that do not reach the frame become foreground."""
    h, w = fg.shape
    flood = np.pad(fg * 255, 1)  # [h + 2, w + 2]; the ring connects every border pixel
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
    return (fg.astype(bool) | (flood[1:-1, 1:-1] == 0)).astype(np.uint8)


def _clean(fg: np.ndarray | None) -> np.ndarray | None:
    """Main components, holes filled, light open/close."""
    if fg is None or not fg.any():
        return fg
    h, w = fg.shape
    k = 2 * max(1, round(0.006 * min(h, w))) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    out = _fill_holes(_main_components(fg))
    out = cv2.morphologyEx(out, cv2.MORPH_OPEN, kernel)
    out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, kernel)
    return _fill_holes(_main_components(out))


def _plausible(fg: np.ndarray | None) -> TypeGuard[np.ndarray]:
    if fg is None:
        return False
    frac = float(fg.mean())
    return MIN_FOREGROUND_FRACTION <= frac <= MAX_FOREGROUND_FRACTION


def _segment(rgb: np.ndarray, iterations: int) -> np.ndarray:
    """uint8 [h, w, 3] -> {0, 1} uint8 [h, w]: GrabCut, then the fallbacks (never raises)."""
    h, w = rgb.shape[:2]
    fg = _clean(_grabcut(rgb, iterations))
    if _plausible(fg):
        return fg
    log.info("grabcut found no plausible object; trying the border-colour fallback")
    fg = _clean(_border_distance_mask(rgb))
    if _plausible(fg):
        return fg
    log.warning("no object found in the image; using a centred ellipse as the matte")
    return _ellipse_prior(h, w)


POINT_RADIUS_FRACTION = 0.025  # a correction point seeds a disk of this fraction of the shorter side
POINT_REGION_TOLERANCE = 10.0  # Lab units: a point also claims the connected region of its colour
MAX_POINTS = 64


def check_points(points: object) -> list[tuple[float, float, bool]]:
    """[(x, y, keep)] with x, y fractions of the width and height in [0, 1]."""
    try:
        out = [(float(x), float(y), bool(keep)) for x, y, keep in points]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidInput("matte points must be (x, y, keep) triples", field="matte_points") from None
    if len(out) > MAX_POINTS:
        raise InvalidInput(f"at most {MAX_POINTS} matte points, got {len(out)}", field="matte_points")
    for x, y, _ in out:
        if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise InvalidInput(f"matte point ({x}, {y}) must lie in [0, 1] x [0, 1]", field="matte_points")
    return out


def _colour_region(lab: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    """bool [h, w]: the pixels connected to ``centre`` whose (smoothed) Lab colour is within
    POINT_REGION_TOLERANCE of the colour there in every channel (a "magic wand")."""
    h, w = lab.shape[:2]
    flood = np.zeros((h + 2, w + 2), np.uint8)
    tol = (POINT_REGION_TOLERANCE,) * 3
    flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)  # 8-connected, mask value 1
    cv2.floodFill(lab.copy(), flood, centre, (0, 0, 0), tol, tol, flags)
    return flood[1:-1, 1:-1] > 0


def _corrected(rgb: np.ndarray, hard: np.ndarray, points: list[tuple[float, float, bool]],
               iterations: int) -> np.ndarray:
    """The matte ``hard`` {0, 1} [h, w] corrected by the user's points.

    Each point claims a disk around it and the connected region of its colour (:func:`_colour_region`),
    as definite object (keep) or background (remove); a later point wins over an earlier one where
    they overlap. GrabCut runs again from the matte (probable object/background) with those seeds,
    then the main components and every component holding a keep point are kept, holes filled, and
    every point's seeds forced to its side."""
    h, w = hard.shape
    r = max(2, round(POINT_RADIUS_FRACTION * min(h, w)))
    gc = np.where(hard > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    lab = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB), (0, 0), 1.5)
    seeds = np.zeros((h, w), np.uint8)  # 1 keep, 2 remove
    centres = []
    for x, y, keep in points:
        c = (min(w - 1, round(x * (w - 1))), min(h - 1, round(y * (h - 1))))
        disk = np.zeros((h, w), np.uint8)
        cv2.circle(disk, c, r, 1, -1)
        seeds[(disk > 0) | _colour_region(lab, c)] = 1 if keep else 2
        centres.append((c, keep))
    gc[seeds == 1], gc[seeds == 2] = cv2.GC_FGD, cv2.GC_BGD
    fg = hard.copy()
    if (gc == cv2.GC_FGD).any() or (gc == cv2.GC_PR_FGD).any():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(np.ascontiguousarray(rgb[:, :, ::-1]), gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)  # pyright: ignore[reportArgumentType, reportCallIssue]  # rect: see _grabcut
            fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
        except cv2.error as err:  # e.g. no background pixel to learn from: keep the matte, apply the seeds
            log.warning("grabcut with correction points failed", extra={"error": str(err).strip()[:200]})
    fg[seeds == 1], fg[seeds == 2] = 1, 0
    keeps = [c for c, keep in centres if keep]
    if fg.any():
        _, labels = cv2.connectedComponents(fg, connectivity=8)
        wanted = {int(labels[cy, cx]) for cx, cy in keeps} - {0}
        fg = (np.isin(labels, sorted(wanted)) | (_main_components(fg) > 0)).astype(np.uint8)
    fg = _fill_holes(fg)
    fg[seeds == 2] = 0
    return fg


def _soft_matte(hard: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """{0, 1} [h, w] at work resolution -> feathered float32 [H, W] in [0, 1]."""
    h, w = shape
    up = cv2.resize(hard.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    binary = (up >= 0.5).astype(np.float32)
    sigma = max(0.6, 0.5 * w / hard.shape[1])  # about one work-resolution pixel
    return np.clip(cv2.GaussianBlur(binary, (0, 0), sigma), 0.0, 1.0)


def estimate_mask(
    image: np.ndarray,
    *,
    iterations: int = DEFAULT_GRABCUT_ITERATIONS,
    work_side: int = DEFAULT_WORK_SIDE,
    points: Sequence[tuple[float, float, bool]] = (),
) -> np.ndarray:
    """Foreground matte of ``image`` (uint8/float [H, W, 3|4]) -> [H, W] float32 in [0, 1].

    ``points``: the user's corrections, ``(x, y, keep)`` with x, y fractions of the width and height
    (see :func:`_corrected`). An alpha channel that is not all opaque is the matte as it is (the
    points are then ignored: the user drew the matte)."""
    img = check_image(image)
    corrections = check_points(points)
    h, w = img.shape[:2]
    if img.shape[2] == 4 and img[:, :, 3].min() < 255:
        return img[:, :, 3].astype(np.float32) / np.float32(255.0)
    rgb = img[:, :, :3]
    scale = min(1.0, work_side / max(h, w))
    small = rgb if scale >= 1.0 else cv2.resize(
        rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    hard = _segment(np.ascontiguousarray(small), iterations)  # [h', w'] {0, 1}
    if corrections:
        hard = _corrected(np.ascontiguousarray(small), hard, corrections, iterations)
    matte = _soft_matte(hard, (h, w))
    log.debug("matte estimated", extra={"coverage": round(float(matte.mean()), 4)})
    return matte


# --------------------------------------------------------------------------------------------- #
# Depth
# --------------------------------------------------------------------------------------------- #


def inflate(inside: np.ndarray) -> np.ndarray:
    """bool [H, W] silhouette -> [H, W] float32 height in pixels, ``sqrt(2 R D - D^2)``, 0 outside.

    ``D`` is measured to the contour (pixel edges), so a boundary pixel has ``D = 0.5``; the frame
    counts as contour, so an object cut by the image edge is closed there.
    """
    padded = np.pad(inside.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    d = np.where(inside, np.maximum(dist - 0.5, 0.0), 0.0).astype(np.float32)  # [H, W]
    r = float(d.max())
    return np.sqrt(np.clip(2.0 * r * d - d * d, 0.0, None)).astype(np.float32)

