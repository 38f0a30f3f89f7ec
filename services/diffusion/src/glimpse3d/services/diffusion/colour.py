"""Colour registration of a view onto the input photo, shared by the ``classical`` and ``sdxl`` backends.

:func:`transfer_to_photo` fits one global Lab transform (L gain and offset, one chroma gain, a and b
offsets) by iterated nearest-colour matching against the photo's palette (:func:`color_transfer`): each
view colour is paired with the closest photo colour and the transform refitted on the closest pairs,
while that brings the view closer to the photo. Gains stay within [1 / MAX_GAIN, MAX_GAIN]; a view that
already has the photo's colours is a fixed point. The palette is the photo's foreground when it has an
alpha channel, else the whole photo, and then only pairs within CAPTURE_DISTANCE (CIE76) count.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

log = logging.getLogger(__name__)

MAX_GAIN = 1.5  # L and chroma gains stay in [1 / 1.5, 1.5]
COLOUR_RIDGE = 4.0  # Lab units^2: pulls the gains towards 1 when the view has little spread
COLOUR_INLIERS = 0.8  # the closest 80 % of colour pairs drive the fit (the rest may be unseen in the photo)
COLOUR_ITERATIONS = 12
CAPTURE_DISTANCE = 25.0  # CIE76: farther view-to-photo colour pairs are not used when the photo has no alpha
MAX_COLOUR_SAMPLES = 1024  # view pixels used for the fit
PALETTE_STEP = 1.0  # Lab grid of the photo's palette
MAX_PALETTE = 4096
BACKDROP_SPREAD = 10.0  # Lab units: a photo border this uniform (90th percentile) is a plain backdrop


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """float32 RGB [H, W, 3] in [0, 1] -> Lab [H, W, 3] (L in [0, 100])."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab [H, W, 3] -> float32 RGB [H, W, 3] clipped to [0, 1]."""
    return np.clip(cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)


