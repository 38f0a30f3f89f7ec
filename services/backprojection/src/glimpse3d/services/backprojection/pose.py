"""Pose refinement: where was an extra photo of the object taken from?

An extra photo (RGB + its matte) is placed on the orbit around the current splat by gradient descent
through the differentiable rasterizer. The pose is ``(azimuth, elevation, roll, distance, look-at
offset)`` in the conventions of :func:`glimpse3d.core.cameras.orbit_camera` (the roll turns the
image about the optical axis). Gradients reach the pose without a tensor camera: the splat is moved
into the candidate camera's frame (means ``R m + t``, orientations ``q_R * q``) and rendered by
:func:`glimpse3d.core.render.rasterize` through a camera at the origin, which is the same image.

Loss: ``1 - soft IoU`` of the rendered alpha against the matte, plus ``PHOTOMETRIC_WEIGHT`` times the
mean absolute colour error inside the matte (the photo's own background behind the render). Coarse to
fine: ``LEVELS`` renders from a 32-pixel, blurred image (a wide basin) up to the working size.

Start: with a hint, a grid of poses within ``HINT_SEARCH_DEG`` of it; without, ``SEARCH_AZIMUTHS`` x
``SEARCH_ELEVATIONS`` over the whole orbit; each scored by silhouette IoU at 32 pixels, the best
``CANDIDATES`` refined at the coarsest level and the best of those refined to the end. A photo whose
final silhouette IoU stays under ``MIN_POSE_IOU`` (another object, a view the splat cannot explain), whose
pose searched from a hint ends on the edge of the hint's window (``HINT_EDGE_DEG``: the best fit lies
beyond it), or whose matte is empty is refused with :class:`InvalidInput` naming ``field``. Against a
first version's guessed back these checks cannot tell round objects apart: ``python -m glimpse3d.research
identity`` measures how often they accept another object's photo (docs/extra-photos.md).

Distance calibration: a splat's alpha > 0.5 silhouette is usually larger than the object's (Gaussians
reach past the surface at the rim, and the rasterizer's low-pass adds to it), so the pose that best
matches the matte stands back from the object (4-6 % of the distance at 96 px). Where a view's camera
is known (the input photo, :class:`KnownView`), :func:`silhouette_scale` measures how much larger the
splat's silhouette is than its matte, at the pixel size of the last level; the found distance is
divided by its square root (area goes as 1 / distance^2), keeping the angles and the look-at point.
Matching against a matte widened by the measured rim instead was tried: it fixed the distance as well
but moved the elevation of round objects by 3-5 degrees (the rim is not the same all round).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from glimpse3d.core import convert
from glimpse3d.core.cameras import Camera, intrinsics_from_fov
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.feedback import background_colour
from glimpse3d.core.images import resize_longest
from glimpse3d.core.render import GaussianTensors, quat_to_rotmat, rasterize, to_tensors
from glimpse3d.core.splat import Splat
from glimpse3d.services.backprojection.relift import check_photo_cameras

logger = logging.getLogger(__name__)

MIN_MATTE_FRACTION = 0.005  # a matte covering less of the photo than this shows no object
# Inside the matte, a photo whose colours vary less than this (standard deviation, the largest channel)
# and whose median differs from the background by less than this shows no object: a blank image, for
# which the matting service falls back to a centred ellipse that any round splat would match.
MIN_CONTRAST = 0.03
MIN_POSE_IOU = 0.9  # final silhouette IoU (alpha > 0.5 vs matte > 0.5) below which the photo is refused
PHOTOMETRIC_WEIGHT = 0.5
ROLL_PRIOR = 0.05  # pull of the roll towards 0 (radians^-2), photos are usually held upright
TARGET_PRIOR = 1.0  # pull of the look-at offset towards the object's centre (world units^-2)
SEARCH_SIDE = 32
SEARCH_AZIMUTHS = 12
SEARCH_ELEVATIONS = (-15.0, 10.0, 35.0)
HINT_SEARCH_DEG = 45.0  # with a hint, the pose stays within this of its azimuth (and half of it of its elevation)
HINT_STEP_DEG = 15.0
# A pose searched from a hint that ends this close to the window's azimuth edge did not find a minimum near
# the hint: the best fit lies beyond the window, so the hint is wrong or the photo shows another object, and
# the photo is refused. Against first versions (research identity, docs/extra-photos.md) this refused 12 of
# 27 other objects' photos that the outline check accepted, and none of the ten objects' own.
HINT_EDGE_DEG = 1.0
# With a hint, a view in which less than this share of the rendered silhouette comes from what a photo
# has shown (the rest is a guess, e.g. the lift's back layer) keeps the hint's angles (see find_pose).
MIN_OBSERVED_SHARE = 0.5
HINT_DEFAULT_ELEVATION_DEG = 15.0  # where a hint without an elevation is looked at from, for that share
# ... unless the pose searched as usual explains the photo clearly better: an outline IoU higher by this
# much, or a colour error under 1 / HINT_MAX_ERROR_RATIO of the hint's. Measured (docs/extra-photos.md):
# true-shape splats, 30 degrees off, IoU +0.080..+0.215 and error ratio 2.4..8.6; the coarse splat's back,
# 20 degrees off, IoU -0.007..+0.036 and ratio 1.03..1.68.
HINT_MAX_IOU_GAIN = 0.05
HINT_MAX_ERROR_RATIO = 2.0
CANDIDATES = 3
MAX_ELEVATION_DEG = 80.0
# Elevations searched without an elevation hint: photos are taken from about level to well above.
ELEVATION_RANGE_DEG = (-30.0, 60.0)
# (longest side, blur sigma in pixels, Adam steps); the last level runs at min(side, the photo's).
LEVELS = ((32, 1.5, 25), (64, 0.75, 30), (128, 0.0, 30))
MAX_SILHOUETTE_SCALE = 1.5  # silhouette_scale's bound, either way (a factor of 1.22 in distance)
# Adam steps per parameter: angles in radians, log-distance, look-at offset in world units.
_LR = {"angles": 0.03, "log_distance": 0.01, "target": 0.01}


@dataclass(frozen=True)
class PoseHint:
    """A rough position on the orbit (degrees); an elevation of None is searched."""

    azimuth_deg: float
    elevation_deg: float | None = None

    def __post_init__(self) -> None:
        for name in ("azimuth_deg", "elevation_deg"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                raise InvalidInput(f"hint {name} must be a finite number, got {v!r}", field=f"hint.{name}")
        if self.elevation_deg is not None and abs(self.elevation_deg) > MAX_ELEVATION_DEG:
            raise InvalidInput(f"hint elevation_deg must be in [-{MAX_ELEVATION_DEG:g}, {MAX_ELEVATION_DEG:g}], got "
                               f"{self.elevation_deg}", field="hint.elevation_deg")


@dataclass(frozen=True)
class OrbitPose:
    """A camera looking at ``target`` from ``distance`` at (azimuth, elevation), turned by ``roll``."""

    azimuth_deg: float
    elevation_deg: float
    roll_deg: float = 0.0
    distance: float = convert.DEFAULT_ORBIT_RADIUS
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def camera(self, width: int, height: int, fov_y_deg: float = convert.DEFAULT_FOV_Y_DEG) -> Camera:
        fx, fy, cx, cy = intrinsics_from_fov(fov_y_deg, width, height)
        w2c = _world_to_camera(_params(self, torch.device("cpu"), torch.float64)).detach().numpy()
        return Camera(fx, fy, cx, cy, width, height, w2c)


@dataclass(frozen=True)
class KnownView:
    """A view of the object whose camera is known (the input photo): ``matte`` [H, W] (> 0.5 on the object)
    at ``camera`` (the same size), for :func:`silhouette_scale`."""

    camera: Camera
    matte: np.ndarray


@dataclass(frozen=True)
class PoseResult:
    pose: OrbitPose
    camera: Camera  # at the photo's size
    iou: float  # silhouette IoU at the working size
    photometric_error: float  # mean absolute colour error inside the matte, in [0, 1]
    hint_kept: bool = False  # the view shows a side no photo has shown: the hint's angles were kept


# ---------------------------------------------------------------------------- pose <-> tensors


def _params(pose: OrbitPose, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """Leaf tensors of a pose: angles (radians), log-distance, and the look-at offset as its components
    along the orbit's right and up axes (the component along the line of sight is the distance's)."""
    angles = torch.tensor([math.radians(pose.azimuth_deg), math.radians(pose.elevation_deg),
                           math.radians(pose.roll_deg)], device=device, dtype=dtype)
    right, up = _orbit_axes(angles)
    target = torch.tensor(pose.target, device=device, dtype=dtype)
    return {"angles": angles, "log_distance": torch.tensor([math.log(pose.distance)], device=device, dtype=dtype),
            "target": torch.stack([target @ right, target @ up])}


def _orbit_axes(angles: Tensor) -> tuple[Tensor, Tensor]:
    """World right and up axes [3] of an orbit camera at (azimuth, elevation) before its roll."""
    az, el = angles[0], angles[1]
    zero = torch.zeros_like(az)
    right = torch.stack([torch.cos(az), zero, -torch.sin(az)])
    up = torch.stack([-torch.sin(el) * torch.sin(az), torch.cos(el), -torch.sin(el) * torch.cos(az)])
    return right, up


def _target(p: dict[str, Tensor]) -> Tensor:
    right, up = _orbit_axes(p["angles"])
    return p["target"][0] * right + p["target"][1] * up


def _pose(p: dict[str, Tensor]) -> OrbitPose:
    az, el, roll = (math.degrees(float(v)) for v in p["angles"])
    return OrbitPose(az % 360.0, el, (roll + 180.0) % 360.0 - 180.0, math.exp(float(p["log_distance"][0])),
                     tuple(float(v) for v in _target(p)))  # type: ignore[arg-type]


def _quat(axis: int, angle: Tensor) -> Tensor:
    """(w, x, y, z) of a rotation by ``angle`` about world axis ``axis`` (0 x, 1 y, 2 z)."""
    half = 0.5 * angle
    parts = [torch.cos(half), *(torch.sin(half) if k == axis else torch.zeros_like(half) for k in range(3))]
    return torch.stack(parts)


def _qmul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of (w, x, y, z) quaternions, broadcast over leading dimensions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def _rotation_quat(p: dict[str, Tensor]) -> Tensor:
    """World-to-camera rotation as a quaternion: roll about the optical axis after the orbit's look-at
    rotation, which is a half turn about x (OpenCV axes, azimuth 0) after the elevation and azimuth."""
    az, el, roll = p["angles"].unbind()
    flip = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=az.dtype, device=az.device)
    q = _qmul(_quat(2, roll), flip)
    q = _qmul(q, _quat(0, el))
    return _qmul(q, _quat(1, -az))


def _world_to_camera(p: dict[str, Tensor]) -> Tensor:
    """[4, 4] world-to-camera matrix of the pose parameters (differentiable)."""
    az, el, _ = p["angles"].unbind()
    direction = torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)])
    eye = _target(p) + torch.exp(p["log_distance"][0]) * direction
    rot = quat_to_rotmat(_rotation_quat(p)[None])[0]
    top = torch.cat([rot, (-rot @ eye)[:, None]], dim=1)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=top.dtype, device=top.device)
    return torch.cat([top, bottom])


def _in_camera_frame(g: GaussianTensors, p: dict[str, Tensor]) -> GaussianTensors:
    """The Gaussians moved into the pose's camera frame, so a camera at the origin sees what the pose sees."""
    w2c = _world_to_camera(p)
    means = g.means @ w2c[:3, :3].T + w2c[:3, 3]
    quats = _qmul(_rotation_quat(p)[None], g.quats)
    return GaussianTensors(means, quats, g.log_scales, g.opacity_logits, g.sh)


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True, eq=False)
class _Level:
    camera: Camera  # at the origin, the level's size
    rgb: Tensor  # [h, w, 3]
    matte: Tensor  # [h, w]
    blur: float


