"""The weight-free ``lift`` reconstruction backend.

One photo + depth + mask -> a closed coarse splat in seconds on a CPU:

1. **Front layer.** The masked pixels are sampled on a regular grid whose spacing is chosen so that
   front + back stay within ``max_gaussians``. Each sample becomes a flat Gaussian at its depth
   (unprojected with the camera), oriented by the surface normal of the (smoothed) depth map and
   sized to the pixel footprint at that depth, stretched along the slant so that surfaces seen at a
   grazing angle stay closed. Its colour is the photo's.
2. **Fit.** Colours (SH band 0), opacities and the two in-plane scales (optionally small offsets of
   the means) are fitted by Adam through the differentiable rasterizer against the input view:
   L1 colour loss inside the mask (the render composited over the photo's own background colour,
   so edges blend as in the photo), a weaker L1 term outside it, and an L1 alpha-vs-mask term.
3. **Back layer.** Every front sample is mirrored behind the object along its view ray, at a
   thickness taken from the silhouette's "inflation" (a round profile over the distance to the
   mask edge, so front and back meet at the silhouette and the surface is closed), with the
   fitted colour slightly darkened.

The reported ``input_view_psnr_db`` is the PSNR of the final splat rendered at the input camera
against the photo, over the pixels with mask >= 0.5, at the photo's resolution.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from torch import Tensor

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.render import GaussianTensors, rasterize
from glimpse3d.core.splat import Splat, rgb_to_sh0
from glimpse3d.services.reconstruction.backends import (
    ExtraView,
    ReconstructionResult,
    RenderedImage,
    check_fit_options,
)

logger = logging.getLogger(__name__)

_MIN_COS = 0.125  # in-plane stretch at grazing angles is capped at 1 / _MIN_COS
_THIN = 0.2  # disc thickness relative to the in-plane footprint
_MIN_MASK_PIXELS = 4


@dataclass(frozen=True)
class LiftConfig:
    """Tunables of the lift backend; the defaults keep a 256 px photo at a few seconds on 2 cores."""

    fit_steps: int = 40
    max_gaussians: int = 12_000
    work_max_side: int = 256  # larger photos are downscaled to this for lifting and fitting
    footprint: float = 0.6  # in-plane std dev of a Gaussian, in grid spacings
    opacity: float = 0.95  # initial opacity
    lr_color: float = 0.06  # Adam learning rates (SH band-0 units, logits, log scales, world units)
    lr_opacity: float = 0.15
    lr_scale: float = 0.03
    lr_means: float = 0.0  # > 0 also fits small mean offsets
    max_offset: float = 0.5  # bound on mean offsets, in footprints
    alpha_weight: float = 0.5
    outside_weight: float = 0.3
    back_side: bool = True
    back_darken: float = 0.9
    min_thickness: float = 2.0  # back layer at least this many footprints behind the front


@dataclass(frozen=True, eq=False)
class Layer:
    """Gaussians lifted from image samples; all arrays share the first dimension N."""

    means: np.ndarray  # [N, 3] world
    quats: np.ndarray  # [N, 4] (w, x, y, z)
    log_scales: np.ndarray  # [N, 3]
    colors: np.ndarray  # [N, 3] in [0, 1]
    pixels: np.ndarray  # [N, 2] int (row, col) the sample came from

    def __len__(self) -> int:
        return int(self.means.shape[0])


@dataclass(frozen=True, eq=False)
class Inputs:
    """Validated inputs, float32, at one resolution."""

    image: np.ndarray  # [H, W, 3] in [0, 1]
    depth: np.ndarray  # [H, W], > 0 where valid
    mask: np.ndarray  # [H, W] in [0, 1]
    valid: np.ndarray  # [H, W] bool: mask >= 0.5 and a positive depth
    camera: Camera
    background: np.ndarray  # [3] the photo's background colour


# ----------------------------------------------------------------------------- validation


def as_float_image(image: object, name: str = "image") -> np.ndarray:
    """uint8 or float [H, W, 3|4] (or [H, W] grey) -> float32 [H, W, 3] in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise InvalidInput(f"{name} must be a numpy array, got {type(image).__name__}", field=name)
    arr = image[..., None].repeat(3, axis=-1) if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInput(f"{name} must have shape [H, W, 3] or [H, W, 4], got {list(image.shape)}", field=name)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInput(f"{name} must be uint8 or floating point, got {arr.dtype}", field=name)
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{name} has non-finite values", field=name)
    return np.clip(out, 0.0, 1.0)


