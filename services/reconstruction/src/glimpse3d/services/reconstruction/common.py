"""What the reconstruction backends share: request validation (:func:`prepare_inputs`), the
photometric fit of a layer of Gaussians against the photo (:func:`fit_layer`), the input-view PSNR
and rendering with the project's rasterizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from glimpse3d.core.backend import BackendOptions
from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.lifting import Layer
from glimpse3d.core.render import GaussianTensors, rasterize
from glimpse3d.core.splat import Splat, rgb_to_sh0, sh0_to_rgb
from glimpse3d.services.reconstruction.api import RenderedImage

_MIN_MASK_PIXELS = 4


class FitOptions(BackendOptions):
    """Tunables of :func:`fit_layer` (Adam learning rates in SH band-0 units, logits, log scales and
    world units; loss weights) and the working resolution."""

    work_max_side: int = Field(default=256, ge=16, le=8192)  # larger photos are downscaled to this
    lr_color: float = Field(default=0.06, ge=0.0, le=10.0)
    lr_opacity: float = Field(default=0.15, ge=0.0, le=10.0)
    lr_scale: float = Field(default=0.03, ge=0.0, le=10.0)
    lr_means: float = Field(default=0.0, ge=0.0, le=1.0)  # > 0 also fits small mean offsets
    max_offset: float = Field(default=0.5, ge=0.0, le=10.0)  # bound on mean offsets, in footprints
    alpha_weight: float = Field(default=0.5, ge=0.0, le=100.0)
    outside_weight: float = Field(default=0.3, ge=0.0, le=100.0)


@dataclass(frozen=True, eq=False)
class Inputs:
    """Validated inputs, float32, at one resolution."""

    image: np.ndarray  # [H, W, 3] in [0, 1]
    depth: np.ndarray  # [H, W], > 0 where valid
    mask: np.ndarray  # [H, W] in [0, 1]
    valid: np.ndarray  # [H, W] bool: mask >= 0.5 and a positive depth
    camera: Camera
    background: np.ndarray  # [3] the photo's background colour


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


@dataclass(frozen=True, eq=False)
class FitResult:
    layer: Layer  # with fitted colours, scales and means
    opacities: np.ndarray  # [N] fitted
    losses: list[float]  # loss per step
    alpha: np.ndarray  # [H, W] the fitted layer's alpha at the input camera


def _photo_loss(rgb: Tensor, alpha: Tensor, target: Tensor, mask: Tensor, cfg: FitOptions) -> Tensor:
    """L1 colour inside the mask + weaker L1 outside + L1 alpha-vs-mask (rgb/target [H, W, 3], alpha/mask [H, W])."""
    diff = (rgb - target).abs().mean(dim=-1)  # [H, W]
    inside = (diff * mask).sum() / mask.sum().clamp(min=1.0)
    outside = (diff * (1.0 - mask)).sum() / (1.0 - mask).sum().clamp(min=1.0)
    return inside + cfg.outside_weight * outside + cfg.alpha_weight * (alpha - mask).abs().mean()


def fit_layer(layer: Layer, opacities: np.ndarray, inputs: Inputs, steps: int, cfg: FitOptions) -> FitResult:
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
        check_cancelled()  # a cancelled call stops here instead of fitting on
        out = rasterize(gaussians(), inputs.camera, background=background)
        loss = _photo_loss(out.rgb, out.alpha, target, mask, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            d_scale.clamp_(-1.0, 0.3)
            offsets.copy_(torch.maximum(torch.minimum(offsets, max_offset), -max_offset))
        losses.append(float(loss.detach()))
    with torch.no_grad():
        g = gaussians()
        alpha = rasterize(g, inputs.camera).alpha.numpy().copy()  # [H, W]
        colors = np.clip(sh0_to_rgb(g.sh[:, 0].numpy()), 0.0, 1.0)
        fitted = replace(layer, means=g.means.numpy().copy(), log_scales=g.log_scales.numpy().copy(), colors=colors)
        return FitResult(fitted, torch.sigmoid(g.opacity_logits).numpy().copy(), losses, alpha)


def masked_psnr(rendered: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of ``rendered`` vs ``target`` ([H, W, 3] in [0, 1]) over pixels with mask >= 0.5."""
    inside = mask >= 0.5
    if not inside.any():
        return float("nan")
    mse = float(np.mean((np.clip(rendered, 0.0, 1.0)[inside] - target[inside]) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))

def input_view_psnr(splat: Splat, inputs: Inputs) -> float:
    """PSNR of ``splat`` rendered at the inputs' camera over their background, against their photo."""
    with torch.no_grad():
        rgb = rasterize(splat, inputs.camera, background=tuple(inputs.background.tolist())).rgb.numpy()
    return masked_psnr(rgb, inputs.image, inputs.mask)


def render_views(splat: Splat, cameras: Sequence[Camera], background: Sequence[float]) -> list[RenderedImage]:
    """Render ``splat`` from each camera (no gradients), float32 numpy outputs."""
    out: list[RenderedImage] = []
    for cam in cameras:
        with torch.no_grad():
            r = rasterize(splat, cam, background=background)
        out.append(RenderedImage(
            rgb=r.rgb.clamp(0.0, 1.0).numpy().astype(np.float32),
            depth=r.depth.numpy().astype(np.float32),
            alpha=r.alpha.clamp(0.0, 1.0).numpy().astype(np.float32),
        ))
    return out
