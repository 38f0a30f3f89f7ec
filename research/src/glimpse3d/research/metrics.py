"""Evaluation metrics of the research harness, each with known-answer tests (tests/unit/test_research_metrics.py).

Images are float [H, W, 3] in [0, 1]; masks float [H, W] in [0, 1] (pixels with mask > 0.5 count
"inside the mask"); depths camera z with 0 = no surface. Point sets are [N, 3] in the unit box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy.spatial import cKDTree  # pyright: ignore[reportAttributeAccessIssue]  # compiled, no stub
from skimage.metrics import structural_similarity

from glimpse3d.core.cameras import Camera
from glimpse3d.core.reproject import psnr_db, warp_into

FSCORE_THRESHOLD = 0.1  # SF3D/SPAR3D report F-score@0.1 in the unit-box frame
DELTA_THRESHOLD = 1.25


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over the whole image, or inside ``mask`` (> 0.5); ``inf`` for identical images."""
    return psnr_db(pred, target, None if mask is None else (np.asarray(mask) > 0.5))


def ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM (scikit-image defaults: 7x7 uniform window, data range 1) averaged over the image or inside ``mask``."""
    # full=True: (mean, per-pixel map); the return type is annotated as every flag combination's
    _, full = cast(tuple[float, np.ndarray], structural_similarity(
        np.asarray(pred, np.float64), np.asarray(target, np.float64), channel_axis=2, data_range=1.0, full=True))
    per_pixel = full.mean(axis=2)
    if mask is None:
        return float(per_pixel.mean())
    inside = np.asarray(mask) > 0.5
    return float(per_pixel[inside].mean()) if inside.any() else float("nan")


@dataclass(frozen=True)
class ShapeScore:
    chamfer: float  # (mean_a min_b |a - b| + mean_b min_a |a - b|) / 2, Euclidean, unit-box units
    fscore: float  # harmonic mean of precision and recall at the threshold
    precision: float  # predicted points within the threshold of the ground truth
    recall: float  # ground-truth points within the threshold of the prediction


def chamfer_fscore(pred: np.ndarray, gt: np.ndarray, threshold: float = FSCORE_THRESHOLD) -> ShapeScore:
    """Chamfer distance and F-score between two point sets (the definitions SF3D and SPAR3D report)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 2 or pred.shape[1] != 3 or gt.ndim != 2 or gt.shape[1] != 3 or not len(pred) or not len(gt):
        raise ValueError(f"point sets must be non-empty [N, 3], got {list(pred.shape)} and {list(gt.shape)}")
    d_pred, _ = cKDTree(gt).query(pred)  # prediction -> ground truth (accuracy)
    d_gt, _ = cKDTree(pred).query(gt)  # ground truth -> prediction (completeness)
    precision = float((d_pred < threshold).mean())
    recall = float((d_gt < threshold).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return ShapeScore(float(0.5 * (d_pred.mean() + d_gt.mean())), f, precision, recall)


def align_scale_shift(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(s, b) minimising sum over ``mask`` of (s pred + b - target)^2 (least squares)."""
    sel = np.asarray(mask, bool)
    x, y = np.asarray(pred, np.float64)[sel], np.asarray(target, np.float64)[sel]
    a = np.stack([x, np.ones_like(x)], axis=1)
    (s, b), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(s), float(b)


@dataclass(frozen=True)
class DepthScore:
    absrel: float  # mean |d - d*| / d* after alignment
    delta1: float  # fraction with max(d / d*, d* / d) < 1.25
    scale: float
    shift: float


def depth_errors(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> DepthScore:
    """AbsRel and delta < 1.25 of ``pred`` after scale-and-shift alignment to ``target`` on ``mask``
    (pixels where the mask is set and both depths are positive)."""
    sel = np.asarray(mask, bool) & (np.asarray(pred) > 0) & (np.asarray(target) > 0)
    if sel.sum() < 2:
        return DepthScore(float("nan"), float("nan"), float("nan"), float("nan"))
    s, b = align_scale_shift(pred, target, sel)
    aligned = np.maximum(s * pred[sel] + b, 1e-9)
    gt = target[sel].astype(np.float64)
    ratio = np.maximum(aligned / gt, gt / aligned)
    return DepthScore(float(np.mean(np.abs(aligned - gt) / gt)), float(np.mean(ratio < DELTA_THRESHOLD)), s, b)


def depth_spread(points: np.ndarray, cameras: Sequence[Camera], gt_depths: Sequence[np.ndarray],
                 pred_depths: Sequence[np.ndarray], tolerance: float = 0.01) -> float:
    """Depth variance across views: for each surface point seen by two or more views, the RMS distance
    of the points each view's depth puts on its ray (after that view's scale-and-shift alignment to
    the ground truth) from their mean; averaged over points, in unit-box units. 0 for ground truth."""
    per_view = []
    for cam, gt, pred in zip(cameras, gt_depths, pred_depths, strict=True):
        uv, z = cam.project(points)
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (z > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        col, row = np.clip(col, 0, cam.width - 1), np.clip(row, 0, cam.height - 1)
        seen = inside & (gt[row, col] > 0) & (np.abs(gt[row, col] - z) <= tolerance * z)
        ok = (gt > 0) & (pred > 0)
        s, b = align_scale_shift(pred, gt, ok) if ok.sum() >= 2 else (1.0, 0.0)
        d = s * pred[row, col] + b
        seen &= pred[row, col] > 0
        world = cam.unproject(np.stack([col + 0.5, row + 0.5], 1), d)
        per_view.append(np.where(seen[:, None], world, np.nan))
    stack = np.stack(per_view)  # [V, N, 3]
    count = np.isfinite(stack[..., 0]).sum(axis=0)  # [N]
    multi = count >= 2
    if not multi.any():
        return float("nan")
    centre = np.nanmean(stack[:, multi], axis=0)  # [M, 3]
    sq = np.nansum(np.square(stack[:, multi] - centre), axis=2)  # [V, M]
    return float(np.mean(np.sqrt(np.nansum(sq, axis=0) / count[multi])))


def inconsistency(images: Sequence[np.ndarray], cameras: Sequence[Camera], depths: Sequence[np.ndarray],
                  masks: Sequence[np.ndarray]) -> float:
    """Multi-view inconsistency of a set of views: the mean absolute colour error (in [0, 1]) after
    warping every view into every other with the ground-truth geometry (``depths``), over pixels that
    are fully inside both masks and visible in both views. About 0 for ground-truth views."""
    total, count = 0.0, 0
    for i, (img_i, cam_i, d_i, m_i) in enumerate(zip(images, cameras, depths, masks, strict=True)):
        interior = np.asarray(m_i) > 0.999
        for j, (img_j, cam_j, d_j, m_j) in enumerate(zip(images, cameras, depths, masks, strict=True)):
            if i == j:
                continue
            rgba_j = np.concatenate([np.asarray(img_j, np.float32), np.asarray(m_j, np.float32)[..., None]], axis=2)
            warped, valid = warp_into(cam_i, np.where(interior, d_i, 0.0), cam_j, rgba_j, d_j)
            sel = valid & (warped[..., 3] > 0.999)
            if sel.any():
                total += float(np.abs(warped[..., :3][sel] - np.asarray(img_i, np.float32)[sel]).sum() / 3.0)
                count += int(sel.sum())
    return total / count if count else float("nan")


def depth_points(camera: Camera, depth: np.ndarray, alpha: np.ndarray | None = None,
                 threshold: float = 0.5) -> np.ndarray:
    """World points [M, 3] of a depth map's pixels (alpha above ``threshold`` when given)."""
    sel = depth > 0 if alpha is None else (depth > 0) & (alpha > threshold)
    rows, cols = np.nonzero(sel)
    return camera.unproject(np.stack([cols + 0.5, rows + 0.5], 1), depth[rows, cols])
