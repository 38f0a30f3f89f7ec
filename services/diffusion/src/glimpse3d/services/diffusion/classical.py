"""The weight-free ``classical`` diffusion backend: enhancement of a rendered view without a model.

A rendered view of a young splat is softer than the photo, slightly off in colour and may have
small gaps where the Gaussians do not cover the object. This backend fixes what can be fixed
from the view, its depth and the input photo, deterministically, on the CPU:

1. Hole filling (:func:`fill_holes`): pixels whose alpha is below 0.5 but that lie inside the
   object's silhouette (holes of the ``alpha >= 0.5`` region) are inpainted (``cv2.inpaint``,
   Telea) from their surroundings and then count as object.
2. Colour transfer (:func:`color_transfer`, only with a reference photo): the view's object colours
   are registered onto the photo's palette in CIE Lab. One global transform, an exposure part (L gain
   and offset) and a colour part (one chroma gain for a and b, a and b offsets), is fitted by
   iterated nearest-colour matching: each view colour is paired with the closest colour the photo
   holds, the transform is refitted by least squares on the closest 80 % of the pairs, and so on
   while that brings the view's colours closer to the photo's. Gains stay in [1/1.5, 1.5]; a view
   with the photo's colours is a fixed point, whatever share of each colour it shows. The palette is
   the photo's foreground when the photo has an alpha channel; without one it is the whole photo
   (object colours are among the photo's, and a guessed foreground drops the object's colours that
   are close to the backdrop's), and then only pairs closer than CAPTURE_DISTANCE (25, CIE76) count,
   so a render whose colours are far from all of the photo's is left alone rather than pulled to the
   backdrop. The photo's foreground (also used by the detail stage) is its alpha when it has one,
   else, when its border is a plain backdrop, the pixels far (Otsu) from the border colour, else the
   whole photo.
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
per-pixel content, since no correspondence between the view and the photo is computed. Without a
correspondence, a view that is darker than the photo cannot be told from a view of the photo's darker
parts when the photo has colours like the darkened ones (as natural photos do): such a view is then
left as it is, not corrected. A chroma or exposure error beyond the gain limits, or one so large that
the nearest photo colours are the wrong ones (e.g. chroma halved on the chart below), is not
corrected either. Outputs are bit-identical for identical inputs on one build; OpenCV's SIMD paths
may differ by a level between CPU types.

Measured (tests/test_classical_colour.py; mean L* and mean chroma in Lab inside the object; CIE76
Delta E per patch interior; default grain and guidance, strength 1):

=========================================================  ======================  ==================
case                                                       former mean/std match   now
=========================================================  ======================  ==================
``coffee`` photo as reference, its render from nearly the  L* 43.9 -> 34.9,        L* 43.9 -> 43.8,
photo camera (x0.97, shifted 3, 2 px; ellipse alpha)       chroma 45.4 -> 19.3     chroma 45.4 -> 45.4
``chelsea``, same                                          L* 48.0 -> 42.0,        L* 48.0 -> 47.9,
                                                           chroma 27.3 -> 21.6     chroma 27.3 -> 27.4
``coffee``, view of the cup only (the photo as the view)   L* 56.5 -> 35.2,        L* 56.5 -> 56.4,
                                                           chroma 50.2 -> 19.4     chroma 50.2 -> 50.1
ColorChecker 24 chart as view and photo                    Delta E mean 14.8,      mean 0.2, max 0.4
                                                           max 20.5
chart, view lightness x0.8 (Delta E mean 11.2 before)      mean 15.7               mean 1.0, max 9.6
chart, view chroma x0.7 (Delta E mean 9.7 before)          mean 16.8               mean 0.7, max 1.8
=========================================================  ======================  ==================

The former transfer matched the view's Lab mean and standard deviation to the photo's foreground,
guessed without alpha as the pixels far from the border colour: on natural photos that guess is
arbitrary (highlights and background patches), and even a right one differs from the view's object
in its mix of colours, so the view took on the exposure and saturation of another region. (The
9.6 left on the darkened chart is its yellow patch, clipped by the darkening itself.)
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
# Colour transfer (see color_transfer): a global L gain/offset and chroma gain/a, b offsets fitted by
# nearest-colour matching against the photo's palette.
MAX_GAIN = 1.5  # L and chroma gains stay in [1 / 1.5, 1.5]
COLOUR_RIDGE = 4.0  # Lab units^2: pulls the gains towards 1 when the view has little spread
COLOUR_INLIERS = 0.8  # the closest 80 % of colour pairs drive the fit (the rest may be unseen in the photo)
COLOUR_ITERATIONS = 12
CAPTURE_DISTANCE = 25.0  # CIE76: farther view-to-photo colour pairs are not used when the photo has no alpha
MAX_COLOUR_SAMPLES = 1024  # view pixels used for the fit
PALETTE_STEP = 1.0  # Lab grid of the photo's palette
MAX_PALETTE = 4096
BACKDROP_SPREAD = 10.0  # Lab units: a photo border this uniform (90th percentile) is a plain backdrop
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
    """bool [h, w] foreground of the reference photo uint8 [h, w, 3|4] (see module docstring)."""
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
            lab = transfer_to_photo(lab, inside, ref_lab, ref_fg, req.reference)
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
