"""The weight-free ``render`` backend: novel views rendered from the current splat, holes inpainted.

Per camera: render the splat (premultiplied colour and alpha); the object's hull is its solid
pixels (alpha >= ``solid_alpha``) closed with a disc of ``close_fraction`` of the shorter image side
and hole-filled; hull pixels below ``confident_alpha`` get colour inpainted (OpenCV Telea) from the
confidently covered pixels only; the render is laid over that fill inside the hull and over the
background outside. The background is the photo's (:func:`~..matte.photo_background`) unless the
``background`` option is set. Deterministic: the seed does not change the output.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from pydantic import Field, field_validator

from glimpse3d.core.backend import BackendOptions
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.services.multiview.api import GeneratedView, MultiviewBackend, ViewRequest
from glimpse3d.services.multiview.matte import object_hull, photo_background

logger = logging.getLogger(__name__)


class RenderOptions(BackendOptions):
    """Options of the ``render`` backend."""

    solid_alpha: float = Field(default=0.5, ge=0.01, le=1.0)  # pixels at least this opaque belong to the object
    confident_alpha: float = Field(default=0.9, ge=0.01, le=1.0)  # hull pixels below this get inpainted fill
    close_fraction: float = Field(default=0.04, ge=0.0, le=0.5)  # closing disc diameter / shorter image side
    inpaint_radius: int = Field(default=3, ge=1, le=32)  # px, Telea neighbourhood
    background: tuple[float, float, float] | None = None  # None: the input photo's background

    @field_validator("background", mode="before")
    @classmethod
    def _background(cls, value: object) -> object:
        if value is None:
            return None
        if (not isinstance(value, list | tuple) or len(value) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)):
            raise ValueError("background must be 3 numbers in [0, 1]")
        return tuple(float(v) for v in value)


def inpaint_fill(color: np.ndarray, known: np.ndarray, hull: np.ndarray, radius: int) -> np.ndarray:
    """Object colour [H, W, 3] in [0, 1] over ``hull``: ``color`` where ``known``, Telea-inpainted elsewhere.

    Only the hull's bounding box (plus a margin) is processed, and every pixel that is not ``known``
    (background included) is treated as missing, so the fill is drawn from object pixels only.
    """
    out = color.copy()
    rows, cols = np.nonzero(hull)
    if rows.size == 0 or not known.any():
        return out
    m = radius + 1
    r0, r1 = max(rows.min() - m, 0), min(rows.max() + m + 1, hull.shape[0])
    c0, c1 = max(cols.min() - m, 0), min(cols.max() + m + 1, hull.shape[1])
    crop = np.rint(np.clip(color[r0:r1, c0:c1], 0.0, 1.0) * 255.0).astype(np.uint8)  # [h, w, 3]
    missing = (~known[r0:r1, c0:c1]).astype(np.uint8)  # [h, w]
    filled = cv2.inpaint(crop, missing, radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
    region = hull[r0:r1, c0:c1] & ~known[r0:r1, c0:c1]
    out[r0:r1, c0:c1][region] = filled[region]
    return out


def complete_view(
    premult: np.ndarray, alpha: np.ndarray, background: np.ndarray, cfg: RenderOptions
) -> GeneratedView:
    """Fill the holes of one rendered view (premultiplied colour [H, W, 3], alpha [H, W]) and composite."""
    hull = object_hull(alpha, cfg.solid_alpha, cfg.close_fraction)  # [H, W]
    known = alpha >= cfg.confident_alpha
    if not known.any():
        known = alpha >= cfg.solid_alpha
    color = premult / np.maximum(alpha, 1e-6)[..., None]  # [H, W, 3] un-premultiplied
    fill = inpaint_fill(color, known, hull, cfg.inpaint_radius)  # [H, W, 3]
    under = np.where(hull[..., None], fill, background[None, None, :])  # what shows through
    rgb = premult + (1.0 - alpha)[..., None] * under
    mask = np.where(hull, 1.0, alpha).astype(np.float32)
    logger.debug("view: hull %d px, %d px filled", int(hull.sum()), int((hull & ~known).sum()))
    return GeneratedView(np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), mask)


class RenderBackend(MultiviewBackend):
    """The weight-free ``render`` backend (see the module docstring)."""

    name = "render"
    Options = RenderOptions
    options: RenderOptions

    def _generate(self, req: ViewRequest, splat: Splat | None) -> list[GeneratedView]:
        if splat is None:
            raise InvalidInput("the render backend needs the current splat", field="splat")
        if not isinstance(splat, Splat):
            raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
        cfg_bg = self.options.background
        background = np.asarray(cfg_bg, np.float32) if cfg_bg is not None else photo_background(req.image, req.mask)
        views = []
        for cam in req.cameras:
            with torch.no_grad():
                out = rasterize(splat, cam)  # over black: colour premultiplied by alpha
            premult = out.rgb.clamp(min=0.0).numpy().astype(np.float32)  # [H, W, 3]
            alpha = out.alpha.clamp(0.0, 1.0).numpy().astype(np.float32)  # [H, W]
            views.append(complete_view(premult, alpha, background, self.options))
        logger.info("render backend: %d view(s) from %d Gaussians", len(views), splat.num_gaussians)
        return views