def _blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [h, w] or [h, w, C] (edges replicated)."""
    if sigma <= 0:
        return img
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    chw = (img[None] if img.ndim == 2 else img.permute(2, 0, 1))[None]  # [1, C, h, w]
    c = chw.shape[1]
    pad = torch.nn.functional.pad(chw, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0, 0] if img.ndim == 2 else out[0].permute(1, 2, 0)


def _level(rgb: np.ndarray, matte: np.ndarray, side: int, blur: float, fov_y_deg: float) -> _Level:
    small_rgb = resize_longest(rgb, side) if max(rgb.shape[:2]) > side else rgb
    small_matte = resize_longest(matte, side) if max(matte.shape) > side else matte
    h, w = small_matte.shape
    fx, fy, cx, cy = intrinsics_from_fov(fov_y_deg, w, h)
    return _Level(Camera(fx, fy, cx, cy, w, h), torch.as_tensor(small_rgb, dtype=torch.float32),
                  torch.as_tensor(small_matte, dtype=torch.float32), blur)


def _known_matte(matte: np.ndarray, camera: Camera) -> np.ndarray:
    """``matte`` as float32, InvalidInput (field ``known_mask``) unless it is [H, W] of ``camera``'s size."""
    m = np.asarray(matte, dtype=np.float32)
    if m.shape != (camera.height, camera.width):
        raise InvalidInput(f"the known view's matte has shape {list(m.shape)} but its camera is "
                           f"{camera.width}x{camera.height}", field="known_mask")
    return m


