"""The weight-free ``classical`` diffusion backend: enhancement of a rendered view without a model.

A rendered view of a young splat is softer than the photo, slightly off in colour and may have
small gaps where the Gaussians do not cover the object. This backend fixes what can be fixed
from the view, its depth and the input photo, deterministically, on the CPU:

1. Hole filling (:func:`fill_holes`): pixels whose alpha is below 0.5 but that lie inside the
   object's silhouette (holes of the ``alpha >= 0.5`` region) are inpainted (``cv2.inpaint``,
   Telea) from their surroundings and then count as object.
2. Colour transfer (:func:`color_transfer`, only with a reference photo): in CIE Lab, the
   view's object pixels get the per-channel mean and standard deviation of the photo's
   foreground (Reinhard et al. 2001; the std ratio is clamped to [0.5, 2] for a and b, to
   [0.8, 1.25] for L so that a flat photo does not wash out the view's texture). The photo's
   foreground is its alpha when it has one, else the pixels far (Otsu) from the border colour,
   else the whole photo.
3. Detail enhancement (:func:`enhance_detail`): the Lab lightness is split into an edge-aware
   base (guided filter, He et al. 2010, self-guided) and a detail layer; the detail is multiplied
   by ``gain``. With a photo, ``gain`` matches the view's detail energy to the photo's, capped by
   ``1 + guidance / 10``; without one it is that cap. The gain is faded out within twice the
   filter radius of depth discontinuities and of the silhouette (:func:`edge_gate`), where
   boosting the detail layer would draw halos across geometry edges.
4. Grain synthesis (:func:`synthesize_grain`): band-passed Gaussian noise from
   ``numpy.random.default_rng(seed)`` adds fine texture (``grain`` Lab lightness units, std) on the
   gated object, so the result depends on the seed, reproducibly.

The enhanced object is composited over the untouched background with the (hole-filled) alpha,
and ``strength`` blends linearly from the view (0, returned bit for bit) to the full result (1).
Without an alpha map the object is where ``depth > 0`` (or the whole view without depth either).
The prompt and ``steps`` are accepted and validated but have no effect on this backend.

Limits: nothing is hallucinated: detail the render lost is only amplified, never invented (the
grain is texture, not structure); the photo guides global colour and detail statistics, not
per-pixel content, since no correspondence between the view and the photo is computed. Outputs
are bit-identical for identical inputs on one build; OpenCV's SIMD paths may differ by a level
between CPU types.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.services.diffusion.backends import EnhanceRequest, validate_request

log = logging.getLogger(__name__)

DEFAULT_GRAIN = 0.5  # std of the synthesised grain, Lab L units (0..100): about 1.2 levels of 255
MAX_GRAIN = 10.0
# Colour transfer clamps std(reference) / std(view) to [1 / r, r]: r = 2 for the chroma channels (a, b),
# 1.25 for lightness, whose spread is mostly shading and texture that the detail stage looks after.
MAX_STD_RATIO = np.array([1.25, 2.0, 2.0])
DEPTH_EDGE_RELATIVE = 0.02  # a 3x3 depth range above 2 % of the depth is a discontinuity
GUIDED_EPS = 4e-3  # guided-filter regulariser on L / 100: edges above ~0.06 stay in the base
MAX_HOLE_FRACTION = 0.3  # larger gaps are not inpainted (the view is too broken to guess)


# --------------------------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------------------------- #


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """float32 RGB [H, W, 3] in [0, 1] -> Lab [H, W, 3] (L in [0, 100])."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab [H, W, 3] -> float32 RGB [H, W, 3] clipped to [0, 1]."""
    return np.clip(cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Grey-guide guided filter (He et al.): [H, W] float32 -> [H, W] float32, support 2 * radius."""
    mean_i, mean_p = box_mean(guide, radius), box_mean(src, radius)
    cov_ip = box_mean(guide * src, radius) - mean_i * mean_p
    var_i = box_mean(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius) * guide + box_mean(b, radius)


def _fill_binary_holes(fg: np.ndarray) -> np.ndarray:
    """bool [H, W] -> bool [H, W] with enclosed background regions filled."""
    h, w = fg.shape
    flood = np.pad(fg.astype(np.uint8) * 255, 1)  # the 1-px ring connects the whole frame
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
    return fg | (flood[1:-1, 1:-1] == 0)


def fill_holes(rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inpaint low-alpha pixels enclosed by the object.

    ``rgb`` float32 [H, W, 3], ``alpha`` [H, W] -> (rgb, alpha) with the holes filled and their
    alpha set to 1. Returned unchanged when there are no holes or they exceed MAX_HOLE_FRACTION.
    """
    solid = alpha >= 0.5
    hull = _fill_binary_holes(solid)
    holes = hull & ~solid
    n_holes, n_hull = int(holes.sum()), int(hull.sum())
    if n_holes == 0:
        return rgb, alpha
    if n_holes > MAX_HOLE_FRACTION * n_hull:
        log.info("holes too large to inpaint", extra={"hole_fraction": round(n_holes / n_hull, 3)})
        return rgb, alpha
    img8 = np.rint(rgb * 255.0).astype(np.uint8)
    filled = cv2.inpaint(img8, holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    out = np.where(holes[:, :, None], filled.astype(np.float32) / 255.0, rgb)
    return out.astype(np.float32), np.where(holes, 1.0, alpha).astype(np.float32)


def _weighted_stats(lab: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std [3] of lab [H, W, 3] over mask [H, W] (bool)."""
    px = lab[mask].astype(np.float64)  # [N, 3]
    return px.mean(axis=0), px.std(axis=0)


def color_transfer(lab: np.ndarray, mask: np.ndarray, ref_lab: np.ndarray, ref_mask: np.ndarray) -> np.ndarray:
    """Match the Lab mean/std of ``lab[mask]`` to those of ``ref_lab[ref_mask]`` -> [H, W, 3]."""
    if mask.sum() < 16 or ref_mask.sum() < 16:
        return lab
    mu_v, sd_v = _weighted_stats(lab, mask)
    mu_r, sd_r = _weighted_stats(ref_lab, ref_mask)
    ratio = np.clip(sd_r / np.maximum(sd_v, 1e-3), 1.0 / MAX_STD_RATIO, MAX_STD_RATIO)  # [3]
    out = (lab - mu_v) * ratio + mu_r
    return out.astype(np.float32)


def reference_foreground(ref: np.ndarray) -> np.ndarray:
    """bool [h, w] foreground of the reference photo uint8 [h, w, 3|4] (see module docstring)."""
    h, w = ref.shape[:2]
    if ref.shape[2] == 4 and ref[:, :, 3].min() < 255:
        return ref[:, :, 3] >= 128
    b = max(1, round(0.04 * min(h, w)))
    lab = cv2.cvtColor(np.ascontiguousarray(ref[:, :, :3]), cv2.COLOR_RGB2Lab).astype(np.float32)
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    dist = np.linalg.norm(lab - np.median(border, axis=0), axis=-1)  # [h, w]
    if dist.max() >= 8.0:
        d8 = np.clip(dist * (255.0 / dist.max()), 0, 255).astype(np.uint8)
        _, fg = cv2.threshold(d8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        if 0.05 <= fg.mean() <= 0.9:
            return fg.astype(bool)
    return np.ones((h, w), bool)


def edge_gate(depth: np.ndarray | None, alpha: np.ndarray, radius: int) -> np.ndarray:
    """[H, W] float32 in [0, 1]: 0 within ``2 * radius + 1`` px of a depth or silhouette edge, else 1."""
    kernel = np.ones((3, 3), np.uint8)
    inside = (alpha >= 0.5).astype(np.float32)
    edges = (cv2.dilate(inside, kernel) - cv2.erode(inside, kernel)) > 0.5
    if depth is not None:
        z = np.where(inside > 0, depth, 0.0).astype(np.float32)
        z_max, z_min = cv2.dilate(z, kernel), cv2.erode(z, kernel)
        edges |= (z_max - z_min) > DEPTH_EDGE_RELATIVE * np.maximum(z_max, 1e-6)
    k = 2 * (2 * radius + 1) + 1
    band = cv2.dilate(edges.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    soft = cv2.GaussianBlur(band.astype(np.float32), (0, 0), max(1.0, radius / 2))
    return np.clip(1.0 - np.maximum(band, soft), 0.0, 1.0).astype(np.float32)


def detail_layer(lightness: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """L [H, W] (0..100) -> (base, detail) in L units, base edge-aware, ``base + detail == L``."""
    g = lightness / 100.0
    base = guided_filter(g, g, radius, GUIDED_EPS) * 100.0
    return base.astype(np.float32), (lightness - base).astype(np.float32)


def enhance_detail(lab: np.ndarray, gate: np.ndarray, gain: float, radius: int) -> np.ndarray:
    """Boost the L detail layer by ``gain`` where ``gate`` is 1 (fading to 1x where it is 0)."""
    base, detail = detail_layer(lab[:, :, 0], radius)
    out = lab.copy()
    out[:, :, 0] = base + (1.0 + (gain - 1.0) * gate) * detail
    return out


def detail_gain(view_l: np.ndarray, view_mask: np.ndarray, *, ref_l: np.ndarray | None,
                ref_mask: np.ndarray | None, radius: int, cap: float) -> float:
    """Detail multiplier: photo-to-view detail std ratio clamped to [1, cap]; ``cap`` without a photo."""
    if ref_l is None or ref_mask is None or view_mask.sum() < 16 or ref_mask.sum() < 16:
        return cap
    view_sd = float(detail_layer(view_l, radius)[1][view_mask].std())
    ref_sd = float(detail_layer(ref_l, radius)[1][ref_mask].std())
    return float(np.clip(ref_sd / max(view_sd, 1e-3), 1.0, cap))


def synthesize_grain(shape: tuple[int, int], seed: int) -> np.ndarray:
    """[H, W] float32 band-passed noise with unit std, a pure function of ``seed`` and ``shape``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    band = cv2.GaussianBlur(noise, (0, 0), 0.6) - cv2.GaussianBlur(noise, (0, 0), 1.8)
    return (band / max(float(band.std()), 1e-6)).astype(np.float32)


def auto_radius(height: int, width: int) -> int:
    """Guided-filter radius for a view: 4 px at 512, at least 2."""
    return max(2, round(min(height, width) / 128))


# --------------------------------------------------------------------------------------------- #
# The pipeline
# --------------------------------------------------------------------------------------------- #


def _prepare_reference(ref: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 photo -> (Lab [h, w, 3], foreground bool [h, w]) at most the view's longest side."""
    h, w = ref.shape[:2]
    scale = max(shape) / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        ref = cv2.resize(ref, size, interpolation=cv2.INTER_AREA)
    fg = reference_foreground(ref)
    return rgb_to_lab(ref[:, :, :3].astype(np.float32) / 255.0), fg


def enhance_view(req: EnhanceRequest, *, grain: float = DEFAULT_GRAIN, radius: int | None = None,
                 colour: bool = True, holes: bool = True) -> np.ndarray:
    """Validated request -> enhanced uint8 [H, W, 3] (pipeline in the module docstring)."""
    view = req.view  # [H, W, 3] uint8
    if req.strength == 0.0:
        return view.copy()
    h, w = view.shape[:2]
    rgb = view.astype(np.float32) / 255.0
    alpha = req.alpha if req.alpha is not None else (
        (req.depth > 0).astype(np.float32) if req.depth is not None else np.ones((h, w), np.float32))
    if holes:
        rgb_in, alpha = fill_holes(rgb, alpha)
    else:
        rgb_in = rgb
    inside = alpha >= 0.5  # [H, W]
    if not inside.any():
        log.info("view has no object pixels; returned unchanged")
        return view.copy()
    r = radius or auto_radius(h, w)
    lab = rgb_to_lab(rgb_in)  # [H, W, 3]
    ref_lab = ref_fg = None
    if req.reference is not None:
        ref_lab, ref_fg = _prepare_reference(req.reference, (h, w))
        if colour:
            lab = color_transfer(lab, inside, ref_lab, ref_fg)
    gate = edge_gate(req.depth, alpha, r)  # [H, W]
    cap = 1.0 + req.guidance / 10.0
    ref_l = None if ref_lab is None else ref_lab[:, :, 0]
    gain = detail_gain(lab[:, :, 0], inside, ref_l=ref_l, ref_mask=ref_fg, radius=r, cap=cap)
    lab = enhance_detail(lab, gate, gain, r)
    if grain > 0:
        lab[:, :, 0] += grain * gate * inside * synthesize_grain((h, w), req.seed)
    enhanced = lab_to_rgb(lab)  # [H, W, 3]
    a = np.clip(alpha, 0.0, 1.0)[:, :, None]
    out = rgb * (1.0 - a) + enhanced * a
    out = (1.0 - req.strength) * rgb + req.strength * out
    log.debug("view enhanced", extra={"gain": round(gain, 3), "radius": r, "seed": req.seed})
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


class ClassicalDiffusionBackend:
    """Weight-free enhancement: hole filling, colour and detail transfer, seeded grain. CPU only."""

    name = "classical"

    def __init__(self, *, grain: float = DEFAULT_GRAIN, radius: int | None = None,
                 colour_transfer: bool = True, hole_filling: bool = True) -> None:
        if not math.isfinite(grain) or not 0.0 <= grain <= MAX_GRAIN:
            raise InvalidInput(f"grain must be in [0, {MAX_GRAIN}], got {grain}", field="grain")
        if radius is not None and (int(radius) != radius or not 1 <= radius <= 64):
            raise InvalidInput(f"radius must be an integer in 1..64, got {radius}", field="radius")
        self._grain = float(grain)
        self._radius = None if radius is None else int(radius)
        self._colour = bool(colour_transfer)
        self._holes = bool(hole_filling)
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Nothing to download; marks the backend ready."""
        self._ready = True
        log.info("classical diffusion backend ready", extra={"opencv": cv2.__version__})

    def enhance(
        self,
        view: np.ndarray,
        *,
        depth: np.ndarray | None,
        alpha: np.ndarray | None = None,
        reference: np.ndarray | None = None,
        prompt: str = "",
        strength: float,
        steps: int,
        guidance: float,
        seed: int,
    ) -> np.ndarray:
        if not self._ready:
            raise NotReady("the classical diffusion backend is not loaded yet", field="backend")
        req = validate_request(view, depth=depth, alpha=alpha, reference=reference, prompt=prompt,
                               strength=strength, steps=steps, guidance=guidance, seed=seed)
        return enhance_view(req, grain=self._grain, radius=self._radius, colour=self._colour, holes=self._holes)
