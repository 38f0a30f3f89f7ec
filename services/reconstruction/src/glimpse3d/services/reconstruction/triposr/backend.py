"""The ``triposr`` reconstruction backend: TripoSR's triplane NeRF, sampled into Gaussians.

Per request:

1. **Prepare** (:mod:`.preprocess`): the photo is composited over 50 % grey with the request's matte,
   cropped around the object so that it fills ``foreground_ratio`` of a square, and resized to the
   model's conditioning size (512), as TripoSR's reference scripts do. The depth map is not used
   by the network (only validated, as by every backend).
2. **Infer** (:mod:`.model`): one forward pass gives the scene code, a [3, 40, 64, 64] triplane.
3. **Convert** (:mod:`.convert`): the triplane NeRF is sampled on a ``grid_resolution``^3 grid in
   TripoSR's bounding cube; cells at least ``density_threshold`` dense, in the outer
   ``shell_voxels`` layers, become isotropic Gaussians (opacity from the density, colour from the
   decoder), at most ``max_gaussians`` of them; the seed sets the grid's sub-cell phase (``jitter``)
   and the order in which an over-full layer is thinned, so one seed always gives the same splat.
4. **Place**: TripoSR's object frame (z up, seen from +x) is turned, scaled and moved so that the
   object sits where the crop showed it, at the photo camera's depth of the world origin.
5. **Fit** (optional, ``fit_steps`` > 0 from the request or the options): colours, opacities and
   scales are refined against the photo by the lift backend's gradient-descent fit.

``input_view_psnr_db`` is the PSNR of the splat rendered at the photo's camera against the photo
inside the mask, as for ``lift``. Rendering is the lift backend's (the shared rasterizer).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glimpse3d.core.backends import config_with_overrides
from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition, InvalidInput, NotReady
from glimpse3d.core.models import (
    DEFAULT_MODEL_DIR,
    DeviceOptions,
    offline_hub,
    require_model,
    resolve_device,
    resolve_dtype,
)
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.services.reconstruction.backends import (
    MAX_FIT_STEPS,
    MAX_GAUSSIANS,
    ExtraView,
    ReconstructionResult,
    RenderedImage,
    check_fit_options,
)
from glimpse3d.services.reconstruction.geometry import Layer, layers_to_splat
from glimpse3d.services.reconstruction.lift import (
    Inputs,
    LiftConfig,
    downscale,
    fit_layer,
    masked_psnr,
    prepare_inputs,
    render_views,
)
from glimpse3d.services.reconstruction.triposr.convert import (
    GridOptions,
    placement_for_crop,
    to_splat,
    triplane_to_gaussians,
)
from glimpse3d.services.reconstruction.triposr.preprocess import (
    FOREGROUND_RATIO,
    conditioning_image,
    foreground_crop,
)
from glimpse3d.services.reconstruction.triposr.source import CONFIG_FILE, NAME, REQUIRED_FILES, WEIGHTS_FILE

logger = logging.getLogger(__name__)

DEFAULT_OBJECT_DISTANCE = 2.7  # world units; the default orbit radius (core.convert)


@dataclass(frozen=True)
class TripoSROptions:
    """Tunables of the triposr backend (``GLIMPSE3D_BACKEND_OPTIONS``)."""

    fit_steps: int = 0  # default refinement steps when a request asks for 0
    max_gaussians: int = 40_000  # default budget when a request asks for 0
    grid_resolution: int = 128  # cells per side of the sampling grid
    density_threshold: float = 25.0  # TripoSR's isosurface level
    shell_voxels: int = 2  # outer cell layers kept; 0 keeps the solid
    gaussian_scale: float = 0.6  # Gaussian standard deviation, in grid cells
    jitter: bool = True  # seeded sub-cell shift of the grid
    chunk_size: int = 65536  # points per decoder call; 0 = all at once
    foreground_ratio: float = FOREGROUND_RATIO
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16

    def __post_init__(self) -> None:
        for name, (lo, hi) in _RANGES.items():
            value = getattr(self, name)
            kinds = (int,) if name in _INTEGRAL else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
                raise InvalidInput(f"triposr option {name} must be in [{lo}, {hi}], got {value!r}", field=name)
        if not isinstance(self.jitter, bool):
            raise InvalidInput(f"triposr option jitter must be a bool, got {self.jitter!r}", field="jitter")
        DeviceOptions(dtype=self.dtype)


_INTEGRAL = frozenset({"fit_steps", "max_gaussians", "grid_resolution", "shell_voxels", "chunk_size"})
_RANGES: dict[str, tuple[float, float]] = {
    "fit_steps": (0, MAX_FIT_STEPS), "max_gaussians": (1, MAX_GAUSSIANS), "grid_resolution": (8, 512),
    "density_threshold": (1e-6, 1e9), "shell_voxels": (0, 64), "gaussian_scale": (0.1, 4.0),
    "chunk_size": (0, 1 << 24), "foreground_ratio": (0.3, 1.0),
}


def object_distance(inputs: Inputs) -> float:
    """Camera-space depth of the object centre: the world origin's (where the project normalises
    objects to sit), else the median depth inside the mask, else the default orbit radius."""
    z = float(inputs.camera.translation[2])
    if z > 1e-6:
        return z
    inside = inputs.depth[inputs.valid]
    return float(np.median(inside)) if inside.size else DEFAULT_OBJECT_DISTANCE


class TripoSRBackend:
    """The ``triposr`` backend (see the module docstring). Options are :class:`TripoSROptions` fields;
    ``model_dir`` and ``device`` come from the service settings."""

    name = "triposr"

    def __init__(self, model_dir: Path | str = DEFAULT_MODEL_DIR, device: str = "auto",
                 config: TripoSROptions | None = None, **overrides: object) -> None:
        self.config = config_with_overrides(TripoSROptions, config, overrides, "triposr")
        self.device_options = DeviceOptions(device=device, dtype=self.config.dtype)
        self.model_dir = Path(model_dir)
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Read config.yaml and model.ckpt from ``<model_dir>/reconstruction/triposr``, check the
        checkpoint against the manifest, move the model to the device. Idempotent."""
        with self._lock:
            if self._model is not None:
                return
            offline_hub()
            root = require_model(self.model_dir, NAME, REQUIRED_FILES)
            from glimpse3d.services.reconstruction.triposr.checkpoint import load_model
            from glimpse3d.services.reconstruction.triposr.model import load_config

            started = time.perf_counter()
            model = load_model(root / WEIGHTS_FILE, load_config(root / CONFIG_FILE))
            device = resolve_device(self.device_options.device)
            dtype = resolve_dtype(self.device_options.dtype, device)
            model = model.to(device=device, dtype=dtype)
            model.decoder.float()  # exp(density) overflows half precision; the MLP is tiny
            if device.type == "cuda":  # first-call kernel selection happens here, not in a request
                with torch.inference_mode():
                    size = model.config.cond_image_size
                    model(torch.full((1, 3, size, size), 0.5, device=device))
            self._model = model
            logger.info("triposr loaded from %s on %s (%s) in %.1f s", root, device, dtype,
                        time.perf_counter() - started)

    def _require_ready(self) -> Any:
        if self._model is None:
            raise NotReady("the triposr backend is not loaded yet")
        return self._model

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
        model = self._require_ready()
        check_fit_options(fit_steps, max_gaussians, seed, views)
        inputs = prepare_inputs(image, depth, mask, camera)
        if views:
            logger.info("triposr backend ignores %d extra view(s)", len(views))
        steps = int(fit_steps) or self.config.fit_steps
        budget = int(max_gaussians) or self.config.max_gaussians
        splat, metrics = self._reconstruct(model, inputs, steps, budget, int(seed))
        with torch.no_grad():
            rgb = rasterize(splat, inputs.camera, background=tuple(inputs.background.tolist())).rgb.numpy()
        metrics["input_view_psnr_db"] = masked_psnr(rgb, inputs.image, inputs.mask)
        logger.info("triposr: %d Gaussians, input-view PSNR %.2f dB in %.2f s", splat.num_gaussians,
                    metrics["input_view_psnr_db"], metrics["total_seconds"])
        return ReconstructionResult(splat, metrics)

    def _reconstruct(self, model: Any, inputs: Inputs, steps: int, budget: int,
                     seed: int) -> tuple[Splat, dict[str, float]]:
        cfg = self.config
        times = [time.perf_counter()]
        crop = foreground_crop(inputs.mask, cfg.foreground_ratio)
        cond = conditioning_image(inputs.image, inputs.mask, crop, model.config.cond_image_size)
        device = next(model.parameters()).device
        pixels = torch.from_numpy(cond).permute(2, 0, 1)[None].to(device)  # [1, 3, S, S]
        times.append(time.perf_counter())
        check_cancelled()
        with torch.inference_mode():
            triplane = model(pixels)[0]  # [3, C, H, W]
            times.append(time.perf_counter())
            check_cancelled()
            grid = GridOptions(cfg.grid_resolution, cfg.density_threshold, cfg.shell_voxels, cfg.gaussian_scale,
                               cfg.jitter, cfg.chunk_size)
            generator = torch.Generator().manual_seed(seed)
            gaussians = triplane_to_gaussians(lambda p: model.query(triplane, p.to(device)),
                                              model.config.renderer.radius, grid, budget, generator)
        if len(gaussians.means) == 0:
            raise FailedPrecondition(
                f"triposr found no density >= density_threshold={cfg.density_threshold} (maximum "
                f"{gaussians.stats['max_density']:.3g}); the mask may not show an object, or lower the threshold",
                field="density_threshold")
        splat = to_splat(gaussians, placement_for_crop(inputs.camera, crop, object_distance(inputs)))
        times.append(time.perf_counter())
        if steps > 0:
            splat = _fit(splat, inputs, steps)
        times.append(time.perf_counter())
        metrics = {**gaussians.stats, "num_gaussians": float(splat.num_gaussians), "fit_steps": float(steps),
                   "crop_size_px": float(crop.size)}
        for name, (a, b) in zip(("preprocess", "model", "convert", "fit"), itertools.pairwise(times), strict=True):
            metrics[f"{name}_seconds"] = b - a
        metrics["total_seconds"] = times[-1] - times[0]
        return splat, metrics

    def render(
        self, splat: Splat, cameras: Sequence[Camera], background: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> list[RenderedImage]:
        self._require_ready()
        return render_views(splat, cameras, background)


def _fit(splat: Splat, inputs: Inputs, steps: int) -> Splat:
    """Refine colours, opacities and scales against the photo with the lift backend's fit."""
    cfg = LiftConfig(fit_steps=steps)
    layer = Layer(splat.means, splat.unit_quats, splat.log_scales, splat.base_colors,
                  np.zeros((splat.num_gaussians, 2), np.int64))
    fit = fit_layer(layer, splat.opacities, downscale(inputs, cfg.work_max_side), steps, cfg)
    return layers_to_splat([fit.layer], [fit.opacities])