@torch.no_grad()
def silhouette_scale(splat: Splat, camera: Camera, matte: np.ndarray) -> float:
    """Area of the splat's alpha > 0.5 silhouette at ``camera`` over the area of ``matte`` [H, W] (> 0.5,
    the camera's size), within [1 / MAX_SILHOUETTE_SCALE, MAX_SILHOUETTE_SCALE]: how much larger the splat
    looks than the object, measured where the camera is known."""
    m = _known_matte(matte, camera) > 0.5
    if not m.any():
        raise InvalidInput("the known view's matte is empty", field="known_mask")
    area = float((rasterize(splat, camera).alpha.numpy() > 0.5).sum())
    return float(np.clip(area / float(m.sum()), 1.0 / MAX_SILHOUETTE_SCALE, MAX_SILHOUETTE_SCALE))


def _usable(known: KnownView | None) -> KnownView | None:
    """``known`` with its matte checked: InvalidInput (field ``known_mask``) when its size is not the
    camera's; None (no calibration, logged) when it is empty or covers the whole image."""
    if known is None:
        return None
    if not isinstance(known, KnownView):
        raise InvalidInput(f"known must be a KnownView, got {type(known).__name__}", field="known_mask")
    m = _known_matte(known.matte, known.camera)
    inside = m > 0.5
    if not inside.any() or inside.all():
        logger.warning("the known view's matte is empty or covers the whole image: the distance is not calibrated")
        return None
    return KnownView(known.camera, m)


