"""The weight-free ``render`` multiview backend: novel views rendered from the current splat.

Per requested camera:

1. render the splat (colour premultiplied by alpha, i.e. over black, and alpha);
2. the object's *hull* in this view: the solid pixels (alpha >= ``solid_alpha``), morphologically
   closed with a disc of ``close_fraction`` of the image's shorter side and with every enclosed
   hole filled;
3. *holes* are hull pixels the splat does not cover confidently (alpha < ``confident_alpha``);
   their object colour is inpainted (OpenCV Telea) from the confidently covered pixels around
   them (un-premultiplied colours), never from the background;
4. composite: inside the hull the render is laid over that inpainted fill, outside it over the
   background colour; the view's mask is 1 inside the hull and the render's alpha outside.

The background is the input photo's (median colour of the pixels outside its matte; white when
there is no matte), unless the backend is built with an explicit ``background``. Everything is
deterministic: the seed is accepted for the shared interface and does not change the output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from glimpse3d.core.backends import config_with_overrides
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.services.multiview.backends import GeneratedView, check_request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderViewsConfig:
    solid_alpha: float = 0.5  # pixels at least this opaque belong to the object
    confident_alpha: float = 0.9  # hull pixels below this are (partly) holes and get inpainted fill
    close_fraction: float = 0.04  # closing disc diameter, fraction of the shorter image side
    inpaint_radius: int = 3  # px, Telea neighbourhood
    background: tuple[float, float, float] | None = None  # None: the input photo's background

    def __post_init__(self) -> None:
        for name, (lo, hi) in {"solid_alpha": (0.01, 1.0), "confident_alpha": (0.01, 1.0),
                               "close_fraction": (0.0, 0.5), "inpaint_radius": (1, 32)}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                raise InvalidInput(f"render option {name} must be in [{lo}, {hi}], got {value!r}", field=name)
        bg = self.background
        if bg is not None and (len(bg) != 3 or not all(isinstance(v, int | float) and 0 <= v <= 1 for v in bg)):
            raise InvalidInput(f"background must be 3 numbers in [0, 1], got {bg!r}", field="background")


def photo_background(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[3] median colour of the photo ([H, W, 3] in [0, 1]) outside its matte [H, W]; white if unknown."""
    if mask is None:
        return np.ones(3, np.float32)
    outside = mask < 0.05
    if int(outside.sum()) < 16:
        return np.ones(3, np.float32)
    return np.median(image[outside], axis=0).astype(np.float32)


def _fill_enclosed(binary: np.ndarray) -> np.ndarray:
    """``binary`` [H, W] uint8 {0, 1} with every region not connected to the border set to 1."""
    h, w = binary.shape
    padded = np.pad(binary, 1)  # a free border ring connects all outside regions
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (padded | (1 - flood))[1:-1, 1:-1]


def object_hull(alpha: np.ndarray, solid_alpha: float, close_fraction: float) -> np.ndarray:
    """bool [H, W]: solid pixels, closed with a small disc, enclosed holes filled."""
    solid = (alpha >= solid_alpha).astype(np.uint8)
    if not solid.any():
        return solid.astype(bool)
    k = max(3, 2 * math.ceil(close_fraction * min(alpha.shape) / 2) + 1)  # odd diameter
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    pad = k  # closing must not be clipped by the image border
    closed = cv2.morphologyEx(np.pad(solid, pad), cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    return _fill_enclosed(closed | solid).astype(bool)


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
    premult: np.ndarray, alpha: np.ndarray, background: np.ndarray, cfg: RenderViewsConfig
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
    holes = int((hull & ~known).sum())
    logger.debug("view: hull %d px, %d px filled", int(hull.sum()), holes)
    return GeneratedView(np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), mask)


class RenderBackend:
    """The weight-free ``render`` backend (see the module docstring)."""

    name = "render"

    def __init__(self, config: RenderViewsConfig | None = None, **overrides: object) -> None:
        self.config = config_with_overrides(RenderViewsConfig, config, overrides, "render")
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Nothing to download; marks the backend ready."""
        self._ready = True

    def generate(
        self,
        image: np.ndarray,
        mask: np.ndarray | None,
        input_camera: Camera,
        splat: Splat | None,
        cameras: Sequence[Camera],
        seed: int = 0,
        steps: int = 0,
    ) -> list[GeneratedView]:
        if not self._ready:
            raise NotReady("the render backend is not loaded yet")
        req = check_request(image, mask, input_camera, cameras, seed, steps)
        if splat is None:
            raise InvalidInput("the render backend needs the current splat", field="splat")
        if not isinstance(splat, Splat):
            raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
        cfg_bg = self.config.background
        background = np.asarray(cfg_bg, np.float32) if cfg_bg is not None else photo_background(req.image, req.mask)
        views = []
        for cam in req.cameras:
            with torch.no_grad():
                out = rasterize(splat, cam)  # over black: colour premultiplied by alpha
            premult = out.rgb.clamp(min=0.0).numpy().astype(np.float32)  # [H, W, 3]
            alpha = out.alpha.clamp(0.0, 1.0).numpy().astype(np.float32)  # [H, W]
            views.append(complete_view(premult, alpha, background, self.config))
        logger.info("render backend: %d view(s) from %d Gaussians", len(views), splat.num_gaussians)
        return views
