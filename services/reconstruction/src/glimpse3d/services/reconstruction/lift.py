"""The weight-free ``lift`` reconstruction backend.

One photo + depth + mask -> a closed coarse splat in seconds on a CPU:

1. **Front layer.** The masked pixels are sampled on a regular grid whose spacing is chosen so that
   the whole splat stays within ``max_gaussians``. Each sample becomes a flat Gaussian at its depth
   (unprojected with the camera), oriented by the surface normal of the (smoothed) depth map and
   sized to the pixel footprint, its colour the photo's with the background blend of soft edges
   removed (:mod:`.geometry`).
2. **Fit.** Colours (SH band 0), opacities and the two in-plane scales (optionally small offsets of
   the means) are fitted by Adam through the differentiable rasterizer against the input view:
   L1 colour loss inside the mask (the render composited over the photo's own background colour,
   so edges blend as in the photo), a weaker L1 term outside it, and an L1 alpha-vs-mask term.
3. **Closing.** A back layer mirrors the front behind the object at a thickness from the
   silhouette's inflation, and needle-shaped wall Gaussians bridge the rim between the two, so the
   object is closed from every side (:mod:`.closure`). Only the front is fitted: the closing
   Gaussians are hidden behind it from the input camera.

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

from glimpse3d.core.backends import config_with_overrides
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.render import GaussianTensors, rasterize
from glimpse3d.core.splat import Splat, rgb_to_sh0, sh0_to_rgb
from glimpse3d.services.reconstruction.backends import (
    MAX_FIT_STEPS,
    MAX_GAUSSIANS,
    ExtraView,
    ReconstructionResult,
    RenderedImage,
    check_fit_options,
)
from glimpse3d.services.reconstruction.closure import back_layer, opaque_core, wall_budget_share, wall_layer
from glimpse3d.services.reconstruction.geometry import Layer, layers_to_splat, lift_layer, sample_grid

logger = logging.getLogger(__name__)

_MIN_MASK_PIXELS = 4


@dataclass(frozen=True)
class LiftConfig:
    """Tunables of the lift backend; the defaults keep a 256 px photo at a few seconds on 2 cores."""

    fit_steps: int = 20
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
    back_blur: float = 0.5  # back colours: the front's blurred with sigma = this x the silhouette's inscribed radius
    min_thickness: float = 2.0  # back layer at least this many footprints behind the front

    def __post_init__(self) -> None:
        for name, (lo, hi) in _CONFIG_RANGES.items():
            value = getattr(self, name)
            integral = name in ("fit_steps", "max_gaussians", "work_max_side")
            kinds = (int,) if integral else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
                raise InvalidInput(f"lift option {name} must be in [{lo}, {hi}], got {value!r}", field=name)
        if not isinstance(self.back_side, bool):
            raise InvalidInput(f"lift option back_side must be a bool, got {self.back_side!r}", field="back_side")


_CONFIG_RANGES: dict[str, tuple[float, float]] = {
    "fit_steps": (0, MAX_FIT_STEPS), "max_gaussians": (1, MAX_GAUSSIANS), "work_max_side": (16, 8192),
    "footprint": (0.1, 4.0), "opacity": (0.01, 0.999), "lr_color": (0.0, 10.0), "lr_opacity": (0.0, 10.0),
    "lr_scale": (0.0, 10.0), "lr_means": (0.0, 1.0), "max_offset": (0.0, 10.0), "alpha_weight": (0.0, 100.0),
    "outside_weight": (0.0, 100.0), "back_darken": (0.01, 1.0), "back_blur": (0.0, 10.0), "min_thickness": (0.0, 100.0),
}


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


def unblend(inputs: Inputs, pixels: np.ndarray) -> np.ndarray:
    """Object colours [N, 3] at ``pixels`` [N, 2]: the photo with the background blend of soft edges removed."""
    m = inputs.mask[pixels[:, 0], pixels[:, 1], None]  # [N, 1], >= 0.5 at valid pixels
    rgb = inputs.image[pixels[:, 0], pixels[:, 1]]  # [N, 3]
    return np.clip((rgb - (1.0 - m) * inputs.background) / np.maximum(m, 0.5), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- fitting


@dataclass(frozen=True, eq=False)
class FitResult:
    layer: Layer  # with fitted colours, scales and means
    opacities: np.ndarray  # [N] fitted
    losses: list[float]  # loss per step
    alpha: np.ndarray  # [H, W] the fitted layer's alpha at the input camera


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


def lift_object(full: Inputs, steps: int, budget: int, seed: int, cfg: LiftConfig) -> tuple[Splat, dict[str, float]]:
    """Lift, fit and close: the coarse splat of validated inputs, and metrics (without the PSNR)."""
    started = time.perf_counter()
    work = downscale(full, cfg.work_max_side)
    with_back = cfg.back_side and budget >= 2
    # Front and back take the same share; the rim walls get what is left.
    target = wall_budget_share(work.valid, budget) if with_back else budget
    pixels, spacing = sample_grid(work.valid, target, np.random.default_rng(seed))
    sigma_px = cfg.footprint * spacing
    front = lift_layer(work.depth, work.valid, unblend(work, pixels), pixels, sigma_px, work.camera)
    lifted = time.perf_counter()
    fit = fit_layer(front, np.full(len(front), cfg.opacity, np.float32), work, steps, cfg)
    fitted = time.perf_counter()
    layers, opacities = [fit.layer], [fit.opacities]
    if with_back:
        core = opaque_core(fit.alpha, work.valid)
        back, start, thickness = back_layer(fit.layer, work.depth, work.valid, work.camera, core, sigma_px,
                                            min_thickness=cfg.min_thickness, darken=cfg.back_darken,
                                            blur=cfg.back_blur)
        wall = wall_layer(back, start, thickness, work.valid, work.camera, spacing, sigma_px,
                          budget - 2 * len(back), cfg.back_darken)
        for extra in (back, wall):
            if extra is not None:
                layers.append(extra)
                opacities.append(np.full(len(extra), cfg.opacity, np.float32))
    metrics = {
        "num_gaussians": float(sum(len(layer) for layer in layers)),
        "num_front": float(len(front)),
        "fit_steps": float(steps),
        "grid_spacing_px": float(spacing),
        "initial_loss": fit.losses[0] if fit.losses else float("nan"),
        "final_loss": fit.losses[-1] if fit.losses else float("nan"),
        "lift_seconds": lifted - started,
        "fit_seconds": fitted - lifted,
    }
    return layers_to_splat(layers, opacities), metrics


# ----------------------------------------------------------------------------- backend


class LiftBackend:
    """The weight-free ``lift`` backend (see the module docstring).

    Options are :class:`LiftConfig` fields. Extra ``views`` are accepted and ignored. ``seed`` picks
    the sub-pixel phase of the sampling grid; the same inputs and seed give identical splats.
    """

    name = "lift"

    def __init__(self, config: LiftConfig | None = None, **overrides: object) -> None:
        self.config = config_with_overrides(LiftConfig, config, overrides, "lift")
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Nothing to download; one tiny render warms up torch so the first request is not slower."""
        if self._ready:
            return
        warm = Splat.from_colors(np.array([[0.0, 0.0, 0.0]]), [0.5, 0.5, 0.5], 0.1, 0.5)
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
        started = time.perf_counter()
        full = prepare_inputs(image, depth, mask, camera)
        if views:
            logger.info("lift backend ignores %d extra view(s)", len(views))
        splat, metrics = lift_object(full, int(fit_steps) or self.config.fit_steps,
                                     int(max_gaussians) or self.config.max_gaussians, int(seed), self.config)
        with torch.no_grad():
            rgb = rasterize(splat, full.camera, background=tuple(full.background.tolist())).rgb.numpy()
        metrics["input_view_psnr_db"] = masked_psnr(rgb, full.image, full.mask)
        metrics["total_seconds"] = time.perf_counter() - started
        logger.info("lift: %d Gaussians, %d steps, input-view PSNR %.2f dB in %.2f s", splat.num_gaussians,
                    metrics["fit_steps"], metrics["input_view_psnr_db"], metrics["total_seconds"])
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