def _known_scale(splat: Splat, known: KnownView, level: Camera) -> float:
    """:func:`silhouette_scale` of ``known`` rendered at the pixel size of ``level`` (the same focal length in
    pixels), where the pose was matched: the excess is partly a width in pixels (the low-pass), partly in
    the world (Gaussians past the surface), so it is measured at the resolution it was made at. 1 when
    the known matte vanishes at that size."""
    kh, kw = known.matte.shape
    side = max(1, round(max(kh, kw) * level.fy / known.camera.fy))
    matte = resize_longest(known.matte, side) if side != max(kh, kw) else known.matte
    inside = matte > 0.5
    if not inside.any() or inside.all():
        return 1.0
    return silhouette_scale(splat, known.camera.with_size(matte.shape[1], matte.shape[0]), matte)


def _render(g: GaussianTensors, p: dict[str, Tensor], level: _Level, bg: Tensor) -> tuple[Tensor, Tensor]:
    out = rasterize(_in_camera_frame(g, p), level.camera, background=bg, sh_degree=0)
    return _blur(out.rgb, level.blur), _blur(out.alpha, level.blur)


def _loss(g: GaussianTensors, p: dict[str, Tensor], level: _Level, bg: Tensor) -> Tensor:
    rgb, alpha = _render(g, p, level, bg)
    matte = _blur(level.matte, level.blur)
    inter = (alpha * matte).sum()
    soft_iou = inter / (alpha.sum() + matte.sum() - inter).clamp(min=1e-6)
    target = _blur(level.rgb, level.blur)
    photo = (matte[..., None] * (rgb - target).abs()).sum() / (3.0 * matte.sum().clamp(min=1e-6))
    roll = p["angles"][2]
    prior = ROLL_PRIOR * roll * roll + TARGET_PRIOR * p["target"].square().sum()
    return 1.0 - soft_iou + PHOTOMETRIC_WEIGHT * photo + prior