def _sample_rows(px: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` rows of ``px`` [N, C], evenly strided (deterministic)."""
    if len(px) <= limit:
        return px
    return px[np.linspace(0, len(px) - 1, limit).astype(np.int64)]


def _grid_cells(px: np.ndarray, step: float) -> np.ndarray:
    """Centres [P, 3] (float32) of the cells of a Lab grid with spacing ``step`` that hold a point of px [N, 3]."""
    lo = np.array([0.0, -128.0, -128.0], np.float32)
    q = np.rint((px - lo) / step).astype(np.int64)  # [N, 3]
    q -= q.min(axis=0)
    dims = q.max(axis=0) + 1
    occupied = np.zeros(int(np.prod(dims)), bool)
    occupied[np.ravel_multi_index(q.T, dims)] = True
    cells = np.stack(np.unravel_index(np.flatnonzero(occupied), dims), axis=1)
    return ((cells + np.rint((px.min(axis=0) - lo) / step)) * step + lo).astype(np.float32)


def colour_palette(ref_px: np.ndarray) -> np.ndarray:
    """The photo's colours, Lab [N, 3] -> the occupied cells of a Lab grid [P, 3] (float32, cell centres).

    The grid step is PALETTE_STEP, multiplied by 1.5 until at most MAX_PALETTE cells are occupied.
    """
    palette, step = _grid_cells(ref_px, PALETTE_STEP), PALETTE_STEP
    while len(palette) > MAX_PALETTE:
        step *= 1.5
        palette = _grid_cells(palette, step)
    return palette


def _nearest(points: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Nearest palette colour [N, 3] of each point [N, 3] (Euclidean in Lab: CIE76), exact brute force."""
    matches = cv2.BFMatcher(cv2.NORM_L2).match(np.ascontiguousarray(points, np.float32), palette)
    return palette[np.fromiter((m.trainIdx for m in matches), np.int64, len(matches))]


def _apply_colour(lab: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Apply ``params`` = (L gain, L offset, chroma gain, a offset, b offset) to Lab [..., 3]."""
    out = np.empty_like(lab)
    out[..., 0] = params[0] * lab[..., 0] + params[1]
    out[..., 1] = params[2] * lab[..., 1] + params[3]
    out[..., 2] = params[2] * lab[..., 2] + params[4]
    return out


def _fit_colour(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares (L gain, L offset, chroma gain, a, b offsets) taking ``src`` [N, 3] to ``dst``.

    The gains are pulled towards 1 by a ridge of COLOUR_RIDGE (Lab units^2), so that a view with little
    spread keeps its contrast, and clamped to [1 / MAX_GAIN, MAX_GAIN].
    """
    s, d = src.astype(np.float64), dst.astype(np.float64)
    ms, md = s.mean(axis=0), d.mean(axis=0)
    cs, cd = s - ms, d - md
    gain_l = ((cs[:, 0] * cd[:, 0]).mean() + COLOUR_RIDGE) / ((cs[:, 0] ** 2).mean() + COLOUR_RIDGE)
    gain_c = (((cs[:, 1:] * cd[:, 1:]).sum(axis=1)).mean() + 2 * COLOUR_RIDGE) / (
        ((cs[:, 1:] ** 2).sum(axis=1)).mean() + 2 * COLOUR_RIDGE)
    gain_l, gain_c = np.clip([gain_l, gain_c], 1.0 / MAX_GAIN, MAX_GAIN)
    return np.array([gain_l, md[0] - gain_l * ms[0], gain_c, md[1] - gain_c * ms[1], md[2] - gain_c * ms[2]])


def _palette_misfit(px: np.ndarray, palette: np.ndarray,
                    capture: float) -> tuple[float, np.ndarray, np.ndarray]:
    """(cost, nearest colours [N, 3], pair mask [N]) of points [N, 3] against the palette [P, 3].

    The pairs are the COLOUR_INLIERS closest, less those farther than ``capture`` (CIE76); the cost
    is the mean over the closest COLOUR_INLIERS of the distance capped at ``capture``.
    """
    nearest = _nearest(px, palette)
    dist = np.linalg.norm(px - nearest, axis=1)
    closest = dist <= np.quantile(dist, COLOUR_INLIERS)
    return float(np.minimum(dist[closest], capture).mean()), nearest, closest & (dist <= capture)


def color_transfer(lab: np.ndarray, mask: np.ndarray, ref_lab: np.ndarray, ref_mask: np.ndarray,
                   capture: float = math.inf) -> np.ndarray:
    """Register the colours of ``lab[mask]`` onto the palette of ``ref_lab[ref_mask]`` -> Lab [H, W, 3].

    A global exposure (L gain and offset) and colour (chroma gain, a and b offsets) transform is fitted
    by iterated nearest-colour matching (ICP in Lab): each view colour is paired with the closest
    colour of the photo, the transform is refitted on the closest COLOUR_INLIERS of the pairs that are
    within ``capture`` (CIE76), and so on. It is kept only if it brings the view's colours closer to
    the photo's than leaving them alone, and not at all when fewer than half of the view's colours
    have a photo colour within ``capture``. Unlike matching means and spreads, this does not depend
    on how much of each colour the view and the photo show, so a view that already has the photo's
    colours is left as it is.
    """
    if mask.sum() < 16 or ref_mask.sum() < 16:
        return lab
    px = _sample_rows(lab[mask], MAX_COLOUR_SAMPLES).astype(np.float32)  # [N, 3]
    palette = colour_palette(ref_lab[ref_mask].astype(np.float32))  # [P, 3]
    identity = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    best_cost, nearest, pairs = _palette_misfit(px, palette, capture)
    best = identity
    for _ in range(COLOUR_ITERATIONS):
        if pairs.sum() < 0.5 * len(px):
            break
        params = _fit_colour(px[pairs], nearest[pairs])
        cost, nearest, pairs = _palette_misfit(_apply_colour(px, params).astype(np.float32), palette, capture)
        if cost >= best_cost - 0.01:
            break
        best_cost, best = cost, params
    log.debug("colour transfer", extra={"params": np.round(best, 3).tolist(), "misfit": round(best_cost, 2)})
    return _apply_colour(lab, best).astype(np.float32)


def transfer_to_photo(lab: np.ndarray, mask: np.ndarray, ref_lab: np.ndarray, ref_fg: np.ndarray,
                      reference: np.ndarray) -> np.ndarray:
    """:func:`color_transfer` towards the photo ``reference`` (uint8 [h, w, 3|4]): the colours of the
    object are among the photo's; with the photo's alpha, those of its object (``ref_fg``); without it,
    all of them (a guessed foreground can drop the object's colours that are close to the backdrop's),
    and then, the backdrop being in the palette, only pairs within CAPTURE_DISTANCE are trusted."""
    if reference.shape[2] == 4 and bool(reference[:, :, 3].min() < 255):
        return color_transfer(lab, mask, ref_lab, ref_fg)
    return color_transfer(lab, mask, ref_lab, np.ones_like(ref_fg), capture=CAPTURE_DISTANCE)


def reference_foreground(ref: np.ndarray) -> np.ndarray:
    """bool [h, w] foreground of the photo uint8 [h, w, 3|4]: its alpha when it has one, else, when its
    border is a plain backdrop, the pixels far (Otsu) from the border colour, else the whole photo."""
    h, w = ref.shape[:2]
    if ref.shape[2] == 4 and ref[:, :, 3].min() < 255:
        return ref[:, :, 3] >= 128
    b = max(1, round(0.04 * min(h, w)))
    lab = cv2.cvtColor(np.ascontiguousarray(ref[:, :, :3]), cv2.COLOR_RGB2Lab).astype(np.float32)
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    backdrop = np.median(border, axis=0)
    if np.quantile(np.linalg.norm(border - backdrop, axis=-1), 0.9) > BACKDROP_SPREAD:
        return np.ones((h, w), bool)  # no plain backdrop: "far from the border colour" would pick at random
    dist = np.linalg.norm(lab - backdrop, axis=-1)  # [h, w]
    if dist.max() >= 8.0:
        d8 = np.clip(dist * (255.0 / dist.max()), 0, 255).astype(np.uint8)
        _, fg = cv2.threshold(d8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        if 0.05 <= fg.mean() <= 0.9:
            return fg.astype(bool)
    return np.ones((h, w), bool)


def prepare_reference(ref: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 photo -> (the photo at most the view's longest side, its Lab [h, w, 3], its foreground bool [h, w])."""
    h, w = ref.shape[:2]
    scale = max(shape) / max(h, w)
    if scale < 1.0:  # statistics need no more pixels than the view has
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        ref = cv2.resize(ref, size, interpolation=cv2.INTER_AREA)
    return ref, rgb_to_lab(ref[:, :, :3].astype(np.float32) / 255.0), reference_foreground(ref)
