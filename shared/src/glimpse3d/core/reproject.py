"""Warping an image from one camera into another through a depth map (numpy only).

Used where a figure must compare views of the same surface: the research harness's multi-view
inconsistency, and the gateway's photo-consistency figure (other views of the splat against the
photo). A destination pixel with depth is lifted to the world, projected into the source camera and
sampled there bilinearly; it is valid when it lands inside the source image and, when the source
depth is given, is the surface the source camera sees (not hidden behind something nearer).
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core.cameras import Camera

DEFAULT_OCCLUSION_TOLERANCE = 0.02  # relative depth difference still counted as the same surface


def bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``image`` [H, W, C] at pixel coordinates (u, v) [M] (pixel centres at +0.5), edges clamped."""
    h, w = image.shape[:2]
    x = np.clip(u - 0.5, 0.0, w - 1.0)
    y = np.clip(v - 0.5, 0.0, h - 1.0)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def warp_into(
    dst_camera: Camera,
    dst_depth: np.ndarray,
    src_camera: Camera,
    src_image: np.ndarray,
    src_depth: np.ndarray | None = None,
    tolerance: float = DEFAULT_OCCLUSION_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """``src_image`` [h, w, C] seen from ``dst_camera``: (warped [H, W, C] float32, valid [H, W] bool).

    ``dst_depth`` [H, W] is camera z in the destination (<= 0: no surface). ``src_depth`` [h, w],
    when given, rejects destination pixels whose surface is hidden in the source view (its depth
    there differs from the projected depth by more than ``tolerance`` relative).
    """
    assert dst_depth.shape == (dst_camera.height, dst_camera.width), "dst_depth must be [H, W] of dst_camera"
    assert src_image.shape[:2] == (src_camera.height, src_camera.width), "src_image must be [h, w, C] of src_camera"
    img = src_image if src_image.ndim == 3 else src_image[..., None]
    rows, cols = np.nonzero(dst_depth > 0)
    out = np.zeros((dst_camera.height, dst_camera.width, img.shape[2]), np.float32)
    valid = np.zeros((dst_camera.height, dst_camera.width), bool)
    if rows.size == 0:
        return (out if src_image.ndim == 3 else out[..., 0]), valid
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    world = dst_camera.unproject(uv, dst_depth[rows, cols])
    suv, sz = src_camera.project(world)
    ok = (sz > 1e-9) & np.isfinite(suv).all(axis=1)
    ok &= (suv[:, 0] >= 0) & (suv[:, 0] < src_camera.width) & (suv[:, 1] >= 0) & (suv[:, 1] < src_camera.height)
    suv = np.where(ok[:, None], suv, 0.5)
    if src_depth is not None:
        assert src_depth.shape == src_image.shape[:2], "src_depth must be [h, w] like src_image"
        seen = src_depth[np.floor(suv[:, 1]).astype(int), np.floor(suv[:, 0]).astype(int)]
        ok &= (seen > 0) & (np.abs(seen - sz) <= tolerance * np.maximum(sz, 1e-9))
    out[rows[ok], cols[ok]] = bilinear(img.astype(np.float32), suv[ok, 0], suv[ok, 1])
    valid[rows[ok], cols[ok]] = True
    return (out if src_image.ndim == 3 else out[..., 0]), valid


def psnr_db(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    """PSNR in dB of images in [0, 1] (``inf`` when identical), over the pixels ``weight`` [H, W] selects."""
    diff = np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if diff.ndim == 3:
        diff = diff.mean(axis=2)
    if weight is None:
        mse = float(diff.mean())
    else:
        w = np.asarray(weight, np.float64)
        if float(w.sum()) <= 0:
            return float("nan")
        mse = float((diff * w).sum() / w.sum())
    return float("inf") if mse <= 0 else float(10.0 * np.log10(1.0 / mse))