@torch.no_grad()
def _scores(g: GaussianTensors, p: dict[str, Tensor], level: _Level, bg: Tensor) -> tuple[float, float]:
    """(silhouette IoU, mean absolute colour error inside the matte) at the level's size, unblurred."""
    out = rasterize(_in_camera_frame(g, p), level.camera, background=bg, sh_degree=0)
    a, m = out.alpha > 0.5, level.matte > 0.5
    iou = float((a & m).sum()) / max(1, int((a | m).sum()))
    inside = level.matte[..., None] * (out.rgb - level.rgb).abs()
    err = float(inside.sum() / (3.0 * level.matte.sum().clamp(min=1e-6)))
    return iou, err


@dataclass(frozen=True)
class _Window:
    """Where the pose may go, in radians: azimuth within ``half_azimuth`` of ``azimuth`` (None: anywhere),
    elevation in [``low``, ``high``]."""

    azimuth: float | None
    half_azimuth: float
    low: float
    high: float

    @classmethod
    def of(cls, hint: PoseHint | None) -> _Window:
        if hint is not None and hint.elevation_deg is not None:
            lo, hi = hint.elevation_deg - 0.5 * HINT_SEARCH_DEG, hint.elevation_deg + 0.5 * HINT_SEARCH_DEG
        else:
            lo, hi = ELEVATION_RANGE_DEG
        lo, hi = max(lo, -MAX_ELEVATION_DEG), min(hi, MAX_ELEVATION_DEG)
        az = None if hint is None else math.radians(hint.azimuth_deg)
        return cls(az, math.radians(HINT_SEARCH_DEG), math.radians(lo), math.radians(hi))

    @torch.no_grad()
    def clamp(self, angles: Tensor) -> None:
        angles[1].clamp_(self.low, self.high)
        if self.azimuth is not None:
            off = torch.remainder(angles[0] - self.azimuth + math.pi, 2 * math.pi) - math.pi
            angles[0].copy_(self.azimuth + off.clamp(-self.half_azimuth, self.half_azimuth))


@torch.no_grad()
def _aligned(g: GaussianTensors, p: dict[str, Tensor], level: _Level, bg: Tensor) -> dict[str, Tensor]:
    """``p`` with the distance scaled so the rendered silhouette's area matches the matte's, and the look-at
    offset moved so their centroids meet: a search start judged by its shape, not its framing."""
    alpha = rasterize(_in_camera_frame(g, p), level.camera, background=bg, sh_degree=0).alpha
    area, target_area = float(alpha.sum()), float(level.matte.sum())
    if area < 1.0:
        return p
    h, w = alpha.shape
    ys = torch.arange(h, dtype=alpha.dtype) + 0.5
    xs = torch.arange(w, dtype=alpha.dtype) + 0.5
    shift_px = [float((level.matte.sum(0) @ xs) / target_area - (alpha.sum(0) @ xs) / area),
                float((level.matte.sum(1) @ ys) / target_area - (alpha.sum(1) @ ys) / area)]
    distance = float(torch.exp(p["log_distance"][0])) * math.sqrt(area / target_area)
    # the splat moves by shift_px: the look-at point by the opposite (image right = orbit right, down = -up)
    per_px = distance / level.camera.fx
    target = p["target"] - torch.tensor([shift_px[0] * per_px, -shift_px[1] * per_px], dtype=p["target"].dtype)
    return {"angles": p["angles"], "log_distance": torch.tensor([math.log(distance)], dtype=p["log_distance"].dtype),
            "target": target}


def _rank_score(g: GaussianTensors, p: dict[str, Tensor], level: _Level, bg: Tensor) -> float:
    iou, err = _scores(g, p, level, bg)
    return iou - PHOTOMETRIC_WEIGHT * err


def _descend(g: GaussianTensors, p: dict[str, Tensor], level: _Level, bg: Tensor, steps: int,
             window: _Window) -> dict[str, Tensor]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
    opt = torch.optim.Adam([{"params": [t], "lr": _LR[k]} for k, t in leaves.items()])
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            _loss(g, leaves, level, bg).backward()
        opt.step()
        window.clamp(leaves["angles"])
    return {k: v.detach() for k, v in leaves.items()}


