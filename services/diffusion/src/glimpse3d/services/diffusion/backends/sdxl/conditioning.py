"""Inputs and outputs of the ``sdxl`` backend: depth control image and working resolution.

:func:`depth_to_control` maps camera-space z to the normalised disparity the SDXL depth ControlNets
were trained on (nearest object point 1, farthest ``FAR_LEVEL``, background 0);
:func:`working_geometry`, :func:`to_working` and :func:`from_working` scale and pad a view to the
latent grid and back; :func:`composite` blends the result over the view by its coverage, so
background pixels come back unchanged. See docs/backends/diffusion.md ("How sdxl works").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FAR_LEVEL = 0.25  # control value of the object's farthest point; the background is 0
NEAR_PERCENTILE = 99.5  # disparity percentiles taken as the nearest / farthest object point
FAR_PERCENTILE = 0.5
MIN_DISPARITY_SPAN = 1e-6  # relative span below which the object counts as flat


def coverage(depth: np.ndarray | None, alpha: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """[H, W] float32 in [0, 1]: where the object is. ``alpha``, else ``depth > 0``, else everywhere."""
    if alpha is not None:
        return np.clip(alpha, 0.0, 1.0).astype(np.float32)
    if depth is not None:
        return (depth > 0).astype(np.float32)
    return np.ones(shape, np.float32)


def depth_to_control(depth: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Camera-space z ``depth`` [H, W] (0 = background) -> control map [H, W] float32 in [0, 1]
    (normalised disparity, near = 1, background = 0; see the module docstring)."""
    assert depth.ndim == 2, f"depth must be [H, W], got {depth.shape}"
    cover = coverage(depth, alpha, depth.shape)
    valid = (depth > 0) & (cover >= 0.5)
    control = np.zeros(depth.shape, np.float32)
    if not valid.any():
        return control
    disparity = np.zeros(depth.shape, np.float64)
    disparity[depth > 0] = 1.0 / depth[depth > 0].astype(np.float64)
    near = float(np.percentile(disparity[valid], NEAR_PERCENTILE))
    far = float(np.percentile(disparity[valid], FAR_PERCENTILE))
    if near - far <= MIN_DISPARITY_SPAN * near:
        level = np.where(depth > 0, 1.0, 0.0)
    else:
        unit = np.clip((disparity - far) / (near - far), 0.0, 1.0)
        level = np.where(depth > 0, FAR_LEVEL + (1.0 - FAR_LEVEL) * unit, 0.0)
    control[:] = level * cover
    return control


def control_rgb(control: np.ndarray) -> np.ndarray:
    """[H, W] -> [H, W, 3] float32: the grey map the depth ControlNets take."""
    return np.repeat(control[:, :, None], 3, axis=2).astype(np.float32)


@dataclass(frozen=True)
class WorkingGeometry:
    """How an ``height x width`` view maps onto the generation canvas."""

    height: int  # the input view
    width: int
    scaled_height: int  # the view scaled so that its longest side is the working resolution
    scaled_width: int
    padded_height: int  # the canvas: scaled size rounded up to the multiple
    padded_width: int


def working_geometry(height: int, width: int, resolution: int, multiple: int) -> WorkingGeometry:
    """Scale the longest side to ``resolution`` (aspect kept), pad each side up to ``multiple``."""
    if min(height, width, resolution, multiple) < 1:
        raise ValueError(f"sizes must be positive: {height}x{width}, resolution {resolution}, multiple {multiple}")
    scale = resolution / max(height, width)
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    return WorkingGeometry(height, width, sh, sw, math.ceil(sh / multiple) * multiple,
                           math.ceil(sw / multiple) * multiple)


def _resize(img: np.ndarray, height: int, width: int, smooth: int) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img.copy()
    shrinking = height * width < img.shape[0] * img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrinking else smooth)


def to_working(img: np.ndarray, geom: WorkingGeometry, *, pad_edge: bool) -> np.ndarray:
    """[H, W, C] view-sized image -> [padded_h, padded_w, C] canvas (edge-replicated or zero padding)."""
    assert img.shape[:2] == (geom.height, geom.width), f"expected {geom.height}x{geom.width}, got {img.shape}"
    scaled = _resize(img, geom.scaled_height, geom.scaled_width, cv2.INTER_CUBIC)
    if scaled.ndim == 2:
        scaled = scaled[:, :, None]
    bottom, right = geom.padded_height - geom.scaled_height, geom.padded_width - geom.scaled_width
    mode = "edge" if pad_edge else "constant"
    return np.pad(scaled, ((0, bottom), (0, right), (0, 0)), mode=mode)


def from_working(img: np.ndarray, geom: WorkingGeometry) -> np.ndarray:
    """[padded_h, padded_w, C] canvas -> [H, W, C] at the exact input size (padding cropped off)."""
    assert img.shape[:2] == (geom.padded_height, geom.padded_width), f"canvas shape {img.shape} != geometry"
    content = np.ascontiguousarray(img[: geom.scaled_height, : geom.scaled_width])
    out = _resize(content, geom.height, geom.width, cv2.INTER_CUBIC)
    return out if out.ndim == 3 else out[:, :, None]


@dataclass(frozen=True, eq=False)
class Canvas:
    """What the pipeline gets for one view, and what it takes to put the result back."""

    geometry: WorkingGeometry
    image: np.ndarray  # [padded_h, padded_w, 3] uint8, the view scaled and edge-padded
    control: np.ndarray  # [padded_h, padded_w, 3] float32 in [0, 1], the depth control map (black without depth)
    cover: np.ndarray  # [H, W] float32 in [0, 1], the view's coverage (for compositing)


def prepare_canvas(view: np.ndarray, depth: np.ndarray | None, alpha: np.ndarray | None, *,
                   resolution: int, multiple: int) -> Canvas:
    """uint8 view [H, W, 3] with its optional depth / alpha [H, W] -> the working canvas."""
    h, w = view.shape[:2]
    geom = working_geometry(h, w, resolution, multiple)
    control = np.zeros((h, w), np.float32) if depth is None else depth_to_control(depth, alpha)
    return Canvas(
        geometry=geom,
        image=to_working(view, geom, pad_edge=True),
        control=to_working(control_rgb(control), geom, pad_edge=False),
        cover=coverage(depth, alpha, (h, w)),
    )


def composite(view: np.ndarray, enhanced: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """uint8 view [H, W, 3], enhanced float [H, W, 3] in [0, 1], coverage [H, W] -> uint8 [H, W, 3]."""
    assert view.shape == enhanced.shape and cover.shape == view.shape[:2], (view.shape, enhanced.shape, cover.shape)
    a = cover[:, :, None].astype(np.float32)
    out = view.astype(np.float32) * (1.0 - a) + np.clip(enhanced, 0.0, 1.0).astype(np.float32) * 255.0 * a
    return np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8)