def _as_map(value: object, name: str, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"{name} must be a numpy array, got {type(value).__name__}", field=name)
    arr = value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value
    if arr.shape != shape:
        raise InvalidInput(f"{name} must have shape {list(shape)} like the image, got {list(value.shape)}", field=name)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InvalidInput(f"{name} must be numeric, got {arr.dtype}", field=name)
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{name} has non-finite values (NaN or infinity)", field=name)
    return out


def estimate_background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[3] median colour of the confidently-outside pixels (image [H, W, 3], mask [H, W]); white if none."""
    outside = mask < 0.05
    if outside.sum() < 16:
        return np.ones(3, np.float32)
    return np.median(image[outside], axis=0).astype(np.float32)


def prepare_inputs(image: object, depth: object, mask: object, camera: object) -> Inputs:
    """Validate and normalise the request arrays; raises InvalidInput naming the bad field."""
    img = as_float_image(image)
    shape = img.shape[:2]
    if not isinstance(camera, Camera):
        raise InvalidInput(f"camera must be a Camera, got {type(camera).__name__}", field="camera")
    if (camera.height, camera.width) != shape:
        raise InvalidInput(
            f"camera is {camera.width}x{camera.height} but the image is {shape[1]}x{shape[0]}", field="camera"
        )
    z = _as_map(depth, "depth", shape)
    m = (z > 0).astype(np.float32) if mask is None else _as_map(mask, "mask", shape)
    if m.min() < -1e-3 or m.max() > 1 + 1e-3:
        raise InvalidInput(f"mask values must be in [0, 1], got [{m.min():.3g}, {m.max():.3g}]", field="mask")
    m = np.clip(m, 0.0, 1.0)
    valid = (m >= 0.5) & (z > 0)
    if int((m >= 0.5).sum()) < _MIN_MASK_PIXELS:
        raise InvalidInput(f"mask is empty: fewer than {_MIN_MASK_PIXELS} pixels >= 0.5", field="mask")
    if int(valid.sum()) < _MIN_MASK_PIXELS:
        raise InvalidInput("depth is not positive anywhere inside the mask", field="depth")
    return Inputs(img, z, m, valid, camera, estimate_background(img, m))


def downscale(inputs: Inputs, max_side: int) -> Inputs:
    """The same inputs with the longer side at most ``max_side`` (area filter; depth mask-aware)."""
    h, w = inputs.mask.shape
    factor = max(h, w) / max_side
    if factor <= 1.0:
        return inputs
    size = (max(1, round(w / factor)), max(1, round(h / factor)))  # cv2 order: (width, height)
    area = cv2.INTER_AREA
    image = cv2.resize(inputs.image, size, interpolation=area)
    mask = np.clip(cv2.resize(inputs.mask, size, interpolation=area), 0.0, 1.0)
    weight = cv2.resize(inputs.valid.astype(np.float32), size, interpolation=area)
    zsum = cv2.resize(np.where(inputs.valid, inputs.depth, 0.0).astype(np.float32), size, interpolation=area)
    depth = np.where(weight > 1e-3, zsum / np.maximum(weight, 1e-3), 0.0).astype(np.float32)
    valid = (mask >= 0.5) & (depth > 0)
    camera = inputs.camera.with_size(size[0], size[1])
    return Inputs(image, depth, mask, valid, camera, inputs.background)


# ----------------------------------------------------------------------------- geometry


def _smooth_depth(depth: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Mask-aware Gaussian blur of ``depth`` [H, W] over ``valid`` pixels (normalised convolution)."""
    if sigma <= 0:
        return depth
    w = valid.astype(np.float32)
    num = cv2.GaussianBlur(depth * w, (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return np.where(valid, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def _masked_diff(z: np.ndarray, valid: np.ndarray, axis: int) -> np.ndarray:
    """d z / d pixel along ``axis`` [H, W]: central where both neighbours are valid, else one-sided, else 0."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 1)
    zp, vp = np.pad(z, pad), np.pad(valid, pad)
    n = z.shape[axis]
    nxt = np.take(zp, range(2, n + 2), axis=axis), np.take(vp, range(2, n + 2), axis=axis)
    prv = np.take(zp, range(0, n), axis=axis), np.take(vp, range(0, n), axis=axis)
    fwd = np.where(nxt[1], nxt[0] - z, 0.0)
    bwd = np.where(prv[1], z - prv[0], 0.0)
    both = nxt[1] & prv[1]
    return np.where(both, 0.5 * (fwd + bwd), fwd + bwd).astype(np.float32)


def camera_normals(depth: np.ndarray, valid: np.ndarray, camera: Camera) -> np.ndarray:
    """[H, W, 3] unit camera-space surface normals of a z-depth map, facing the camera."""
    rays = camera.pixel_rays().astype(np.float32)  # [H, W, 3] with z = 1
    dzdu = _masked_diff(depth, valid, axis=1)[..., None]  # [H, W, 1]
    dzdv = _masked_diff(depth, valid, axis=0)[..., None]
    z = depth[..., None]
    du = dzdu * rays + z * np.array([1.0 / camera.fx, 0.0, 0.0], np.float32)  # [H, W, 3] dP/du
    dv = dzdv * rays + z * np.array([0.0, 1.0 / camera.fy, 0.0], np.float32)  # [H, W, 3] dP/dv
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), -rays / np.linalg.norm(rays, axis=-1, keepdims=True))
    flip = np.sum(n * rays, axis=-1, keepdims=True) > 0
    return np.where(flip, -n, n).astype(np.float32)


def rotmat_to_quat(m: np.ndarray) -> np.ndarray:
    """[N, 4] unit (w, x, y, z) quaternions of rotation matrices [N, 3, 3] (Shepperd's method)."""
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([
        np.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                  m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], 1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0],
                  1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], 1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0],
                  m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1),
    ])  # [4, N, 4]; the candidate with the largest diagonal term is the stable one
    pick = np.argmax(np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]]), axis=0)  # [N]
    q = cand[pick, np.arange(m.shape[0])]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q).astype(np.float32)