# ---------------------------------------------------------------------------- public API


def _check_inputs(image: object, matte: object, field: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] not in (3, 4):
        got = list(image.shape) if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"{field} must be an RGB image [H, W, 3], got {got}", field=field)
    if image.dtype == np.uint8:
        rgb = image[..., :3].astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating) and np.isfinite(image).all():
        rgb = np.clip(image[..., :3].astype(np.float32), 0.0, 1.0)
    else:
        raise InvalidInput(f"{field} must be uint8, or finite floats in [0, 1]", field=field)
    if not isinstance(matte, np.ndarray) or matte.shape != rgb.shape[:2] or not np.issubdtype(matte.dtype, np.number):
        got = list(matte.shape) if isinstance(matte, np.ndarray) else type(matte).__name__
        raise InvalidInput(f"{field} matte must be [H, W] = {list(rgb.shape[:2])}, got {got}", field=field)
    m = np.clip(np.nan_to_num(matte.astype(np.float32)), 0.0, 1.0)
    inside = m > 0.5
    if float(inside.mean()) < MIN_MATTE_FRACTION:
        raise InvalidInput(f"{field} shows no object: its matte covers {float(inside.mean()):.2%} of the image "
                           f"(at least {MIN_MATTE_FRACTION:.1%} needed)", field=field)
    spread = float(rgb[inside].std(axis=0).max())
    background = np.asarray(background_colour(rgb, m), np.float32)
    apart = float(np.abs(np.median(rgb[inside], axis=0) - background).max())
    if max(spread, apart) < MIN_CONTRAST:
        raise InvalidInput(f"{field} shows no object: the image is uniform (colour spread {spread:.3f}, "
                           f"{apart:.3f} from its background; at least {MIN_CONTRAST} needed)", field=field)
    return rgb, m


def _observed_share(g: GaussianTensors, hint: PoseHint, photo_cameras: Sequence[Camera], level: _Level,
                    bg: Tensor) -> float:
    """The share of the splat's silhouette at the hint's angles (its elevation, or 15 degrees) that comes from
    Gaussians some photo shows (:func:`.mvcrm.observed_by_photos` from ``photo_cameras``)."""
    from glimpse3d.services.backprojection.mvcrm import observed_by_photos
    from glimpse3d.services.backprojection.relift import alpha_shares

    seen = observed_by_photos(g, photo_cameras)
    elevation = hint.elevation_deg if hint.elevation_deg is not None else HINT_DEFAULT_ELEVATION_DEG
    p = _aligned(g, _params(OrbitPose(hint.azimuth_deg, elevation), g.device, g.dtype), level, bg)
    with torch.no_grad():
        moved = _in_camera_frame(g, p)
    alpha, share = alpha_shares(moved, level.camera, seen)
    return float((alpha * share).sum() / max(float(alpha.sum()), 1e-6))


def _search(g: GaussianTensors, starts: list[OrbitPose], window: _Window, levels: list[_Level], search: _Level,
            bg: Tensor, distance: float) -> dict[str, Tensor]:
    """The best pose from ``starts``: each aligned and ranked at the search size, the best ``CANDIDATES``
    refined at the first level, the best of those through every level, within ``window``."""
    dev, dt = g.device, g.dtype
    params = [_params(OrbitPose(s.azimuth_deg, s.elevation_deg, distance=distance), dev, dt) for s in starts]
    aligned = [_aligned(g, p, search, bg) for p in params]
    ranked = sorted(aligned, key=lambda p: -_rank_score(g, p, search, bg))[:CANDIDATES]
    refined = [_descend(g, p, levels[0], bg, LEVELS[0][2], window) for p in ranked]
    with torch.no_grad():
        best = min(refined, key=lambda p: float(_loss(g, p, levels[0], bg)))
    for level, (_, _, steps) in zip(levels[1:], LEVELS[1:], strict=True):
        best = _descend(g, best, level, bg, steps, window)
    return best


