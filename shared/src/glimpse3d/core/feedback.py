"""Figures of a version that a round cannot improve by construction: the splat against the photo.

A round's own report compares the splat with the view it was just fed; these compare it with the
photo, which no round is fed: ``photo_psnr_db``, ``photo_consistency_db`` and
``photo_consistency_coverage`` (views turned by ``TURNS_DEG``, warped onto the photo), and
``input_view_psnr_db`` / ``input_view_ssim`` inside the photo's matte (:func:`input_view_figures`).
:func:`round_rejection` decides whether a round cost the photo more than ``MAX_ROUND_LOSS_DB`` (fused
again with the photo weighted ``PHOTO_RETRY_WEIGHT``, then rejected). Definitions:
docs/research.md ("Figures a round cannot improve by construction"); the rule: docs/http-api.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glimpse3d.core.cameras import Camera, turned_about_up
from glimpse3d.core.reproject import psnr_db, warp_into

TURNS_DEG = (-60.0, -30.0, 30.0, 60.0)
MAX_ROUND_LOSS_DB = 0.5  # input-view PSNR a round may cost before it is rejected
PHOTO_RETRY_WEIGHT = 4.0  # the photo's weight when a round that cost too much is fused again
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
OBJECT_ALPHA = 0.5  # rendered alpha above which a photo-view pixel is on the object
MIN_BACKGROUND_PIXELS = 16


def feedback_cameras(photo_camera: Camera) -> list[Camera]:
    """The cameras to render for :func:`photo_figures`: the photo's own, then the turned ones."""
    return [photo_camera, *(turned_about_up(photo_camera, t) for t in TURNS_DEG)]


def background_colour(photo: np.ndarray, mask: np.ndarray | None) -> tuple[float, float, float]:
    """The photo's background: the median colour outside the matte (white without a usable matte)."""
    img = _unit(photo)
    if mask is None or mask.shape != img.shape[:2]:
        return (1.0, 1.0, 1.0)
    outside = np.asarray(mask) < 0.5
    if int(outside.sum()) < MIN_BACKGROUND_PIXELS:
        return (1.0, 1.0, 1.0)
    return tuple(float(c) for c in np.median(img[outside], axis=0))  # type: ignore[return-value]


def photo_figures(
    photo: np.ndarray,
    cameras: Sequence[Camera],
    renders: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """The figures above from renders ``(rgb [H, W, 3], depth [H, W], alpha [H, W])`` at
    :func:`feedback_cameras` (the photo's camera first), rendered over :func:`background_colour`.
    The photo must have the photo camera's size."""
    if len(cameras) != len(renders) or not cameras:
        raise ValueError(f"one render per camera is needed, got {len(renders)} for {len(cameras)} cameras")
    target = _unit(photo)
    cam0 = cameras[0]
    rgb0, depth0, alpha0 = (np.asarray(a, np.float32) for a in renders[0])
    if target.shape != rgb0.shape:
        raise ValueError(f"photo {list(target.shape)} and photo-view render {list(rgb0.shape)} differ in size")
    on_object = (alpha0 > OBJECT_ALPHA) & (depth0 > 0)
    dst_depth = np.where(on_object, depth0, 0.0).astype(np.float32)
    sq, count, covered = 0.0, 0, np.zeros(on_object.shape, bool)
    for cam, (rgb, depth, alpha) in zip(cameras[1:], renders[1:], strict=True):
        rgba = np.concatenate([np.asarray(rgb, np.float32), np.asarray(alpha, np.float32)[..., None]], axis=2)
        warped, valid = warp_into(cam0, dst_depth, cam, rgba, np.asarray(depth, np.float32))
        sel = valid & (warped[..., 3] > OBJECT_ALPHA)
        sq += float(np.square(warped[..., :3][sel] - target[sel]).sum())
        count += int(sel.sum()) * 3
        covered |= sel
    mse = sq / count if count else float("nan")
    consistency = float("nan") if not count else (float("inf") if mse == 0 else float(-10.0 * np.log10(mse)))
    return {
        "photo_psnr_db": psnr_db(rgb0, target),
        "photo_consistency_db": consistency,
        "photo_consistency_coverage": float(covered.sum() / max(1, int(on_object.sum()))),
    }


def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """[H, W] mean over a ``size`` x ``size`` window, the border mirrored (scipy's "reflect" mode)."""
    r = size // 2
    padded = np.pad(x, r, mode="symmetric")
    c = np.pad(np.cumsum(np.cumsum(padded, axis=0), axis=1), ((1, 0), (1, 0)))
    h, w = x.shape
    total = c[size:size + h, size:size + w] - c[:h, size:size + w] - c[size:size + h, :w] + c[:h, :w]
    return total / float(size * size)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H, W] SSIM of two images in [0, 1] ([H, W] or [H, W, C]; channels averaged), scikit-image's
    ``structural_similarity`` defaults with data range 1 (its ``full=True`` map)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of one shape, got {list(x.shape)} and {list(y.shape)}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1.0)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    maps = []
    for ch in range(x.shape[2]):
        xa, ya = x[..., ch], y[..., ch]
        ux, uy = _box_mean(xa, SSIM_WINDOW), _box_mean(ya, SSIM_WINDOW)
        vx = cov_norm * (_box_mean(xa * xa, SSIM_WINDOW) - ux * ux)
        vy = cov_norm * (_box_mean(ya * ya, SSIM_WINDOW) - uy * uy)
        vxy = cov_norm * (_box_mean(xa * ya, SSIM_WINDOW) - ux * uy)
        maps.append(((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2)))
    return np.mean(maps, axis=0)


