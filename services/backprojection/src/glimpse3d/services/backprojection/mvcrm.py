"""MVCRM, the multi-view consistency refinement module: fuse one enhanced view into a splat.

:func:`refine` renders the splat at the view's camera, weights its pixels by depth consistency
(:mod:`.confidence`), optionally rejects a semantically drifted view by CLIP, then runs Adam on the
trust-weighted photometric loss plus an anchor scaled by each Gaussian's confidence and footprint
(:mod:`.fusion`, :mod:`.normals`), and raises each Gaussian's confidence by its trusted share. The
more often a Gaussian has been confirmed, the less a later view can move it, so rounds converge.
The steps and formulas: docs/backends/mvcrm.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import KDTree
from torch import Tensor

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import Glimpse3DError, InvalidInput
from glimpse3d.core.feedback import background_colour
from glimpse3d.core.images import resize_longest
from glimpse3d.core.render import GaussianTensors, from_tensors, rasterize, to_tensors
from glimpse3d.core.splat import MAX_GAUSSIANS, SH_C0, Splat
from glimpse3d.services.backprojection import normals as nrm
from glimpse3d.services.backprojection.api import (
    DEFAULT_LEARNING_RATE,
    ClipScorer,
    RefineOptions,
    RefineReport,
    RefineResult,
    TrustedView,
)
from glimpse3d.services.backprojection.confidence import Trust, pixel_trust, weighted_mae
from glimpse3d.services.backprojection.fusion import FusionProblem, NormalTerms, TrustedTerm, fuse
from glimpse3d.services.backprojection.relift import (
    GUESSED_CONFIDENCE,
    LIFTED_CONFIDENCE,
    OBSERVED_STRENGTH,
    PhotoView,
    check_photo_cameras,
    relift,
)

logger = logging.getLogger(__name__)

MIN_FOOTPRINT_PX = 0.01  # blend weight (pixels) below which a Gaussian does not count as shown
VISIBLE_FRACTION = 0.1  # of the footprint-weighted median: smaller footprints are leaks, not views
MIN_TRUSTED_SHARE = 0.05  # Gaussians below this trusted share take no part in normal smoothing
NEIGHBOURS = 8
# Footprint, as a fraction of the view's typical footprint, at which a Gaussian's steps are halved (see 5.).
STEP_FOOTPRINT = 0.25
EMPTY_ALPHA = 0.02  # rendered alpha below which a pixel shows only background
MIN_BACKGROUND_PIXELS = 16
_VIEW_RANGE_SLACK = 0.01  # float views may overshoot [0, 1] by this much (then clipped)
CLIP_SKIPPED_NOTE = "CLIP check skipped: no CLIP model is configured (the weight-free default)"
# Densification (see :func:`grow`): object pixels of the view that the splat leaves uncovered get new Gaussians.
GROW_MIN_ACCEPTED = 0.6  # the view's depth must agree with the splat on this fraction of its object pixels
GROW_MAX_ALPHA = 0.1  # rendered alpha below which a pixel the view shows as object is uncovered
GROW_MAX_OVERHANG = 0.05  # the view must show object on all but this share of the rendered object's inner pixels
GROW_EDGE_PX = 2.0  # ... and at least this far from the rendered object (soft edges and matte edges are not gaps)
GROW_MIN_PIXELS = 4  # fewer uncovered pixels than this: nothing is grown
GROW_MAX_FRACTION = 0.25  # at most this many new Gaussians per round, as a fraction of the splat
GROW_DEPTH_MARGIN = 0.25  # new points must lie within the rendered object's depth range, widened by this share
GROW_OPACITY = 0.7
GROW_TRUSTED_MARGIN_PX = 2.0  # a trusted view's mask, widened by this, bounds where new Gaussians may go
GROW_SCALE = 0.7  # standard deviation of a new Gaussian, in units of the spacing of the pixels it stands for
# Silhouette growth (see :func:`hull_view`): a view the splat barely covers is checked against the photo instead.
HULL_MAX_COVER = 0.5  # the splat covers less than this share of the view's object pixels
HULL_MIN_AGREE = 0.95  # ... and this share of them must see the trusted view's object along their rays
HULL_SAMPLES = 128  # depths tried along each ray
HULL_PROBE = 4096  # view pixels on which the agreement is measured
# Carving (see :func:`carve_weights`): background pixels of the view where the splat renders something.
CARVE_EDGE_PX = 2.0  # only background pixels at least this far from the view's object carve
CARVE_MAX_OVERHANG = 0.05  # the splat must cover all but this share of the view's inner object pixels
CARVE_COVERED_ALPHA = 0.5  # rendered alpha from which a view pixel counts as covered by the splat
CARVE_WEIGHT = 1.0  # weight of a carved pixel's rendered alpha, against a trusted pixel's colour error
CARVE_SAMPLES = 96  # depths tried along a trusted view's ray when a carved Gaussian is moved
CARVE_MIN_OPACITY = 0.05  # Gaussians below this opacity are left where they are
CARVE_FADE = 0.02  # opacity of a carved Gaussian that no depth on its photo ray puts inside the view
CARVE_SHOWN = 0.1  # observation strength in a trusted view above which a Gaussian is not moved (it shows)

@dataclass(frozen=True)
class Ablation:
    """MVCRM components, each on by default; the research harness switches them off one at a time.

    Not part of the wire contract (the service always runs the full module). Each switch, when off:
    depth_consistency: trust is the rendered alpha alone (the view's depth is ignored);
    normal_smoothing: no normal terms; clip_check: no CLIP check; anchor: no pull towards the
    parameters earlier rounds confirmed; footprint_weighting: every Gaussian's step is scaled by its
    trusted share only, not by how well the view shows it; confidence_accumulation: the round adds
    nothing to the per-Gaussian confidence (later rounds' anchors stay where they were); densification:
    object pixels of the view that the splat does not cover grow no Gaussians (:func:`grow`); carving:
    background pixels of the view do not pull the splat's alpha down (:func:`carve_weights`).
    """

    depth_consistency: bool = True
    normal_smoothing: bool = True
    clip_check: bool = True
    anchor: bool = True
    footprint_weighting: bool = True
    confidence_accumulation: bool = True
    densification: bool = True
    carving: bool = True

    @classmethod
    def without(cls, component: str) -> Ablation:
        """The full module with ``component`` switched off (InvalidInput for an unknown name)."""
        names = [f.name for f in fields(cls)]
        if component not in names:
            raise InvalidInput(f"unknown MVCRM component {component!r}; known: {', '.join(names)}", field="ablation")
        return cls(**{component: False})

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))


FULL_MVCRM = Ablation()


# ---------------------------------------------------------------------------- input validation


def _check_view(view: object, camera: Camera) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from a float or uint8 image matching the camera size."""
    if not isinstance(camera, Camera):
        raise InvalidInput(f"camera must be a Camera, got {type(camera).__name__}", field="camera")
    if not isinstance(view, np.ndarray):
        raise InvalidInput(f"view must be a numpy array, got {type(view).__name__}", field="view")
    want = (camera.height, camera.width, 3)
    if view.shape != want:
        raise InvalidInput(
            f"view must have shape [H, W, 3] = {list(want)} to match the camera, got {list(view.shape)}", field="view"
        )
    if view.dtype == np.uint8:
        return view.astype(np.float32) / 255.0
    if not np.issubdtype(view.dtype, np.floating):
        raise InvalidInput(f"view must be uint8 or floating point, got {view.dtype}", field="view")
    out = view.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput("view has a non-finite value", field="view")
    if out.min() < -_VIEW_RANGE_SLACK or out.max() > 1 + _VIEW_RANGE_SLACK:
        raise InvalidInput(f"float view must be in [0, 1], got [{out.min():.4g}, {out.max():.4g}]", field="view")
    return np.clip(out, 0.0, 1.0)


def _check_depth(view_depth: object, camera: Camera) -> np.ndarray | None:
    """[H, W] float32 (values <= 0 mean "no depth") or None."""
    if view_depth is None:
        return None
    if not isinstance(view_depth, np.ndarray) or not np.issubdtype(view_depth.dtype, np.floating):
        got = view_depth.dtype if isinstance(view_depth, np.ndarray) else type(view_depth).__name__
        raise InvalidInput(f"view_depth must be a floating-point numpy array, got {got}", field="view_depth")
    if view_depth.shape != (camera.height, camera.width):
        raise InvalidInput(
            f"view_depth must have shape [H, W] = {[camera.height, camera.width]}, got {list(view_depth.shape)}",
            field="view_depth",
        )
    if not np.isfinite(view_depth).all():
        bad = np.argwhere(~np.isfinite(view_depth))[0].tolist()
        raise InvalidInput(f"view_depth has a non-finite value at pixel (row, col) {bad}", field="view_depth")
    return view_depth.astype(np.float32)


def _check_confidence(confidence: object, n: int) -> np.ndarray:
    if confidence is None:
        return np.zeros(n, np.float32)
    if not isinstance(confidence, np.ndarray) or not np.issubdtype(confidence.dtype, np.number):
        raise InvalidInput("confidence must be a numeric numpy array", field="confidence")
    if confidence.shape != (n,):
        raise InvalidInput(
            f"confidence must have shape [N] = [{n}] (one value per Gaussian), got {list(confidence.shape)}",
            field="confidence",
        )
    conf = confidence.astype(np.float32)
    if not np.isfinite(conf).all() or (conf < 0).any():
        raise InvalidInput("confidence must be finite and >= 0", field="confidence")
    return conf


def _check_reference(reference: object) -> np.ndarray | None:
    if reference is None:
        return None
    if not isinstance(reference, np.ndarray) or reference.ndim != 3 or reference.shape[2] not in (3, 4):
        got = list(reference.shape) if isinstance(reference, np.ndarray) else type(reference).__name__
        raise InvalidInput(f"reference must be an image [H, W, 3] (or RGBA), got {got}", field="reference")
    reference = reference[..., :3]  # the CLIP check compares colours; a photo's alpha plays no part
    if reference.dtype == np.uint8:
        return reference.astype(np.float32) / 255.0
    ref = reference.astype(np.float32)
    if not np.isfinite(ref).all():
        raise InvalidInput("reference has a non-finite value", field="reference")
    return np.clip(ref, 0.0, 1.0)


def _check_trusted(trusted: object, max_side: int | None) -> list[TrustedView]:
    """The trusted views, each at most ``max_side`` a side (like the round's view)."""
    if isinstance(trusted, TrustedView) or not isinstance(trusted, Sequence):
        raise InvalidInput(f"trusted must be a sequence of TrustedView, got {type(trusted).__name__}",
                           field="trusted_views")
    out = []
    for i, view in enumerate(trusted):
        if not isinstance(view, TrustedView):
            raise InvalidInput(f"trusted[{i}] must be a TrustedView, got {type(view).__name__}", field="trusted_views")
        if max_side is not None and max(view.camera.width, view.camera.height) > max_side:
            small = resize_longest(view.image, max_side)
            mask = np.clip(resize_longest(view.mask, max_side), 0.0, 1.0)
            out.append(TrustedView(small, view.camera.with_size(small.shape[1], small.shape[0]), mask, view.weight))
        else:
            out.append(view)
    return out


def _trusted_term(t: TrustedView, device: torch.device, carve: bool = False) -> TrustedTerm:
    """A trusted view as a fusion term, its render's background the image's own (median outside its mask).

    ``carve``: its background pixels, ``CARVE_EDGE_PX`` or more from its mask, pull the rendered alpha
    down (weight ``CARVE_WEIGHT``), as a carving view's do (:func:`carve_weights`): the photo says that
    nothing is there, so nothing a round grows or moves may show there."""
    outside = None
    if carve:
        far = _distance_to(t.mask >= 0.5) >= CARVE_EDGE_PX
        outside = torch.as_tensor((CARVE_WEIGHT * far).astype(np.float32), device=device)
    return TrustedTerm(
        camera=t.camera,
        view=torch.as_tensor(t.image, device=device),
        pixel_weight=torch.as_tensor(t.mask, device=device),
        normaliser=float(max(1.0, float((t.mask >= 0.5).sum()))),
        background=torch.tensor(background_colour(t.image, t.mask), dtype=torch.float32, device=device),
        weight=t.weight,
        carve=outside,
    )


def _same_pose(a: Camera, b: Camera) -> bool:
    """Whether two cameras stand at the same place looking the same way (their sizes may differ)."""
    return bool(np.allclose(a.world_to_camera, b.world_to_camera, atol=1e-6))


def _strength(g: GaussianTensors, camera: Camera) -> np.ndarray:
    """[N] each Gaussian's :func:`observation_strength` in ``camera``'s view."""
    cov, _ = footprints(g, camera, torch.ones(camera.height, camera.width, device=g.device))
    return observation_strength(cov).cpu().numpy()


def observed_by_photos(g: GaussianTensors, cameras: Sequence[Camera]) -> np.ndarray:
    """[N] bool: the Gaussians some photo shows, an observation strength of at least
    :data:`.relift.OBSERVED_STRENGTH` from one of ``cameras`` (the photos').

    Geometry, not confidence, tells a photo's observation from a guess: enhancement rounds raise the
    confidence of the far side too (after two rounds from behind, 86 % of the globe's Gaussians stood at
    0.1 or more, and a back photo replaced 16 of them), but no photo shows it."""
    seen = np.zeros(g.num_gaussians, bool)
    for cam in cameras:
        seen |= _strength(g, cam) >= OBSERVED_STRENGTH
    return seen


def _check_splat(splat: object) -> Splat:
    if not isinstance(splat, Splat):
        raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
    if splat.num_gaussians == 0:
        raise InvalidInput("splat has no Gaussians", field="splat")
    return splat


def _background(background: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in background)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"background must be 3 numbers, got {background!r}", field="background") from exc
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InvalidInput(f"background must be 3 finite numbers, got {background!r}", field="background")
    return values  # type: ignore[return-value]


def estimate_background(view: np.ndarray, alpha: np.ndarray, view_depth: np.ndarray | None) -> tuple[float, ...]:
    """The view's background colour: the median over pixels the splat leaves empty (rendered alpha
    < 0.02, and no view depth there when one is given); black when fewer than 16 such pixels."""
    empty = alpha < EMPTY_ALPHA
    if view_depth is not None:
        empty &= view_depth <= 0
    if int(empty.sum()) < MIN_BACKGROUND_PIXELS:
        return (0.0, 0.0, 0.0)
    return tuple(float(c) for c in np.median(view[empty], axis=0))


# ---------------------------------------------------------------------------- round analysis


def _render_np(g: GaussianTensors, camera: Camera, background: Tensor) -> tuple[np.ndarray, ...]:
    """(rgb [H, W, 3], depth [H, W], alpha [H, W]) as float32 numpy, no autograd."""
    with torch.no_grad():
        out = rasterize(g, camera, background=background)
    return tuple(t.detach().cpu().numpy().astype(np.float32) for t in (out.rgb, out.depth, out.alpha))


def footprints(g: GaussianTensors, camera: Camera, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-Gaussian blend weight in the view: (total cov [N], trusted tru [N] = sum_p w_p c_ip).

    One backward pass through the rasterizer of a grey copy (every colour 0.5, so no clamping):
    the gradient of sum_p (w_p R_p + G_p) with respect to Gaussian i's band-0 red and green SH
    coefficients is C0 * sum_p w_p c_ip and C0 * sum_p c_ip, where c_ip is i's blend weight at p.
    """
    assert weight.shape == (camera.height, camera.width), "weight must be [H, W] of the camera"
    sh = torch.zeros_like(g.sh).requires_grad_(True)  # [N, K, 3]
    grey = GaussianTensors(g.means.detach(), g.quats.detach(), g.log_scales.detach(), g.opacity_logits.detach(), sh)
    with torch.enable_grad():
        out = rasterize(grey, camera)
        (weight * out.rgb[..., 0] + out.rgb[..., 1]).sum().backward()
    assert sh.grad is not None  # sh is a leaf that requires grad and feeds the loss
    grad = sh.grad[:, 0, :] / SH_C0  # [N, 3]
    cov = grad[:, 1].clamp(min=0.0)
    return cov, torch.minimum(grad[:, 0].clamp(min=0.0), cov)


def typical_footprint(cov: Tensor) -> Tensor | None:
    """The median footprint of the Gaussians the view really shows (None when it shows nothing).

    "Really shows": a footprint of at least a tenth of the footprint-weighted median (the footprint
    of the Gaussian that colours a typical pixel). Without that cut the median is dominated by
    Gaussians on the far side, which leak a few hundredths of a pixel through the transmittance
    floor, and hidden Gaussians would take near full steps and gain confidence.
    """
    shown = cov[cov > MIN_FOOTPRINT_PX]
    if shown.numel() == 0:
        return None
    ordered, _ = torch.sort(shown)
    cumulative = torch.cumsum(ordered, dim=0)
    weighted_median = ordered[min(int(torch.searchsorted(cumulative, cumulative[-1] * 0.5)), ordered.numel() - 1)]
    return ordered[ordered >= VISIBLE_FRACTION * weighted_median].median()


def observation_strength(cov: Tensor, relative_to: float = 1.0) -> Tensor:
    """[N] in [0, 1): cov / (cov + relative_to * m), m the view's :func:`typical_footprint`.

    A Gaussian seen face-on over many pixels is observed better than one seen edge-on over a
    fraction of a pixel; relative to the view's typical footprint, so it does not depend on the
    image resolution. A Gaussian whose footprint is ``relative_to * m`` scores 1/2.
    """
    typical = typical_footprint(cov)
    if typical is None:
        return torch.zeros_like(cov)
    return cov / (cov + typical * relative_to)


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """[H, W] Euclidean distance of every pixel to the nearest pixel of ``mask`` (0 on it)."""
    return np.asarray(ndimage.distance_transform_edt(~mask), dtype=np.float64)


def _lookup(camera: Camera, table: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([M] bool seen: ``points`` in front of ``camera`` and inside its frame, [M] bool: seen and ``table``
    [H, W] bool true at the pixel each lands on)."""
    uv, z = camera.project(points)
    h, w = table.shape
    with np.errstate(invalid="ignore"):
        col, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
        seen = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    hit = np.zeros(len(points), bool)
    hit[seen] = table[row[seen].astype(int), col[seen].astype(int)]
    return seen, hit


def _mask_test(view: TrustedView, points: np.ndarray, margin_px: float) -> tuple[np.ndarray, np.ndarray]:
    """([M] bool seen: in front of ``view`` and inside its frame, [M] bool on: seen and on its mask
    widened by ``margin_px``)."""
    return _lookup(view.camera, _distance_to(view.mask >= 0.5) <= margin_px, points)


def _seen_as_background(view: TrustedView, points: np.ndarray) -> np.ndarray:
    """[M] bool: ``points`` that ``view`` sees in front of it, inside its frame, where its mask (widened by
    ``GROW_TRUSTED_MARGIN_PX``) says there is no object."""
    seen, on = _mask_test(view, points, GROW_TRUSTED_MARGIN_PX)
    return seen & ~on


def _ray_depths(g: GaussianTensors, camera: Camera, samples: int, widen: float = 0.25) -> np.ndarray | None:
    """[S] depths spanning the splat's Gaussians seen from ``camera``, the range widened by ``widen`` of
    itself at both ends (None: no Gaussian in front of the camera)."""
    _, z = camera.project(g.means.detach().cpu().numpy())
    front = z[z > 0]
    if front.size == 0:
        return None
    near, far = float(front.min()), float(front.max())
    pad = widen * max(far - near, 1e-3 * far)
    return np.linspace(max(near - pad, 1e-3 * far), far + pad, samples)


def _hull_entry(camera: Camera, rows: np.ndarray, cols: np.ndarray, depths: np.ndarray,
                trusted: Sequence[TrustedView], near_to: np.ndarray | None = None,
                margin_px: float = GROW_TRUSTED_MARGIN_PX) -> np.ndarray:
    """[M] a depth on each pixel's ray among ``depths`` that every trusted view sees, in its frame, on its
    object (its mask widened by ``margin_px``); NaN where none does. Of those, the nearest
    to the camera, or with ``near_to`` [K, 3] the one closest to any of those points (ties: the nearest)."""
    m, k = len(rows), len(depths)
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    points = camera.unproject(np.repeat(uv, k, axis=0), np.tile(depths, m))  # [M * S, 3]
    inside = np.ones(m * k, bool)
    for view in trusted:  # a point outside a trusted view's frame is not confirmed by it
        inside &= _mask_test(view, points, margin_px)[1]
    if near_to is not None and len(near_to):
        gap = np.full(m * k, np.inf)
        gap[inside], _ = KDTree(near_to).query(points[inside])
        pick = np.argmin(gap.reshape(m, k), axis=1)  # argmin takes the first (nearest) of equal gaps
    else:
        pick = np.argmax(inside.reshape(m, k), axis=1)
    return np.where(inside.reshape(m, k).any(axis=1), depths[pick], np.nan)


def hull_view(
    g: GaussianTensors, camera: Camera, view_depth: np.ndarray, rendered_alpha: np.ndarray,
    trusted: Sequence[TrustedView], seed: int = 0,
) -> bool:
    """Whether the view is checked against the trusted views' silhouettes instead of the splat.

    A coarse splat lifted from one photo can be nearly flat: a table or an aeroplane seen edge-on
    renders as a thin strip, against which neither the view's depth nor its outline can be compared
    (the depth alignment fails, and a correct view overhangs the strip), so no view could ever widen
    it. When the splat covers (rendered alpha >= 0.5) less than ``HULL_MAX_COVER`` of the view's object
    pixels, the view is instead accepted when at least ``HULL_MIN_AGREE`` of its object pixels (a
    sample of ``HULL_PROBE``) see every trusted view's object (the photo's matte) somewhere along
    their rays: the view's outline is then consistent with the photo's, as the outlines of one
    object seen from two cameras are. Without a trusted view there is nothing to check against.
    """
    if not trusted:
        return False
    obj = view_depth > 0
    count = int(obj.sum())
    if count < GROW_MIN_PIXELS or float((rendered_alpha[obj] >= CARVE_COVERED_ALPHA).mean()) >= HULL_MAX_COVER:
        return False
    depths = _ray_depths(g, camera, HULL_SAMPLES)
    if depths is None:
        return False
    rows, cols = np.nonzero(obj)
    if count > HULL_PROBE:
        pick = np.random.default_rng(seed).choice(count, HULL_PROBE, replace=False)
        rows, cols = rows[pick], cols[pick]
    agree = float(np.isfinite(_hull_entry(camera, rows, cols, depths, trusted)).mean())
    logger.debug("hull: cover below %.2f, agreement %.3f", HULL_MAX_COVER, agree)
    return agree >= HULL_MIN_AGREE


def silhouette_trust(trust: Trust, rendered_alpha: np.ndarray, view_depth: np.ndarray) -> Trust:
    """The trust of a view accepted by :func:`hull_view`: the rendered alpha on the view's object, 0 off it."""
    geo = (view_depth > 0).astype(np.float32)
    alpha = np.clip(rendered_alpha, 0.0, 1.0).astype(np.float32)
    return trust._replace(weight=alpha * geo, geometric=geo, object_mask=alpha > 0.5)


def _pick(uncovered: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(rows, cols, stride) of at most ``budget`` uncovered pixels on a grid of that stride (None: too few)."""
    count = int(uncovered.sum())
    if count < GROW_MIN_PIXELS or budget < GROW_MIN_PIXELS:
        return None
    stride = max(1, math.ceil(math.sqrt(count / budget)))
    rows, cols = np.nonzero(uncovered)
    pick = (rows % stride == 0) & (cols % stride == 0)
    if int(pick.sum()) < GROW_MIN_PIXELS:
        return None
    return rows[pick][:budget], cols[pick][:budget], stride


def grow(
    g: GaussianTensors,
    camera: Camera,
    view: np.ndarray,
    view_depth: np.ndarray,
    rendered_depth: np.ndarray,
    rendered_alpha: np.ndarray,
    trust: Trust,
    trusted: Sequence[TrustedView] = (),
    hull: bool = False,
) -> GaussianTensors | None:
    """New Gaussians for the view's object pixels that the splat leaves uncovered (None: none).

    Fusion can only recolour and nudge Gaussians that already cover a pixel: where the splat's
    silhouette is too small (a box lifted from one photo as a rounded slab, a missing part), the view's
    object pixels get no weight, and no number of rounds fixes the outline. Here each uncovered object
    pixel (the view has depth there, one pixel in from its edge; the render's alpha is below
    ``GROW_MAX_ALPHA``, ``GROW_EDGE_PX`` or more from the rendered object) becomes an isotropic
    Gaussian of the view's colour, placed on its ray at the view's depth mapped into the splat's frame by
    the scale and shift that :func:`.confidence.align_depth` fitted on the covered pixels.

    Only views that agree with the splat and extend it grow it: the depth alignment must have succeeded,
    the view's depth must be consistent on at least ``GROW_MIN_ACCEPTED`` of the covered object pixels,
    and the view must show object on all but ``GROW_MAX_OVERHANG`` of the rendered object (away from its
    edge): a view whose outline only partly overlaps the splat's (shifted, turned, another object) is
    not an extension of it. Points outside the rendered object's depth range, widened by
    ``GROW_DEPTH_MARGIN``, are dropped. At most ``GROW_MAX_FRACTION`` of the splat is added per round (on a
    coarser pixel grid when there are more), and never past :data:`MAX_GAUSSIANS`. A point that a
    ``trusted`` view (the photo) sees outside its mask, widened by ``GROW_TRUSTED_MARGIN_PX``, is dropped:
    the photo is ground truth that nothing is there. The new Gaussians start with no confidence, so the
    fusion that follows fits them freely.

    ``hull`` (a view :func:`hull_view` accepted against the photo's outline; the splat barely covers it,
    so its depth cannot be aligned): each new Gaussian goes to the point of its ray that every trusted
    view sees on its object (the visual hull of the photo's outline) and that is closest to the splat,
    not to the view's depth: one photo's outline leaves a whole interval, and the part of the object
    the splat already has (the photo's side) is the best guess of where along it the view's part is.
    """
    inside_view = np.asarray(ndimage.binary_erosion(view_depth > 0), dtype=bool)  # [H, W]
    away = _distance_to(trust.object_mask) >= GROW_EDGE_PX  # [H, W]
    n = g.num_gaussians
    budget = min(int(GROW_MAX_FRACTION * n), MAX_GAUSSIANS - n)
    if hull:
        depths = _ray_depths(g, camera, HULL_SAMPLES)
        if depths is None:
            return None
        uncovered = inside_view & away & (rendered_alpha < GROW_MAX_ALPHA)  # [H, W]
        picked = _pick(uncovered, budget)
        if picked is None:
            return None
        rows, cols, stride = picked
        z = _hull_entry(camera, rows, cols, depths, trusted,  # [M], NaN: no depth inside the photo's outline
                        g.means.detach().cpu().numpy().astype(np.float64), margin_px=0.0)
        keep = np.isfinite(z)
    else:
        align = trust.alignment
        if align is None or not align.ok or trust.accepted_fraction < GROW_MIN_ACCEPTED:
            return None
        covered_depth = rendered_depth[trust.object_mask & (rendered_depth > 0)]
        if covered_depth.size < GROW_MIN_PIXELS:
            return None
        aligned = align.scale * view_depth.astype(np.float64) + align.shift  # [H, W] in the splat's depth units
        near, far = float(covered_depth.min()), float(covered_depth.max())
        margin = GROW_DEPTH_MARGIN * max(far - near, 1e-3 * far)
        inner = _distance_to(~trust.object_mask) > GROW_EDGE_PX  # [H, W] the render's object, edge off
        overhang = float((view_depth[inner] <= 0).mean()) if inner.any() else 1.0
        logger.debug("grow: accepted %.3f, overhang %.3f", trust.accepted_fraction, overhang)
        if overhang > GROW_MAX_OVERHANG:
            return None
        uncovered = inside_view & away & (rendered_alpha < GROW_MAX_ALPHA) & (aligned > max(near - margin, 1e-6)) \
            & (aligned < far + margin)  # [H, W]
        picked = _pick(uncovered, budget)
        if picked is None:
            return None
        rows, cols, stride = picked
        z = aligned[rows, cols]  # [M]
        keep = np.ones(len(z), bool)
        for photo in trusted:
            keep &= ~_seen_as_background(photo, camera.unproject(np.stack([cols + 0.5, rows + 0.5], axis=1), z))
    if int(keep.sum()) < GROW_MIN_PIXELS:
        return None
    rows, cols, z = rows[keep], cols[keep], z[keep]
    means = camera.unproject(np.stack([cols + 0.5, rows + 0.5], axis=1), z)  # [M, 3]
    sigma = GROW_SCALE * stride * z / math.sqrt(camera.fx * camera.fy)  # [M] world units
    opacity = GROW_OPACITY
    m = len(z)
    dev, dt = g.device, g.means.dtype
    sh = torch.zeros((m, g.sh.shape[1], 3), dtype=dt, device=dev)
    sh[:, 0, :] = torch.as_tensor((view[rows, cols] - 0.5) / SH_C0, dtype=dt, device=dev)
    new = GaussianTensors(
        means=torch.as_tensor(means, dtype=dt, device=dev),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dt, device=dev).expand(m, 4).clone(),
        log_scales=torch.as_tensor(np.log(sigma), dtype=dt, device=dev)[:, None].expand(m, 3).clone(),
        opacity_logits=torch.full((m,), math.log(opacity / (1.0 - opacity)), dtype=dt, device=dev),
        sh=sh,
    )
    return GaussianTensors(*(torch.cat([a, b]) for a, b in zip(
        (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh),
        (new.means, new.quats, new.log_scales, new.opacity_logits, new.sh), strict=True)))


def carve_weights(
    view_depth: np.ndarray, rendered_alpha: np.ndarray, trust: Trust, hull: bool = False
) -> np.ndarray | None:
    """[H, W] weights of the view's background pixels that pull the splat's rendered alpha down (None: none).

    Fusion weighs only pixels the view shows as object, so without this a view can never say "nothing
    is here": a torus lifted from one photo as a thick disc stays a disc from the side however many
    views show it thin. Each pixel the view shows as background, ``CARVE_EDGE_PX`` or more from its
    object (soft edges and matte edges are not background), adds ``CARVE_WEIGHT`` times the rendered
    alpha there to the fusion loss; the Gaussians that cover it fade or move.

    Only a view that the splat contains carves: the depth alignment must have succeeded and the splat
    must cover (rendered alpha >= ``CARVE_COVERED_ALPHA``) all but ``CARVE_MAX_OVERHANG`` of the view's
    object pixels away from its edge. A view whose outline sticks out of the splat's (shifted, turned,
    another object) is not a narrower view of the same thing and carves nothing. The trusted photo's
    term keeps what the photo shows, and the anchor what earlier views confirmed. A view that
    :func:`hull_view` accepted (``hull``) needs no depth alignment.
    """
    align = trust.alignment
    if not hull and (align is None or not align.ok):
        return None
    obj = view_depth > 0  # [H, W]
    inner = _distance_to(~obj) > GROW_EDGE_PX  # the view's object, edge off
    if not inner.any():
        return None
    overhang = float((rendered_alpha[inner] < CARVE_COVERED_ALPHA).mean())
    logger.debug("carve: overhang %.3f", overhang)
    if overhang > CARVE_MAX_OVERHANG:
        return None
    carve = (_distance_to(obj) >= CARVE_EDGE_PX) & (rendered_alpha > EMPTY_ALPHA)  # [H, W]
    if int(carve.sum()) < GROW_MIN_PIXELS:
        return None
    return (CARVE_WEIGHT * carve).astype(np.float32)


def carve_gaussians(
    g: GaussianTensors, camera: Camera, view_depth: np.ndarray, trusted: Sequence[TrustedView] = ()
) -> tuple[GaussianTensors, np.ndarray, int]:
    """Move or fade the Gaussians whose centres the view shows as background: (splat, moved [N] bool, faded).

    A view the splat contains (:func:`carve_weights` says so) is a silhouette of the object: every
    surface point projects inside it. A Gaussian whose centre projects ``CARVE_EDGE_PX`` or more
    outside the view's object is therefore misplaced. With a trusted view (the photo), it slides along
    the photo's ray through its centre to the nearest of ``CARVE_SAMPLES`` depths (over the splat's
    depth range seen from the photo, widened by half) at which the view shows object, its size scaled
    with its distance: what the photo sees of it stays where it is in the photo, only its distance
    changes, which one photo cannot tell. Otherwise (no such depth, no trusted view) it fades to
    opacity ``CARVE_FADE`` where it is.

    The photo is ground truth, so it has the last word: a Gaussian it shows (see ``CARVE_SHOWN``) never
    fades (a matte that misses a thin part must not erase it), a hidden one whose move would put it in
    front of what the photo shows fades instead, and a shown one whose move would hide it stays. The
    Gaussians the photo shows move only if the photo, rendered inside its mask, is no worse for it than
    when they stay: along a ray the view's outline may leave two intervals, and the order of what the
    photo sees can change. The fusion's carving term (:func:`carve_weights`) then trims what spills out.
    """
    background = _distance_to(view_depth > 0) >= CARVE_EDGE_PX  # [H, W] clearly off the view's object
    means = g.means.detach().cpu().numpy().astype(np.float64)  # [N, 3]
    opacity = torch.sigmoid(g.opacity_logits.detach()).cpu().numpy()
    n = len(means)

    def outside(points: np.ndarray) -> np.ndarray:
        return _lookup(camera, background, points.reshape(-1, 3))[1].reshape(points.shape[:-1])

    wrong = outside(means) & (opacity >= CARVE_MIN_OPACITY)  # [N]
    if not wrong.any():
        return g, np.zeros(n, bool), 0

    def shown_in(splat: GaussianTensors) -> np.ndarray:
        """[N] bool: Gaussians a trusted view shows (observation strength inside its mask > CARVE_SHOWN)."""
        out = np.zeros(n, bool)
        for t in trusted:
            _, shown = footprints(splat, t.camera, torch.as_tensor(t.mask, device=g.device))
            out |= observation_strength(shown).cpu().numpy() > CARVE_SHOWN
        return out

    # Where each wrong Gaussian would go along the photo's ray (NaN: nowhere inside the view).
    target = np.full((n, 3), np.nan)
    ratio = np.ones(n)  # new / old distance from the photo
    if trusted:
        photo = trusted[0].camera
        _, z_all = photo.project(means)
        idx = np.nonzero(wrong & (z_all > 0))[0]
        depths = _ray_depths(g, photo, CARVE_SAMPLES, widen=0.5)  # [S]
        if depths is not None and idx.size:
            uv, z = photo.project(means[idx])  # [M, 2], [M]
            rays = photo.unproject(np.repeat(uv, CARVE_SAMPLES, axis=0), np.tile(depths, len(idx)))
            rays = rays.reshape(-1, CARVE_SAMPLES, 3)
            inside = ~outside(rays)  # [M, S]
            best = np.argmin(np.where(inside, np.abs(depths[None, :] - z[:, None]), np.inf), axis=1)
            found = inside[np.arange(len(idx)), best]
            target[idx[found]] = rays[np.nonzero(found)[0], best[found]]
            ratio[idx[found]] = depths[best[found]] / z[found]

    def build(move: np.ndarray, fade: np.ndarray) -> GaussianTensors:
        means_new = np.where(move[:, None], target, means)
        log_scales = g.log_scales.detach() + torch.as_tensor(np.log(np.where(move, ratio, 1.0)),
                                                             dtype=g.log_scales.dtype, device=g.device)[:, None]
        logits = g.opacity_logits.detach().clone()
        logits[torch.as_tensor(np.nonzero(fade)[0], dtype=torch.long, device=logits.device)] = \
            math.log(CARVE_FADE / (1 - CARVE_FADE))
        return GaussianTensors(torch.as_tensor(means_new, dtype=g.means.dtype, device=g.device), g.quats,
                               log_scales, logits, g.sh)

    movable = wrong & np.isfinite(target[:, 0])
    if not trusted:
        return build(np.zeros(n, bool), wrong), np.zeros(n, bool), int(wrong.sum())
    visible = shown_in(g)

    def plan(move_visible: bool) -> tuple[GaussianTensors, np.ndarray, np.ndarray]:
        move = movable & (move_visible | ~visible)
        fade = wrong & ~movable & ~visible
        after = shown_in(build(move, fade))
        hidden_now = move & visible & ~after  # moved behind other Gaussians: the photo would lose it
        phantom = move & ~visible & after  # moved in front of what the photo shows: both views disown it
        move, fade = move & ~(hidden_now | phantom), fade | phantom
        return build(move, fade), move, fade

    hidden_only = plan(False)
    candidates = [hidden_only]
    if (movable & visible).any():
        candidates.append(plan(True))

    def photo_error(splat: GaussianTensors) -> float:
        total = 0.0
        for t in trusted:
            bg = torch.tensor(background_colour(t.image, t.mask), dtype=torch.float32, device=g.device)
            rgb, _, _ = _render_np(splat, t.camera, bg)
            total += weighted_mae(rgb, t.image, t.mask)  # TrustedView holds float RGB in [0, 1] and a float mask
        return total

    out, move, fade = min(candidates, key=lambda c: photo_error(c[0]))  # ties: the hidden-only plan
    return out, move, int(fade.sum())


def _normal_terms(
    g: GaussianTensors, camera: Camera, depth: np.ndarray, alpha: np.ndarray, share: Tensor, opts: RefineOptions
) -> NormalTerms | None:
    """Normal smoothing set-up for the Gaussians this view trusts (None when normal_weight is 0)."""
    if opts.normal_weight == 0:
        return None
    active = torch.nonzero(share > MIN_TRUSTED_SHARE).squeeze(1)  # [A]
    dev = g.device
    means = g.means.detach()[active]  # [A, 3]
    rays = torch.as_tensor(camera.pixel_rays(), dtype=torch.float32, device=dev)  # [H, W, 3]
    rot = torch.as_tensor(camera.rotation.T, dtype=torch.float32, device=dev)  # camera -> world
    d_t = torch.as_tensor(depth, device=dev)
    normal_map, valid_map = nrm.depth_normals(d_t, torch.as_tensor(alpha, device=dev), rays, rot)
    uv, z = camera.project(means.cpu().numpy())
    uv_t = torch.as_tensor(np.nan_to_num(uv, nan=-1.0), device=dev)  # [A, 2]
    col, row = torch.floor(uv_t[:, 0]).long(), torch.floor(uv_t[:, 1]).long()
    inside = (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    inside &= torch.as_tensor(z > 0, device=dev)
    col, row = col.clamp(0, camera.width - 1), row.clamp(0, camera.height - 1)
    radius = torch.exp(g.log_scales.detach()[active].max(dim=1).values)  # [A]
    z_t = torch.as_tensor(z, dtype=torch.float32, device=dev)
    front = (z_t - d_t[row, col]).abs() <= torch.maximum(opts.depth_tolerance * d_t[row, col], 2 * radius)
    return NormalTerms(
        active=active,
        neighbours=nrm.knn(means, NEIGHBOURS, seed=opts.seed),
        flat=nrm.flatness(g.log_scales.detach()[active]),
        target=normal_map[row, col],
        target_valid=inside & front & valid_map[row, col],
        weight=opts.normal_weight,
    )


def _clip_check(
    clip: ClipScorer | None, opts: RefineOptions, view: np.ndarray, rendered: np.ndarray, reference: np.ndarray | None
) -> tuple[float | None, str, bool]:
    """(score or None, note, passed)."""
    if clip is None:
        return None, CLIP_SKIPPED_NOTE, True
    if not opts.clip_check:
        return None, "CLIP check skipped: options.clip_check is off", True
    other, name = (reference, "reference photo") if reference is not None else (rendered, "rendered view")
    score = float(clip.score(view, other))
    if not math.isfinite(score):
        raise Glimpse3DError(f"CLIP scorer returned a non-finite score {score}")
    model = getattr(clip, "label", "")  # thresholds are model specific, so the note names the model
    similarity = f"CLIP similarity{f' ({model})' if model else ''} {score:.3f}"
    if score < opts.clip_threshold:
        note = (
            f"rejected: {similarity} between the enhanced view and the {name} is below the "
            f"threshold {opts.clip_threshold:.3f} (semantic drift)"
        )
        return score, note, False
    return score, f"{similarity} to the {name} passes the threshold {opts.clip_threshold:.3f}", True


def working_resolution(
    camera: Camera, view: np.ndarray, depth: np.ndarray | None, max_side: int
) -> tuple[Camera, np.ndarray, np.ndarray | None]:
    """The camera, view [h, w, 3] and depth [h, w] scaled so that the longest side is ``max_side``."""
    if max_side < 16:
        raise InvalidInput(f"max_side must be at least 16, got {max_side}", field="max_side")
    small = resize_longest(view.astype(np.float32), max_side)
    small_camera = camera.with_size(small.shape[1], small.shape[0])
    if depth is None:
        return small_camera, small, None
    weight = resize_longest((depth > 0).astype(np.float32), max_side)
    summed = resize_longest(np.where(depth > 0, depth, 0.0).astype(np.float32), max_side)
    small_depth = np.where(weight > 0.5, summed / np.maximum(weight, 1e-6), 0.0).astype(np.float32)
    return small_camera, small, small_depth


# ---------------------------------------------------------------------------- public API


def refine(
    splat: Splat,
    view: np.ndarray,
    camera: Camera,
    view_depth: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    options: RefineOptions | None = None,
    clip: ClipScorer | None = None,
    reference: np.ndarray | None = None,
    *,
    background: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    max_side: int | None = None,
    ablation: Ablation = FULL_MVCRM,
    trusted: Sequence[TrustedView] = (),
    photo_cameras: Sequence[Camera] = (),
) -> RefineResult:
    """Fuse one enhanced ``view`` [H, W, 3] seen from ``camera`` into ``splat`` (one MVCRM round).

    ``max_side``: when the view is larger, the round works on the view, its depth and its camera
    scaled down to that longest side (area averaging; depth averaged over valid pixels only). The
    splat is resolution independent, so this trades fine detail for speed; None keeps the size.

    ``view_depth`` [H, W]: depth estimated from the view, any positive scale and shift, <= 0 where
    there is no object; ``confidence`` [N]: accumulated by earlier rounds (None = zeros);
    ``reference``: the input photo for the CLIP check; ``background``: the colour the view was
    rendered over (None: estimated, see :func:`estimate_background`). Returns the refined splat
    (the input object itself when rejected), the new confidence and the report. Raises
    :class:`InvalidInput` naming the bad field. ``ablation``: components switched off, for the
    research harness's ablation study (:class:`Ablation`); the default is the full module.
    ``trusted``: views fused together with ``view`` as ground truth (the gateway sends the input photo
    with its matte), each adding its own photometric term to the fusion loss (:mod:`.fusion`).
    ``photo_cameras``: cameras of the object's other photos that are not trusted views; with
    ``options.relift`` what they and the trusted views show is observed (:func:`observed_by_photos`).
    """
    if not isinstance(ablation, Ablation):
        raise InvalidInput(f"ablation must be an Ablation, got {type(ablation).__name__}", field="ablation")
    opts = options if options is not None else RefineOptions()
    if not isinstance(opts, RefineOptions):
        raise InvalidInput(f"options must be RefineOptions, got {type(opts).__name__}", field="options")
    splat = _check_splat(splat)
    target = _check_view(view, camera)
    depth_in = _check_depth(view_depth, camera)
    if max_side is not None and max(camera.width, camera.height) > max_side:
        camera, target, depth_in = working_resolution(camera, target, depth_in, max_side)
    conf = _check_confidence(confidence, splat.num_gaussians)
    ref = _check_reference(reference)
    trusted_views = _check_trusted(trusted, max_side)
    cameras = check_photo_cameras(photo_cameras)
    if opts.relift and depth_in is None:
        raise InvalidInput("relift needs the view's depth (view_depth): the photo is lifted on it", field="view_depth")
    g0 = to_tensors(splat, device)
    rgb0, depth0, alpha0, bg = _first_render(g0, camera, target, depth_in, background)
    trust_depth = depth_in if ablation.depth_consistency else None
    hull = ablation.densification and depth_in is not None and \
        hull_view(g0, camera, depth_in, alpha0, trusted_views, opts.seed)

    def view_trust(depth: np.ndarray, alpha: np.ndarray) -> Trust:
        out = pixel_trust(depth, alpha, trust_depth, opts.depth_tolerance, opts.seed)
        if opts.observed:  # a real photo: every covered pixel is trusted (the depth still aligns densification)
            return _observed(out, alpha)
        if hull and depth_in is not None:  # checked against the photo's outline: its depth cannot be aligned
            return silhouette_trust(out, alpha, depth_in)
        return out

    trust = view_trust(depth0, alpha0)
    before = weighted_mae(rgb0, target, trust.weight)
    if opts.observed:
        score, note, passed = None, "CLIP check skipped: the view is a real photo (options.observed)", True
    else:
        score, note, passed = _clip_check(clip if ablation.clip_check else None, opts, target, rgb0, ref)
    if passed and float(trust.weight.sum()) <= 1e-6:
        passed, note = False, f"{note}; rejected: no pixel of the view is trusted (its geometry disagrees)"
    if not passed:
        logger.info("MVCRM round rejected: %s", note)
        report = RefineReport(trust.accepted_fraction, before, before, score, note, True, 0, float(conf.mean()))
        return RefineResult(splat, conf, report)
    replaced = added_by_relift = kept_by_relift = 0
    if opts.relift and depth_in is not None:  # a real photo replaces the guess it shows (.relift)
        others = [t.camera for t in trusted_views if not _same_pose(t.camera, camera)] + cameras
        guessed = ~observed_by_photos(g0, others) if others else conf < GUESSED_CONFIDENCE
        photos = [PhotoView(t.image, t.mask, t.camera) for t in trusted_views if not _same_pose(t.camera, camera)]
        relifted = relift(g0, guessed, _strength(g0, camera), camera, target, depth_in, depth0, opts.seed, photos)
        if relifted is not None:
            g0, replaced, added_by_relift = relifted.gaussians, relifted.removed, relifted.added
            kept_by_relift = int(relifted.kept.sum())
            conf = np.concatenate([conf[relifted.kept], np.full(relifted.added, LIFTED_CONFIDENCE, np.float32)])
            _, depth0, alpha0 = _render_np(g0, camera, bg)
            relit = view_trust(depth0, alpha0)
            trust = trust._replace(weight=relit.weight, object_mask=relit.object_mask)
            before = weighted_mae(rgb0, target, trust.weight)  # the splat before the round, on the pixels fused
    terms = tuple(_trusted_term(t, g0.device, ablation.carving) for t in trusted_views)
    grown = grow(g0, camera, target, depth_in, depth0, alpha0, trust, trusted_views, hull) \
        if ablation.densification and depth_in is not None else None
    if grown is not None:  # the fusion sees the grown splat, its new pixels trusted like any other
        added = grown.num_gaussians - g0.num_gaussians
        logger.info("MVCRM round: %d Gaussians grown on uncovered object pixels", added)
        g0, conf = grown, np.concatenate([conf, np.zeros(added, np.float32)])
        _, depth0, alpha0 = _render_np(g0, camera, bg)
        regrown = view_trust(depth0, alpha0)
        trust = trust._replace(weight=regrown.weight, object_mask=regrown.object_mask)  # the view's verdict stays
        before = weighted_mae(rgb0, target, trust.weight)  # the splat before the round, on the pixels fused
    carve = carve_weights(depth_in, alpha0, trust, hull) if ablation.carving and depth_in is not None else None
    if carve is not None and depth_in is not None:
        g0, moved, faded = carve_gaussians(g0, camera, depth_in, trusted_views)
        logger.info("MVCRM round: carving on %d background pixels, %d Gaussians moved, %d faded",
                    int((carve > 0).sum()), int(moved.sum()), faded)
        if moved.any() or faded:
            _, depth0, alpha0 = _render_np(g0, camera, bg)
            recarved = view_trust(depth0, alpha0)
            trust = trust._replace(weight=recarved.weight, object_mask=recarved.object_mask)
            carve = carve * (alpha0 > EMPTY_ALPHA)
    # After a re-lift only what the photo put in moves (and what grew): fitting the Gaussians kept from
    # earlier versions to the photo as well cost held-out views 0.4-0.5 dB (checker box), measured in .relift.
    movable = None
    if added_by_relift:  # the kept ones come first, then the lifted ones, then any grown ones
        movable = np.arange(g0.num_gaussians) >= kept_by_relift
    g, share, seen = _fuse_round(g0, camera, target, trust, conf, opts, bg, depth0, alpha0, ablation, terms, carve,
                                 movable)
    rgb1, _, alpha1 = _render_np(g, camera, bg)
    if carve is not None:
        on = carve > 0
        logger.debug("carve: alpha on carved pixels %.3f -> %.3f", float(alpha0[on].mean()), float(alpha1[on].mean()))
    after = weighted_mae(rgb1, target, trust.weight)
    gained = (share * seen).cpu().numpy() if ablation.confidence_accumulation else 0.0
    new_conf = (conf + gained).astype(np.float32)
    report = RefineReport(
        trust.accepted_fraction, before, after, score, note, False, opts.steps, float(new_conf.mean()),
        replaced, added_by_relift,
    )
    logger.info(
        "MVCRM round: accepted %.3f, error %.4f -> %.4f, mean confidence %.3f",
        report.accepted_fraction, before, after, report.mean_confidence,
    )
    return RefineResult(from_tensors(g), new_conf, report)


def _observed(trust: Trust, alpha: np.ndarray) -> Trust:
    """The trust of a real photo (``options.observed``): the rendered alpha, geometric trust 1 everywhere."""
    weight = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    return trust._replace(weight=weight, geometric=np.ones_like(weight))


def _first_render(
    g: GaussianTensors,
    camera: Camera,
    view: np.ndarray,
    view_depth: np.ndarray | None,
    background: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Tensor]:
    """Render over black, pick the background, composite: (rgb, depth, alpha, background [3])."""
    black = torch.zeros(3, dtype=torch.float32, device=g.device)
    rgb, depth, alpha = _render_np(g, camera, black)
    bg = estimate_background(view, alpha, view_depth) if background is None else _background(background)
    rgb = rgb + (1.0 - alpha[..., None]) * np.asarray(bg, np.float32)  # [H, W, 3], rasterize's compositing
    return rgb, depth, alpha, torch.tensor(bg, dtype=torch.float32, device=g.device)


def _fuse_round(
    g0: GaussianTensors,
    camera: Camera,
    target: np.ndarray,
    trust: Trust,
    conf: np.ndarray,
    opts: RefineOptions,
    bg: Tensor,
    depth0: np.ndarray,
    alpha0: np.ndarray,
    ablation: Ablation = FULL_MVCRM,
    trusted: tuple[TrustedTerm, ...] = (),
    carve: np.ndarray | None = None,
    movable: np.ndarray | None = None,
) -> tuple[GaussianTensors, Tensor, Tensor]:
    """Footprints, anchor, normal terms and the fusion itself: (result, trusted share [N], seen [N]).

    ``carve`` [H, W]: the view's background pixels that pull the rendered alpha down
    (:func:`carve_weights`); a Gaussian's share counts them like trusted pixels, so the Gaussians
    that cover them move. ``movable`` [N] bool: only these take steps (None: all)."""
    dev = g0.device
    weight = torch.as_tensor(trust.weight, device=dev)  # [H, W]
    carve_t = None if carve is None else torch.as_tensor(carve, device=dev)
    cov, tru = footprints(g0, camera, weight if carve_t is None else (weight + carve_t).clamp(max=1.0))  # [N], [N]
    share = torch.where(cov > 1e-8, tru / cov.clamp(min=1e-8), 0.0).clamp(0.0, 1.0)  # [N]
    seen = observation_strength(cov)  # [N]
    step_scale = share * observation_strength(cov, STEP_FOOTPRINT) if ablation.footprint_weighting else share
    if movable is not None:
        step_scale = step_scale * torch.as_tensor(movable, dtype=step_scale.dtype, device=dev)
    anchor_weight = opts.anchor_weight if ablation.anchor else 0.0
    normals = _normal_terms(g0, camera, depth0, alpha0, share, opts) if ablation.normal_smoothing else None
    problem = FusionProblem(
        camera=camera,
        view=torch.as_tensor(target, device=dev),
        pixel_weight=weight,
        normaliser=float(max(1, int(trust.object_mask.sum()))),
        step_scale=step_scale,
        anchor=anchor_weight * torch.as_tensor(conf, device=dev) * cov,
        background=bg,
        normals=normals,
        trusted=trusted,
        carve=carve_t,
    )
    return fuse(g0, problem, opts.steps, opts.learning_rate), share, seen


def naive_fuse(
    splat: Splat,
    view: np.ndarray,
    camera: Camera,
    steps: int = 200,
    learning_rate: float | None = None,
    *,
    background: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> Splat:
    """Baseline without MVCRM: uniform pixel weights, no anchor, no normal term, same optimiser."""
    lr = DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
    opts = RefineOptions(steps=steps, learning_rate=lr)  # validates both
    splat = _check_splat(splat)
    target = _check_view(view, camera)
    g0 = to_tensors(splat, device)
    _, _, _, bg = _first_render(g0, camera, target, None, background)
    n = g0.num_gaussians
    problem = FusionProblem(
        camera=camera,
        view=torch.as_tensor(target, device=device),
        pixel_weight=torch.ones(camera.height, camera.width, device=device),
        normaliser=float(camera.height * camera.width),
        step_scale=torch.ones(n, device=device),
        anchor=torch.zeros(n, device=device),
        background=bg,
        normals=None,
    )
    return from_tensors(fuse(g0, problem, opts.steps, opts.learning_rate))


__all__ = ["CLIP_SKIPPED_NOTE", "estimate_background", "footprints", "naive_fuse", "observation_strength", "refine"]