def _hint_pose(g: GaussianTensors, hint: PoseHint, window: _Window, levels: list[_Level], search: _Level,
               bg: Tensor, distance: float, known: KnownView | None) -> OrbitPose:
    """The pose at the hint's azimuth (and elevation, when given; else searched within the window), roll and
    look-at offset refined, at the known view's distance from the object (else the distance refined).

    A guessed side's outline does not tell the distance either: the coarse head's back, seen from 15 degrees
    up, fitted 3.6 % too close, and its re-lifted photo gained 2.4 dB instead of 4.3. The photo is taken to
    stand on the known view's orbit, as the hint's angles place it."""
    pinned = replace(window, half_azimuth=0.0)
    if hint.elevation_deg is not None:
        pinned = replace(pinned, low=math.radians(hint.elevation_deg), high=math.radians(hint.elevation_deg))
    starts = [c for c in _starts(hint) if abs((c.azimuth_deg - hint.azimuth_deg + 180.0) % 360.0 - 180.0) < 1e-6
              and (hint.elevation_deg is None or c.elevation_deg == hint.elevation_deg)]
    pose = _pose(_search(g, starts, pinned, levels, search, bg, distance))
    return pose if known is None else replace(pose, distance=float(np.linalg.norm(known.camera.position)))


def _starts(hint: PoseHint | None) -> list[OrbitPose]:
    if hint is None:
        return [OrbitPose(360.0 * k / SEARCH_AZIMUTHS, el) for k in range(SEARCH_AZIMUTHS) for el in SEARCH_ELEVATIONS]
    n = round(HINT_SEARCH_DEG / HINT_STEP_DEG)
    azimuths = [hint.azimuth_deg + HINT_STEP_DEG * k for k in range(-n, n + 1)]
    if hint.elevation_deg is None:
        elevations = list(SEARCH_ELEVATIONS)
    else:
        m = round(0.5 * HINT_SEARCH_DEG / HINT_STEP_DEG)
        elevations = [float(np.clip(hint.elevation_deg + HINT_STEP_DEG * k, -MAX_ELEVATION_DEG, MAX_ELEVATION_DEG))
                      for k in range(-m, m + 1)]
    return [OrbitPose(az % 360.0, el) for az in azimuths for el in elevations]


