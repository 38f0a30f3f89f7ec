"""Figures of a version that a round cannot improve by construction: the splat against the photo.

A round's own report (``photometric_error_before/after``) compares the splat with the view it was
just fed, so it falls whatever that view was. The one ground truth a user has is the photo, and a
round is never fed the photo, so these figures can move either way:

- ``photo_psnr_db``: the splat rendered at the photo's camera over the photo's background colour,
  against the photo, over the full frame (PSNR in dB). A round that darkens or smears the surface
  the photo shows, or grows floaters in front of it, lowers it.
- ``photo_consistency_db``: the splat rendered from cameras turned by ``TURNS_DEG`` about the
  vertical axis, each warped into the photo's camera through the rendered depths
  (:func:`glimpse3d.core.reproject.warp_into`), against the photo where the surface is visible in
  both (PSNR in dB). It checks the colours the splat shows from other directions, where rounds
  actually write, against the photo on the part of the surface that both see.
- ``photo_consistency_coverage``: the fraction of the photo's rendered object pixels that the
  turned views cover (how much of the photo the consistency figure rests on).

The research harness reports how well the change of these figures tracks the change of the
held-out ground-truth PSNR (docs/research.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glimpse3d.core.cameras import Camera, turned_about_up
from glimpse3d.core.reproject import psnr_db, warp_into

TURNS_DEG = (-60.0, -30.0, 30.0, 60.0)
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


def _unit(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"an RGB image [H, W, 3] is needed, got {list(img.shape)}")
    img = img[..., :3]
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


__all__ = ["TURNS_DEG", "background_colour", "feedback_cameras", "photo_figures"]