def input_view_figures(photo: np.ndarray, mask: np.ndarray, rendered: np.ndarray) -> dict[str, float]:
    """``input_view_psnr_db`` and ``input_view_ssim`` of ``rendered`` [H, W, 3] (at the photo's camera)
    against ``photo`` inside the object region ``mask >= 0.5``, plus ``matte_coverage`` (its share of
    the frame). NaN figures when the matte is empty."""
    target, render = _unit(photo), _unit(rendered)
    if render.shape != target.shape or np.shape(mask) != target.shape[:2]:
        raise ValueError(f"photo {list(target.shape)}, render {list(render.shape)} and matte "
                         f"{list(np.shape(mask))} must have one size")
    inside = np.asarray(mask) >= 0.5
    if not inside.any():
        return {"input_view_psnr_db": float("nan"), "input_view_ssim": float("nan"), "matte_coverage": 0.0}
    return {
        "input_view_psnr_db": psnr_db(render, target, inside),
        "input_view_ssim": float(ssim_map(render, target)[inside].mean()),
        "matte_coverage": float(inside.mean()),
    }


def round_rejection(before_db: float, after_db: float, first_db: float = float("nan"),
                    limit_db: float = MAX_ROUND_LOSS_DB) -> str | None:
    """Why a round that took the input-view PSNR from ``before_db`` to ``after_db`` is rejected, or
    None when it may stand: it may cost at most ``limit_db``, and all rounds together at most
    ``limit_db`` below ``first_db`` (version 1's figure), so small losses cannot add up. A figure that
    is not finite never rejects."""
    if not (np.isfinite(before_db) and np.isfinite(after_db)):
        return None
    if before_db - after_db > limit_db:
        return (f"the round would lower the input-view PSNR against the photo from {before_db:.2f} to "
                f"{after_db:.2f} dB ({after_db - before_db:+.2f} dB; at most -{limit_db:g} dB is allowed), "
                "so it was rejected and the model is unchanged")
    if np.isfinite(first_db) and first_db - after_db > limit_db:
        return (f"the round would take the input-view PSNR against the photo to {after_db:.2f} dB, "
                f"{first_db - after_db:.2f} dB below version 1's {first_db:.2f} dB (all rounds together may "
                f"cost at most {limit_db:g} dB), so it was rejected and the model is unchanged")
    return None


def _unit(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"an RGB image [H, W, 3] is needed, got {list(img.shape)}")
    img = img[..., :3]
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


__all__ = ["MAX_ROUND_LOSS_DB", "PHOTO_RETRY_WEIGHT", "TURNS_DEG", "background_colour", "feedback_cameras",
           "input_view_figures", "photo_figures", "round_rejection", "ssim_map"]
