"""Re-lift: a real photo of the object replaces the part of the splat that was only guessed.

The coarse splat of one photo closes the object with a guessed far side (the lift backend's back
layer: the front's relief mirrored behind the object's centre, coloured with the front's colours
blurred). A fusion round recolours such a guess and nudges each Gaussian within its own scale, but
it does not reshape it or bring back texture the guess never had: with the ground truth's back view
fused as a real photo, held-out PSNR rose by only 0.5 dB on the research harness's checker box and
1.7 dB on its globe (docs/extra-photos.md). :func:`relift` does for the photo what the lift backend
did for the first one: where the photo shows a part of the splat that no photo has observed, that
part is removed and the photo is lifted in its place, as flat discs on its own depth map, coloured
by the photo (pixels at its outline, blends with the background, take an inner pixel's colour).
:func:`.mvcrm.refine` runs it for ``options.relift`` (the gateway's extra-photo rounds), and its
fusion then fits only the lifted Gaussians (and any grown ones).

- **Guessed**: no other photo of the object shows it, an observation strength under
  :data:`OBSERVED_STRENGTH` from each of their cameras (:func:`.mvcrm.observed_by_photos`: the input
  photo, earlier extra photos). On the globe's first version the input photo shows its front 0.38-0.57
  (10th to 90th percentile) and the closure's back layer and rim walls under 0.01 (90 %). Without any other
  photo's camera, confidence below :data:`GUESSED_CONFIDENCE` stands for it (a photo's round gives what
  it shows its observation strength; but enhancement rounds raise the far side's confidence too).
- **Shown by the photo**: observation strength (:func:`.mvcrm.observation_strength`) at least
  :data:`SHOWN_STRENGTH`. From behind, the globe's back layer scores 0.34 and more (90 %); its rim
  walls, seen edge-on, 0.14 and less (90 %): the walls stay and still bridge front and back.
- **Replaced pixels**: the photo's object pixels (depth > 0) where the removed Gaussians made more
  than half of the rendered alpha, or where the splat left the pixel uncovered (alpha < 0.5).
- **New layer**: at most as many Gaussians as were removed, on a regular grid over those pixels,
  each a disc of 0.6 grid spacings at the photo's depth, facing along the depth map's normal,
  opacity 0.95 (the lift backend's defaults). They start with the confidence
  :data:`LIFTED_CONFIDENCE`, so the fusion's anchor keeps them near where the photo put them.
- **Guesses that stay** (the rim walls between the first photo's front and this photo's side) take
  the colour of the photo near whose visible surface they lie (:func:`recolour_near_photos`).
- **Depth as it comes**: the depth service's depth is camera z in world units (depth.proto), the
  frame the splat is in. It is not aligned to the splat's rendered depth: that depth is the guess
  being replaced, and aligning to it would copy the guess's shape back (tests/unit/test_relift.py).
  Measured on the research harness's ten objects (with an earlier version of this module), the
  photo's depth as it comes and the same aligned to the guess gave the same mean gain (+1.44 /
  +1.43 dB; docs/extra-photos.md).

Nothing is re-lifted (and the round goes on as a plain observed round) when fewer than
:data:`MIN_REPLACED` Gaussians qualify, or when the photo's depth and the splat's disagree by more
than :data:`MAX_DEPTH_RATIO` (medians over the pixels both cover): a depth not in the splat's units.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.lifting import lift_layer, sample_grid
from glimpse3d.core.render import GaussianTensors, rasterize
from glimpse3d.core.splat import SH_C0

logger = logging.getLogger(__name__)

OBSERVED_STRENGTH = 0.1
GUESSED_CONFIDENCE = 0.1
SHOWN_STRENGTH = 0.2
COVERED_ALPHA = 0.5
MIN_REPLACED = 16
MAX_DEPTH_RATIO = 1.5  # the photo's depth against the splat's, medians over the pixels both cover
FOOTPRINT = 0.6  # disc standard deviation in grid spacings (the lift backend's default)
OPACITY = 0.95
RECOLOUR_SIGMA = 0.2  # recolour_near_photos' reach, in splat sizes (measured against 0.1 and 0.4)
RIM_PX = 1  # photo pixels on the object's edge take the nearest inner pixel's colour (1 px: measured against 2-4)
LIFTED_CONFIDENCE = 1.0


@dataclass(frozen=True, eq=False)
class Relifted:
    """The splat with the photo lifted in: ``gaussians`` (kept ones first, in their order, then the new
    ones), ``kept`` [N] bool over the old Gaussians, and the number ``added``."""

    gaussians: GaussianTensors
    kept: np.ndarray
    added: int

    @property
    def removed(self) -> int:
        return int((~self.kept).sum())


def check_photo_cameras(cameras: object) -> list[Camera]:
    """``cameras`` as a list of :class:`Camera` (the other photos' cameras), or InvalidInput naming the
    first that is not one."""
    if isinstance(cameras, Camera) or not isinstance(cameras, Sequence):
        raise InvalidInput(f"photo_cameras must be a sequence of Camera, got {type(cameras).__name__}",
                           field="photo_cameras")
    for i, c in enumerate(cameras):
        if not isinstance(c, Camera):
            raise InvalidInput(f"photo_cameras[{i}] must be a Camera, got {type(c).__name__}",
                               field=f"photo_cameras[{i}]")
    return list(cameras)


def alpha_shares(g: GaussianTensors, camera: Camera, indicator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [H, W], share [H, W] of that alpha made by the Gaussians where ``indicator`` [N] is true)."""
    sh = torch.zeros_like(g.sh)  # [N, K, 3]; band 0 = the indicator as a grey level, higher bands 0
    sh[:, 0, :] = (torch.as_tensor(indicator, dtype=g.sh.dtype, device=g.sh.device)[:, None] - 0.5) / SH_C0
    with torch.no_grad():
        out = rasterize(GaussianTensors(g.means, g.quats, g.log_scales, g.opacity_logits, sh), camera,
                        background=torch.zeros(3, dtype=g.sh.dtype, device=g.sh.device))
    alpha = out.alpha.cpu().numpy().astype(np.float64)
    share = np.where(alpha > 1e-6, out.rgb[..., 0].cpu().numpy() / np.maximum(alpha, 1e-6), 0.0)
    return alpha.astype(np.float32), np.clip(share, 0.0, 1.0).astype(np.float32)


def _inner_colours(photo: np.ndarray, obj: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """[M, 3] the photo's colour at ``pixels`` [M, 2], those within ``RIM_PX`` of the object's edge taking
    the colour of the nearest pixel further in: edge pixels are blends with the background, and a disc
    lifted there shows that blend as a light seam from the side."""
    inner = np.asarray(ndimage.binary_erosion(obj, iterations=RIM_PX), dtype=bool)
    if not inner.any():
        return np.clip(photo[pixels[:, 0], pixels[:, 1]], 0.0, 1.0).astype(np.float32)
    out = ndimage.distance_transform_edt(~inner, return_distances=False, return_indices=True)
    nearest = np.asarray(out)  # [2, H, W] (row, col) of the nearest inner pixel
    at = (nearest[0][pixels[:, 0], pixels[:, 1]], nearest[1][pixels[:, 0], pixels[:, 1]])
    return np.clip(photo[at], 0.0, 1.0).astype(np.float32)


def relift(
    g: GaussianTensors,
    guessed: np.ndarray,
    strength: np.ndarray,
    camera: Camera,
    photo: np.ndarray,
    photo_depth: np.ndarray,
    rendered_depth: np.ndarray,
    seed: int = 0,
    others: Sequence[PhotoView] = (),
) -> Relifted | None:
    """Replace the guessed Gaussians ``photo`` [H, W, 3] (float, [0, 1]) shows by the photo lifted on
    its depth ``photo_depth`` [H, W] (camera z in world units, > 0 on the object); ``rendered_depth``
    [H, W] is the splat's at the photo's camera, ``guessed`` [N] bool the Gaussians no other photo
    shows, ``strength`` [N] each Gaussian's observation strength in this one; ``seed`` the sampling
    grid's phase; ``others`` the other photos (the input photo), for :func:`recolour_near_photos`. None
    when nothing qualifies (see the module docstring)."""
    drop = guessed & (strength >= SHOWN_STRENGTH)  # [N]
    if int(drop.sum()) < MIN_REPLACED:
        logger.info("relift: %d guessed Gaussians shown by the photo, fewer than %d; nothing re-lifted",
                    int(drop.sum()), MIN_REPLACED)
        return None
    obj = photo_depth > 0  # [H, W]
    alpha, share = alpha_shares(g, camera, drop)
    covered = obj & (alpha > COVERED_ALPHA) & (rendered_depth > 0)
    if int(covered.sum()) < MIN_REPLACED:
        logger.info("relift: the splat covers %d of the photo's object pixels; nothing re-lifted", int(covered.sum()))
        return None
    ratio = float(np.median(photo_depth[covered]) / np.median(rendered_depth[covered]))
    if not 1.0 / MAX_DEPTH_RATIO <= ratio <= MAX_DEPTH_RATIO:
        logger.info("relift: the photo's depth is %.2f times the splat's; nothing re-lifted", ratio)
        return None
    target = obj & ((alpha < COVERED_ALPHA) | (share > 0.5))  # [H, W]
    if int(target.sum()) < MIN_REPLACED:
        logger.info("relift: %d photo pixels to replace; nothing re-lifted", int(target.sum()))
        return None
    # as many as were removed at most: the splat never grows past its size (nor MAX_GAUSSIANS) here
    pixels, spacing = sample_grid(target, int(drop.sum()), np.random.default_rng(seed))  # [M, 2] (row, col)
    depth = np.where(obj, photo_depth, 0.0).astype(np.float32)
    colours = _inner_colours(photo, obj, pixels)  # [M, 3]
    layer = lift_layer(depth, obj, colours, pixels, FOOTPRINT * spacing, camera)
    if len(layer) == 0:  # the grid missed a thin region: nothing to put in place of what would go
        logger.info("relift: no grid sample fell on the %d photo pixels to replace; nothing re-lifted",
                    int(target.sum()))
        return None
    m, dev, dt = len(layer), g.means.device, g.means.dtype
    sh = torch.zeros((m, g.sh.shape[1], 3), dtype=dt, device=dev)
    sh[:, 0, :] = torch.as_tensor((layer.colors - 0.5) / SH_C0, dtype=dt, device=dev)
    new = GaussianTensors(
        means=torch.as_tensor(layer.means, dtype=dt, device=dev),
        quats=torch.as_tensor(layer.quats, dtype=dt, device=dev),
        log_scales=torch.as_tensor(layer.log_scales, dtype=dt, device=dev),
        opacity_logits=torch.full((m,), float(np.log(OPACITY / (1.0 - OPACITY))), dtype=dt, device=dev),
        sh=sh,
    )
    keep = torch.as_tensor(np.flatnonzero(~drop), device=dev)
    old = (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)
    add = (new.means, new.quats, new.log_scales, new.opacity_logits, new.sh)
    out = GaussianTensors(*(torch.cat([a.detach()[keep], b]) for a, b in zip(old, add, strict=True)))
    rest = np.flatnonzero(guessed[~drop])  # positions in ``out`` of the guessed Gaussians that stay
    out = recolour_near_photos(out, rest, [PhotoView(photo, obj.astype(np.float32), camera), *others])
    logger.info("relift: %d guessed Gaussians replaced by %d lifted from the photo (%d pixels, depth ratio %.3f); "
                "%d others recoloured near the photos", int(drop.sum()), m, int(target.sum()), ratio, len(rest))
    return Relifted(out, ~drop, m)


@dataclass(frozen=True, eq=False)
class PhotoView:
    """A photo of the object: ``image`` [H, W, 3] float in [0, 1], ``mask`` [H, W] (>= 0.5 on the object),
    seen from ``camera``."""

    image: np.ndarray
    mask: np.ndarray
    camera: Camera


def recolour_near_photos(g: GaussianTensors, index: np.ndarray, photos: Sequence[PhotoView]) -> GaussianTensors:
    """``g`` with the Gaussians at ``index`` (guesses that stay: the rim walls between the first photo's
    front and the new photo's side) recoloured towards the photos near whose visible surface they lie.

    Each photo's weight is ``exp(-(d / sigma)^2)``, ``d`` how far behind the splat's surface in that photo
    (its rendered depth at the Gaussian's pixel) the Gaussian lies, ``sigma`` ``RECOLOUR_SIGMA`` times the
    splat's size; the colour is the photo's at the nearest pixel at least ``RIM_PX`` inside its object.
    What the weights leave (1 - their sum, when positive) keeps the old colour. A wall's end at the first
    photo's rim takes that photo's colours, its end at the new photo's rim the new photo's."""
    if index.size == 0 or not photos:
        return g
    means = g.means[index].detach().cpu().numpy().astype(np.float64)  # [M, 3]
    lo, hi = np.percentile(g.means.detach().cpu().numpy(), [1.0, 99.0], axis=0)
    sigma = RECOLOUR_SIGMA * max(float(np.max(hi - lo)), 1e-6)
    old = g.sh[index, 0, :].detach().cpu().numpy().astype(np.float64) * SH_C0 + 0.5  # [M, 3]
    num, den = np.zeros_like(old), np.zeros(len(index))
    for photo in photos:
        cam = photo.camera
        with torch.no_grad():
            surface = rasterize(g, cam, background=torch.zeros(3, dtype=g.sh.dtype, device=g.sh.device))
        depth = surface.depth.cpu().numpy()
        uv, z = cam.project(means)  # [M, 2] (u, v) px, [M] camera z
        uv = np.nan_to_num(uv, nan=-1.0, posinf=-1.0, neginf=-1.0)  # a point in the camera's plane: outside
        cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (z > 0) & (cols >= 0) & (cols < cam.width) & (rows >= 0) & (rows < cam.height)
        cols, rows = np.clip(cols, 0, cam.width - 1), np.clip(rows, 0, cam.height - 1)
        obj = photo.mask >= 0.5
        on = inside & obj[rows, cols] & (depth[rows, cols] > 0)
        behind = np.clip(z - depth[rows, cols], 0.0, None)
        w = np.where(on, np.exp(-np.square(behind / sigma)), 0.0)  # [M]
        num += w[:, None] * _inner_colours(photo.image, obj, np.stack([rows, cols], axis=1))
        den += w
    keep = np.clip(1.0 - den, 0.0, None)
    colour = (num + keep[:, None] * old) / np.maximum(den + keep, 1e-12)[:, None]
    sh = g.sh.detach().clone()
    sh[index, 0, :] = torch.as_tensor((colour - 0.5) / SH_C0, dtype=sh.dtype, device=sh.device)
    return GaussianTensors(g.means, g.quats, g.log_scales, g.opacity_logits, sh)


__all__ = [
    "GUESSED_CONFIDENCE",
    "LIFTED_CONFIDENCE",
    "OBSERVED_STRENGTH",
    "SHOWN_STRENGTH",
    "PhotoView",
    "Relifted",
    "alpha_shares",
    "check_photo_cameras",
    "recolour_near_photos",
    "relift",
]