def _disc_gaussians(
    points: np.ndarray, normals: np.ndarray, sigma: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat Gaussians at camera-space ``points`` [N, 3] with ``normals`` [N, 3], footprint ``sigma`` [N].

    Returns world (means [N, 3], quats [N, 4], log_scales [N, 3]). The in-plane axis along the slant
    is stretched by 1 / cos(angle to the view ray) (capped) so the disc covers its pixel footprint.
    """
    rays = points / np.linalg.norm(points, axis=1, keepdims=True)  # [N, 3]
    cos = np.abs(np.sum(rays * normals, axis=1))  # [N]
    t1 = rays - np.sum(rays * normals, axis=1, keepdims=True) * normals  # ray projected into the plane
    t1_norm = np.linalg.norm(t1, axis=1, keepdims=True)
    fallback = np.cross(normals, [0.0, 1.0, 0.0])  # any in-plane direction when facing the camera
    fallback /= np.maximum(np.linalg.norm(fallback, axis=1, keepdims=True), 1e-12)
    t1 = np.where(t1_norm > 1e-6, t1 / np.maximum(t1_norm, 1e-12), fallback)
    t2 = np.cross(normals, t1)
    rot_cam = np.stack([t1, t2, normals], axis=2)  # [N, 3, 3], columns = local axes
    rot_world = camera.rotation.T[None] @ rot_cam  # [N, 3, 3]
    scales = np.stack([sigma / np.maximum(cos, _MIN_COS), sigma, _THIN * sigma], axis=1)  # [N, 3]
    means = (points - camera.translation) @ camera.rotation  # [N, 3] camera -> world
    return means.astype(np.float32), rotmat_to_quat(rot_world), np.log(scales).astype(np.float32)


def sample_grid(valid: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(pixels [N, 2] (row, col) on a regular grid over ``valid`` with N <= ``target``, spacing in px)."""
    count = int(valid.sum())
    spacing = max(1.0, math.sqrt(count / max(target, 1)))
    phase = rng.uniform(0.0, 1.0, size=2)  # sub-grid offset, in spacings
    h, w = valid.shape
    while True:
        rows = np.floor((np.arange(math.ceil(h / spacing)) + phase[0]) * spacing).astype(int)
        cols = np.floor((np.arange(math.ceil(w / spacing)) + phase[1]) * spacing).astype(int)
        rows, cols = np.unique(rows[rows < h]), np.unique(cols[cols < w])
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        keep = valid[rr, cc]
        if int(keep.sum()) <= target:
            return np.stack([rr[keep], cc[keep]], axis=1), spacing
        spacing *= 1.03


def lift_layer(
    depth: np.ndarray, valid: np.ndarray, colors: np.ndarray, pixels: np.ndarray, sigma_px: float, camera: Camera
) -> Layer:
    """Gaussians for ``pixels`` [N, 2] of a depth map [H, W] (normals from the smoothed map)."""
    smooth = _smooth_depth(depth, valid, sigma=max(1.0, sigma_px))
    normals = camera_normals(smooth, valid, camera)[pixels[:, 0], pixels[:, 1]]  # [N, 3]
    rays = camera.pixel_rays().astype(np.float32)[pixels[:, 0], pixels[:, 1]]  # [N, 3]
    z = depth[pixels[:, 0], pixels[:, 1]]  # [N]
    points = rays * z[:, None]  # [N, 3] camera space
    sigma = sigma_px * z / math.sqrt(camera.fx * camera.fy)  # [N] world units
    means, quats, log_scales = _disc_gaussians(points, normals, sigma, camera)
    return Layer(means, quats, log_scales, colors.astype(np.float32), pixels)


def inflation_depth(depth: np.ndarray, valid: np.ndarray, camera: Camera, min_gap: np.ndarray) -> np.ndarray:
    """Back-surface z-depth [H, W]: front depth + twice a round half-thickness from the silhouette.

    The half-thickness at a pixel at distance d (px) from the mask edge is sqrt(d (2R - d)) px, R the
    largest such distance (a sphere's profile), converted to world units at the object's depth.
    ``min_gap`` [H, W] is the smallest front-to-back distance allowed (world units).
    """
    dist = cv2.distanceTransform(valid.astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32)  # [H, W]
    radius = float(dist.max())
    h_px = np.sqrt(np.clip(dist * (2.0 * radius - dist), 0.0, None))  # [H, W]
    f = math.sqrt(camera.fx * camera.fy)
    # h_world = h_px * z_centre / f with z_centre = z_front + h_world.
    h_world = h_px * depth / np.maximum(f - h_px, 0.1 * f)
    return np.where(valid, depth + np.maximum(2.0 * h_world, min_gap), 0.0).astype(np.float32)


def back_layer(front: Layer, inputs: Inputs, sigma_px: float, cfg: LiftConfig) -> tuple[Layer, np.ndarray]:
    """The mirrored back side of ``front`` (same pixels, darkened colours) and its z-depth map [H, W]."""
    f = math.sqrt(inputs.camera.fx * inputs.camera.fy)
    min_gap = cfg.min_thickness * sigma_px * inputs.depth / f
    back_z = inflation_depth(inputs.depth, inputs.valid, inputs.camera, min_gap)
    colors = np.clip(front.colors * cfg.back_darken, 0.0, 1.0)
    return lift_layer(back_z, inputs.valid, colors, front.pixels, sigma_px, inputs.camera), back_z


def wall_layer(
    front: Layer, back: Layer, inputs: Inputs, back_z: np.ndarray, spacing: float, sigma_px: float, budget: int
) -> Layer | None:
    """Needle Gaussians along the view rays of the outermost samples, closing the rim between the layers.

    Near the silhouette the front and back layers are far apart in depth (the round profile is steep
    there), which side views would see as a slit. Each outermost sample gets up to 4 Gaussians
    elongated along its ray, spanning front to back; at most ``budget`` in all (None when 0).
    """
    dist = cv2.distanceTransform(inputs.valid.astype(np.uint8), cv2.DIST_L2, 5)  # [H, W] px to the edge
    rim = np.flatnonzero(dist[front.pixels[:, 0], front.pixels[:, 1]] <= 1.5 * spacing)  # [R]
    if rim.size == 0 or budget < rim.size:
        return None
    px = front.pixels[rim]
    z_front = inputs.depth[px[:, 0], px[:, 1]]  # [R]
    gap = back_z[px[:, 0], px[:, 1]] - z_front  # [R] in z
    sigma = sigma_px * z_front / math.sqrt(inputs.camera.fx * inputs.camera.fy)  # [R] world
    count = np.clip(np.ceil(gap / (4.0 * sigma)), 1, min(4, budget // rim.size)).astype(int)  # [R]
    owner = np.repeat(np.arange(rim.size), count)  # [M] index into rim
    step = (np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count) + 0.5) / count[owner]  # [M] in (0, 1)
    rays = inputs.camera.pixel_rays().astype(np.float32)[px[owner, 0], px[owner, 1]]  # [M, 3] with z = 1
    points = rays * (z_front[owner] + step * gap[owner])[:, None]  # [M, 3] camera space
    e1 = rays / np.linalg.norm(rays, axis=1, keepdims=True)
    e2 = np.cross(e1, [1.0, 0.0, 0.0])
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    rot_world = inputs.camera.rotation.T[None] @ np.stack([e1, e2, np.cross(e1, e2)], axis=2)  # [M, 3, 3]
    half = 0.5 * gap[owner] * np.linalg.norm(rays, axis=1) / count[owner]  # [M] along-ray std dev
    cross_sigma = sigma[owner]
    scales = np.stack([np.maximum(half, cross_sigma), cross_sigma, cross_sigma], axis=1)  # [M, 3]
    mix = step[:, None]
    colors = (1.0 - mix) * front.colors[rim][owner] + mix * back.colors[rim][owner]  # [M, 3]
    means = (points - inputs.camera.translation) @ inputs.camera.rotation
    return Layer(means.astype(np.float32), rotmat_to_quat(rot_world), np.log(scales).astype(np.float32),
                 colors.astype(np.float32), px[owner])


def unblend(inputs: Inputs, pixels: np.ndarray) -> np.ndarray:
    """Object colours [N, 3] at ``pixels`` [N, 2]: the photo with the background blend of soft edges removed."""
    m = inputs.mask[pixels[:, 0], pixels[:, 1], None]  # [N, 1], >= 0.5 at valid pixels
    rgb = inputs.image[pixels[:, 0], pixels[:, 1]]  # [N, 3]
    return np.clip((rgb - (1.0 - m) * inputs.background) / np.maximum(m, 0.5), 0.0, 1.0).astype(np.float32)


def layers_to_splat(layers: Sequence[Layer], opacities: Sequence[np.ndarray]) -> Splat:
    """Concatenate layers into one degree-0 splat with the given per-layer opacities [N_i]."""
    means = np.concatenate([layer.means for layer in layers])
    opac = np.clip(np.concatenate(opacities), 1e-4, 1 - 1e-4).astype(np.float32)
    return Splat(
        means=means,
        quats=np.concatenate([layer.quats for layer in layers]),
        log_scales=np.concatenate([layer.log_scales for layer in layers]),
        opacity_logits=(np.log(opac) - np.log1p(-opac)).astype(np.float32),
        sh=rgb_to_sh0(np.concatenate([layer.colors for layer in layers]))[:, None, :],
    )


# ----------------------------------------------------------------------------- fitting


@dataclass(frozen=True, eq=False)
class FitResult:
    layer: Layer  # with fitted colours, scales and means
    opacities: np.ndarray  # [N] fitted
    losses: list[float]  # loss per step


def _photo_loss(rgb: Tensor, alpha: Tensor, target: Tensor, mask: Tensor, cfg: LiftConfig) -> Tensor:
    """L1 colour inside the mask + weaker L1 outside + L1 alpha-vs-mask (rgb/target [H, W, 3], alpha/mask [H, W])."""
    diff = (rgb - target).abs().mean(dim=-1)  # [H, W]
    inside = (diff * mask).sum() / mask.sum().clamp(min=1.0)
    outside = (diff * (1.0 - mask)).sum() / (1.0 - mask).sum().clamp(min=1.0)
    return inside + cfg.outside_weight * outside + cfg.alpha_weight * (alpha - mask).abs().mean()


def fit_layer(layer: Layer, opacities: np.ndarray, inputs: Inputs, steps: int, cfg: LiftConfig) -> FitResult:
    """Fit colours, opacities, in-plane scales (and optional mean offsets) to the input view by Adam."""
    n = len(layer)
    target = torch.from_numpy(inputs.image)  # [H, W, 3]
    mask = torch.from_numpy(inputs.mask)  # [H, W]
    background = torch.from_numpy(inputs.background)  # [3]
    means0 = torch.from_numpy(layer.means)  # [N, 3]
    quats = torch.from_numpy(layer.quats)  # [N, 4]
    log_scales0 = torch.from_numpy(layer.log_scales)  # [N, 3]
    sh = torch.from_numpy(rgb_to_sh0(layer.colors))[:, None, :].requires_grad_(True)  # [N, 1, 3]
    opac = torch.from_numpy(np.clip(opacities, 1e-4, 1 - 1e-4).astype(np.float32))
    logits = torch.logit(opac).requires_grad_(True)  # [N]
    d_scale = torch.zeros(n, 2, requires_grad=True)  # [N, 2] in-plane log-scale deltas
    offsets = torch.zeros(n, 3, requires_grad=cfg.lr_means > 0)  # [N, 3] world
    groups = [{"params": [sh], "lr": cfg.lr_color}, {"params": [logits], "lr": cfg.lr_opacity},
              {"params": [d_scale], "lr": cfg.lr_scale}]
    if cfg.lr_means > 0:
        groups.append({"params": [offsets], "lr": cfg.lr_means})
    optimizer = torch.optim.Adam(groups, eps=1e-12)
    max_offset = cfg.max_offset * torch.exp(log_scales0[:, 1:2])  # [N, 1] bound per Gaussian
    losses: list[float] = []

    def gaussians() -> GaussianTensors:
        log_scales = log_scales0 + torch.cat([d_scale, torch.zeros(n, 1)], dim=1)
        return GaussianTensors(means0 + offsets, quats, log_scales, logits, sh)

    for _ in range(steps):
        out = rasterize(gaussians(), inputs.camera, background=background)
        loss = _photo_loss(out.rgb, out.alpha, target, mask, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            d_scale.clamp_(-1.0, 0.7)
            offsets.copy_(torch.maximum(torch.minimum(offsets, max_offset), -max_offset))
        losses.append(float(loss.detach()))
    with torch.no_grad():
        g = gaussians()
        colors = np.clip(g.sh[:, 0].numpy() * 0.28209479177387814 + 0.5, 0.0, 1.0)
        fitted = replace(layer, means=g.means.numpy().copy(), log_scales=g.log_scales.numpy().copy(), colors=colors)
        return FitResult(fitted, torch.sigmoid(g.opacity_logits).numpy().copy(), losses)


def masked_psnr(rendered: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of ``rendered`` vs ``target`` ([H, W, 3] in [0, 1]) over pixels with mask >= 0.5."""
    inside = mask >= 0.5
    if not inside.any():
        return float("nan")
    mse = float(np.mean((np.clip(rendered, 0.0, 1.0)[inside] - target[inside]) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


# ----------------------------------------------------------------------------- backend


class LiftBackend:
    """The weight-free ``lift`` backend (see the module docstring)."""

    name = "lift"

    def __init__(self, config: LiftConfig | None = None, **overrides: object) -> None:
        base = config or LiftConfig()
        unknown = sorted(set(overrides) - set(LiftConfig.__dataclass_fields__))
        if unknown:
            raise InvalidInput(f"unknown lift backend option(s): {', '.join(unknown)}", field=unknown[0])
        self.config = replace(base, **overrides)  # type: ignore[arg-type]
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Nothing to download; one tiny render warms up torch so the first request is not slower."""
        if self._ready:
            return
        warm = Splat.from_colors(np.array([[0.0, 0.0, 0.0]]), [0.5, 0.5, 0.5], 0.1, 0.5)
        from glimpse3d.core.cameras import orbit_camera

        with torch.no_grad():
            rasterize(warm, orbit_camera(0.0, 0.0, 2.7, width=16, height=16))
        self._ready = True

    def _require_ready(self) -> None:
        if not self._ready:
            raise NotReady("the lift backend is not loaded yet")

    def reconstruct(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        mask: np.ndarray | None,
        camera: Camera,
        views: Sequence[ExtraView] = (),
        fit_steps: int = 0,
        max_gaussians: int = 0,
        seed: int = 0,
    ) -> ReconstructionResult:
        self._require_ready()
        check_fit_options(fit_steps, max_gaussians, seed, views)
        cfg = self.config
        started = time.perf_counter()
        full = prepare_inputs(image, depth, mask, camera)
        work = downscale(full, cfg.work_max_side)
        steps = int(fit_steps) or cfg.fit_steps
        budget = int(max_gaussians) or cfg.max_gaussians
        with_back = cfg.back_side and budget >= 2
        if views:
            logger.info("lift backend ignores %d extra view(s)", len(views))
        rng = np.random.default_rng(int(seed))
        pixels, spacing = sample_grid(work.valid, int(budget * 0.45) if with_back else budget, rng)
        sigma_px = cfg.footprint * spacing
        colors = unblend(work, pixels)  # [N, 3]
        front = lift_layer(work.depth, work.valid, colors, pixels, sigma_px, work.camera)
        lifted = time.perf_counter()
        fit = fit_layer(front, np.full(len(front), cfg.opacity, np.float32), work, steps, cfg)
        fitted = time.perf_counter()
        layers, opacities = [fit.layer], [fit.opacities]
        if with_back:
            back, back_z = back_layer(fit.layer, work, sigma_px, cfg)
            wall = wall_layer(fit.layer, back, work, back_z, spacing, sigma_px, budget - 2 * len(back))
            for extra in (back, wall):
                if extra is not None:
                    layers.append(extra)
                    opacities.append(np.full(len(extra), cfg.opacity, np.float32))
        splat = layers_to_splat(layers, opacities)
        with torch.no_grad():
            rgb = rasterize(splat, full.camera, background=tuple(full.background.tolist())).rgb.numpy()
        psnr = masked_psnr(rgb, full.image, full.mask)
        metrics = {
            "input_view_psnr_db": psnr,
            "num_gaussians": float(splat.num_gaussians),
            "fit_steps": float(steps),
            "grid_spacing_px": float(spacing),
            "initial_loss": fit.losses[0] if fit.losses else float("nan"),
            "final_loss": fit.losses[-1] if fit.losses else float("nan"),
            "lift_seconds": lifted - started,
            "fit_seconds": fitted - lifted,
            "total_seconds": time.perf_counter() - started,
        }
        logger.info("lift: %d Gaussians, %d steps, input-view PSNR %.2f dB in %.2f s",
                    splat.num_gaussians, steps, psnr, metrics["total_seconds"])
        return ReconstructionResult(splat, metrics)

    def render(
        self, splat: Splat, cameras: Sequence[Camera], background: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> list[RenderedImage]:
        self._require_ready()
        return render_views(splat, cameras, background)


def render_views(splat: Splat, cameras: Sequence[Camera], background: Sequence[float]) -> list[RenderedImage]:
    """Render ``splat`` from each camera (no gradients), float32 numpy outputs."""
    if not isinstance(splat, Splat):
        raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
    if isinstance(cameras, Camera) or not cameras:
        raise InvalidInput("cameras must be a non-empty sequence of Camera", field="cameras")
    out: list[RenderedImage] = []
    for i, cam in enumerate(cameras):
        if not isinstance(cam, Camera):
            raise InvalidInput(f"cameras[{i}] must be a Camera, got {type(cam).__name__}", field=f"cameras[{i}]")
        with torch.no_grad():
            r = rasterize(splat, cam, background=background)
        out.append(RenderedImage(
            rgb=r.rgb.clamp(0.0, 1.0).numpy().astype(np.float32),
            depth=r.depth.numpy().astype(np.float32),
            alpha=r.alpha.clamp(0.0, 1.0).numpy().astype(np.float32),
        ))
    return out
