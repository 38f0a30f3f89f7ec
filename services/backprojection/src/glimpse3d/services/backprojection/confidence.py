"""Per-pixel trust for MVCRM: depth consistency between the enhanced view and the current splat.

The view's depth is known only up to scale and shift, so :func:`align_depth` fits
``scale * view_depth + shift`` to the rendered depth robustly; a pixel's trust is then
``rendered_alpha * geo`` with ``geo = 2 ** -((r / depth_tolerance) ** 2)`` for the relative depth
residual ``r`` (``geo = 1`` without a view depth). Colour disagreement is deliberately not a trust
signal. See docs/backends/mvcrm.md ("Per-pixel trust").
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

OBJECT_ALPHA = 0.5  # rendered alpha above which a pixel is on the object
ACCEPT_TRUST = 0.5  # geometric trust above which an object pixel counts as accepted
MIN_FIT_PIXELS = 16  # fewer overlapping pixels than this: the alignment is not attempted
_IRLS_ITERATIONS = 3  # Cauchy reweighting passes after the robust start
_LMEDS_PAIRS = 256  # candidate lines for the least-median-of-squares start
_LMEDS_PROBE = 2048  # pixels on which each candidate's median residual is measured
_FLAT_SPREAD = 1e-4  # relative std of the view depth below which only a scale is fitted
_CAUCHY_C = 2.385  # Cauchy constant (95% efficiency), in units of the robust residual scale
_MIN_SIGMA = 1e-3  # floor on the robust relative residual scale


class DepthAlignment(NamedTuple):
    scale: float
    shift: float
    pixels: int  # object pixels used by the fit
    ok: bool  # False when too few pixels overlap or the fitted scale is not positive


class Trust(NamedTuple):
    weight: np.ndarray  # [H, W] float32 in [0, 1]: rendered alpha x geometric trust
    geometric: np.ndarray  # [H, W] float32 in [0, 1]
    object_mask: np.ndarray  # [H, W] bool, rendered alpha > 0.5
    accepted_fraction: float  # object pixels with geometric trust > 0.5, over object pixels
    alignment: DepthAlignment | None  # None when no view depth was given


def _weighted_fit(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """argmin_{s, b} sum w (s src + b - dst)^2 (minimum-norm solution when src is constant)."""
    sw = np.sqrt(w)
    a = np.stack([src * sw, sw], axis=1)  # [M, 2]
    sol, *_ = np.linalg.lstsq(a, dst * sw, rcond=None)
    return float(sol[0]), float(sol[1])


def _lmeds_start(src: np.ndarray, dst: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    """Least-median-of-squares start: the line through one of ``_LMEDS_PAIRS`` random pixel pairs
    with the smallest median relative residual (tolerates up to half the pixels being outliers)."""
    m = src.shape[0]
    i, j = rng.integers(0, m, size=(2, _LMEDS_PAIRS))  # [P] each
    spread = np.abs(src[i] - src[j])
    keep = spread > 1e-6 * max(float(np.abs(src).max()), 1e-12)
    if not keep.any():
        return None  # constant view depth: no pair defines a slope
    i, j = i[keep], j[keep]
    scale = (dst[i] - dst[j]) / (src[i] - src[j])  # [P']
    shift = dst[i] - scale * src[i]
    probe = rng.choice(m, size=min(m, _LMEDS_PROBE), replace=False)  # residuals on a subsample
    rel = (scale[:, None] * src[probe] + shift[:, None] - dst[probe]) / dst[probe]  # [P', S]
    score = np.median(np.abs(rel), axis=1)
    score[scale <= 0] = np.inf
    best = int(np.argmin(score))
    return (float(scale[best]), float(shift[best])) if np.isfinite(score[best]) else None


def _median_rel(src: np.ndarray, dst: np.ndarray, fit: tuple[float, float]) -> float:
    return float(np.median(np.abs((fit[0] * src + fit[1] - dst) / dst)))


def align_depth(
    view_depth: np.ndarray, rendered_depth: np.ndarray, mask: np.ndarray, seed: int = 0
) -> DepthAlignment:
    """Robust least-squares scale and shift mapping ``view_depth`` onto ``rendered_depth`` on ``mask``.

    (Only a scale when the view depth is constant to 1e-4: then no shift can be told from a scale.)

    Starts from the better (smaller median relative residual) of a plain least-squares fit and a
    least-median-of-squares fit over random pixel pairs, then minimises the squared *relative*
    residual (each pixel weighted by 1 / rendered_depth^2) with Cauchy reweighting on the residual
    scale (1.4826 x median absolute residual), ``_IRLS_ITERATIONS`` times.
    """
    assert view_depth.shape == rendered_depth.shape == mask.shape, "depth maps and mask must share [H, W]"
    src = view_depth[mask].astype(np.float64)  # [M]
    dst = rendered_depth[mask].astype(np.float64)  # [M]
    if src.shape[0] < MIN_FIT_PIXELS:
        return DepthAlignment(1.0, 0.0, int(src.shape[0]), False)
    base = 1.0 / np.square(dst)  # [M] relative-residual weights
    if float(src.std()) <= _FLAT_SPREAD * float(np.abs(src).mean()):
        # A (near) constant view depth (a plane seen face-on) cannot fix a slope: scale only.
        scale = float((base * src * dst).sum() / max(float((base * src * src).sum()), 1e-30))
        return DepthAlignment(scale, 0.0, int(src.shape[0]), math.isfinite(scale) and scale > 0)
    fit = _weighted_fit(src, dst, base)
    start = _lmeds_start(src, dst, np.random.default_rng(seed))
    if start is not None and _median_rel(src, dst, start) < _median_rel(src, dst, fit):
        fit = start
    for _ in range(_IRLS_ITERATIONS):
        rel = (fit[0] * src + fit[1] - dst) / dst  # [M]
        sigma = max(1.4826 * float(np.median(np.abs(rel))), _MIN_SIGMA)
        fit = _weighted_fit(src, dst, base / (1.0 + np.square(rel / (_CAUCHY_C * sigma))))
    scale, shift = fit
    ok = math.isfinite(scale) and math.isfinite(shift) and scale > 0
    return DepthAlignment(scale, shift, int(src.shape[0]), ok)


def geometric_trust(
    view_depth: np.ndarray, rendered_depth: np.ndarray, rendered_alpha: np.ndarray, tolerance: float, seed: int = 0
) -> tuple[np.ndarray, DepthAlignment]:
    """[H, W] trust in [0, 1] from the aligned depth residual (see the module docstring)."""
    has_view = view_depth > 0
    has_render = (rendered_depth > 0) & (rendered_alpha > 1e-3)
    fit_mask = has_view & has_render & (rendered_alpha > OBJECT_ALPHA)
    alignment = align_depth(view_depth, rendered_depth, fit_mask, seed)
    if not alignment.ok:
        logger.warning(
            "depth alignment failed (%d overlapping pixels, scale %.4g): no pixel is trusted",
            alignment.pixels, alignment.scale,
        )
        return np.zeros(view_depth.shape, np.float32), alignment
    both = has_view & has_render
    aligned = alignment.scale * view_depth.astype(np.float64) + alignment.shift  # [H, W]
    rel = np.abs(aligned - rendered_depth) / np.where(both, rendered_depth, 1.0)  # [H, W]
    geo = np.where(both, np.exp2(-np.square(rel / tolerance)), 0.0)
    return geo.astype(np.float32), alignment


def pixel_trust(
    rendered_depth: np.ndarray,
    rendered_alpha: np.ndarray,
    view_depth: np.ndarray | None,
    tolerance: float,
    seed: int = 0,
) -> Trust:
    """Per-pixel fusion weights and the accepted fraction for one view (see the module docstring)."""
    assert rendered_depth.shape == rendered_alpha.shape, "rendered depth and alpha must share [H, W]"
    alpha = np.clip(rendered_alpha, 0.0, 1.0).astype(np.float32)  # [H, W]
    obj = alpha > OBJECT_ALPHA
    if view_depth is None:
        geo, alignment = np.ones_like(alpha), None
    else:
        assert view_depth.shape == alpha.shape, "view depth must match the render's [H, W]"
        geo, alignment = geometric_trust(view_depth, rendered_depth, alpha, tolerance, seed)
    n_obj = int(obj.sum())
    accepted = float((geo[obj] > ACCEPT_TRUST).sum() / n_obj) if n_obj else 0.0
    return Trust((alpha * geo).astype(np.float32), geo, obj, accepted, alignment)


def weighted_mae(rendered: np.ndarray, view: np.ndarray, weight: np.ndarray) -> float:
    """Weight-averaged mean absolute colour error in [0, 1] (0 when no pixel has weight)."""
    assert rendered.shape == view.shape and rendered.shape[:2] == weight.shape, "images and weights must match"
    err = np.abs(rendered.astype(np.float64) - view).mean(axis=-1)  # [H, W]
    total = float(weight.sum())
    return float((weight * err).sum() / total) if total > 0 else 0.0