def find_pose(
    splat: Splat,
    image: np.ndarray,
    matte: np.ndarray,
    hint: PoseHint | None = None,
    *,
    field: str = "photo",
    fov_y_deg: float = convert.DEFAULT_FOV_Y_DEG,
    distance: float = convert.DEFAULT_ORBIT_RADIUS,
    min_iou: float = MIN_POSE_IOU,
    max_side: int = LEVELS[-1][0],
    known: KnownView | None = None,
    photo_cameras: Sequence[Camera] = (),
) -> PoseResult:
    """The camera an extra photo ``image`` [H, W, 3] (its object where ``matte`` [H, W] is 1) was taken
    from, looking at ``splat``; ``hint``: a rough orbit position, None: searched over the whole orbit.
    The photo is assumed to have the input photo's field of view ``fov_y_deg``; ``distance`` is the
    starting orbit radius. ``known``: a view whose camera is known (the input photo); the distance found is
    calibrated by :func:`silhouette_scale` there (a known matte that is empty or covers the whole image
    cannot calibrate and is ignored, with a log line). The IoU and colour error are those of the matched
    pose. Raises :class:`InvalidInput` naming ``field`` for an empty matte or a photo whose best pose
    explains less than ``min_iou`` of its silhouette, and naming ``known_mask`` for a known matte whose
    size is not its camera's.

    ``photo_cameras``: cameras of earlier photos besides ``known``'s. With a hint, when less than
    ``MIN_OBSERVED_SHARE`` of the splat's silhouette at the hint's angles comes from Gaussians a photo
    (``known`` or these) shows, the view looks at a side no photo has shown, whose outline may fit many
    poses (the lift's guessed back). The pose at the hint's azimuth (and elevation, when given), roll and
    look-at refined, standing at ``known``'s distance, is then kept unless it explains the photo's outline
    with IoU under ``min_iou``, or the pose searched as usual explains it clearly better
    (``HINT_MAX_IOU_GAIN``, ``HINT_MAX_ERROR_RATIO``); ``PoseResult.hint_kept`` says which. Measured on
    the coarse splat's back views, 20 degrees off, and on true-shape splats 30 degrees off:
    docs/extra-photos.md."""
    if hint is not None and not isinstance(hint, PoseHint):
        raise InvalidInput(f"hint must be a PoseHint, got {type(hint).__name__}", field=f"{field}.hint")
    rgb, m = _check_inputs(image, matte, field)
    photo_cameras = check_photo_cameras(photo_cameras)
    shown_from = ([known.camera] if isinstance(known, KnownView) else []) + photo_cameras  # before _usable
    known = _usable(known)
    g = to_tensors(splat)
    g = GaussianTensors(g.means.detach(), g.quats.detach(), g.log_scales.detach(), g.opacity_logits.detach(),
                        g.sh.detach())
    bg = torch.tensor(background_colour(rgb, m), dtype=torch.float32)
    levels = [_level(rgb, m, min(side, max_side), blur, fov_y_deg) for side, blur, _ in LEVELS]
    search = _level(rgb, m, SEARCH_SIDE, 0.0, fov_y_deg)
    dev, dt = g.device, g.dtype
    window = _Window.of(hint)
    kept: tuple[OrbitPose, float, float] | None = None  # (pose, IoU, colour error) at the hint's angles
    if hint is not None and shown_from:
        share = _observed_share(g, hint, shown_from, search, bg)
        logger.info("%s: %.0f%% of the splat's outline at the hint comes from what a photo showed", field, 100 * share)
        if share < MIN_OBSERVED_SHARE:
            at_hint = _hint_pose(g, hint, window, levels, search, bg, distance, known)
            kept = (at_hint, *_scores(g, _params(at_hint, dev, dt), levels[-1], bg))
    best = _search(g, _starts(hint), window, levels, search, bg, distance)
    iou, err = _scores(g, best, levels[-1], bg)
    h, w = m.shape
    if kept is not None:
        pose_k, iou_k, err_k = kept
        if iou_k >= min_iou and iou - iou_k < HINT_MAX_IOU_GAIN and err < HINT_MAX_ERROR_RATIO * err_k:
            logger.info("%s: a side no photo has shown, and the pose searched explains it no better (IoU %.3f vs "
                        "%.3f, error %.3f vs %.3f): the hint's angles are kept", field, iou, iou_k, err, err_k)
            return PoseResult(pose_k, pose_k.camera(w, h, fov_y_deg), iou_k, err_k, hint_kept=True)
        logger.info("%s: the pose searched explains the photo better than the hint's (IoU %.3f vs %.3f, error %.3f vs "
                    "%.3f)", field, iou, iou_k, err, err_k)
    pose = _pose(best)
    if hint is not None:  # the window is the hint's
        off = abs((pose.azimuth_deg - hint.azimuth_deg + 180.0) % 360.0 - 180.0)
        if off >= HINT_SEARCH_DEG - HINT_EDGE_DEG:
            raise InvalidInput(
                f"{field}: no camera pose found near the hint (azimuth {hint.azimuth_deg:.0f} degrees): the best fit "
                f"within {HINT_SEARCH_DEG:.0f} degrees of it is at the edge ({pose.azimuth_deg:.0f}, IoU {iou:.2f}), "
                "so the photo fits no pose near the hint; is the hint right, and is it a photo of the same object?",
                field=field)
    if known is not None:
        scale = _known_scale(splat, known, levels[-1].camera)
        logger.info("%s: the splat's silhouette is %.3f times the known view's matte; distance %.3f -> %.3f",
                    field, scale, pose.distance, pose.distance / math.sqrt(scale))
        pose = replace(pose, distance=pose.distance / math.sqrt(scale))
    logger.info("%s posed at azimuth %.1f, elevation %.1f, roll %.1f, distance %.3f: IoU %.3f, error %.3f", field,
                pose.azimuth_deg, pose.elevation_deg, pose.roll_deg, pose.distance, iou, err)
    if iou < min_iou:
        raise InvalidInput(
            f"{field}: no camera pose found: at the best pose (azimuth {pose.azimuth_deg:.0f}, elevation "
            f"{pose.elevation_deg:.0f} degrees) the model covers the photo's object with a silhouette IoU of "
            f"{iou:.2f}, under {min_iou:.2f}; is it a photo of the same object?", field=field)
    return PoseResult(pose, pose.camera(w, h, fov_y_deg), iou, err)


__all__ = ["MIN_POSE_IOU", "KnownView", "OrbitPose", "PoseHint", "PoseResult", "find_pose", "silhouette_scale"]
