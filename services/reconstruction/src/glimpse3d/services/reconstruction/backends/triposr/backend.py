"""The ``triposr`` reconstruction backend: TripoSR's triplane NeRF, sampled into Gaussians.

The photo is cropped around its matte and composited over grey (:mod:`.preprocess`); one forward
pass (:mod:`.model`) gives the triplane, which is sampled on a grid into Gaussians (:mod:`.convert`;
the seed sets the grid's sub-cell phase and the thinning order) and placed where the crop showed the
object. With ``fit_steps`` > 0 the splat is then refined against the photo by the shared fit. The
depth map is only validated.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field

from glimpse3d.core.backend import LearnedBackend, LearnedOptions
from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.core.lifting import Layer, layers_to_splat
from glimpse3d.core.splat import Splat
from glimpse3d.services.reconstruction.api import (
    MAX_FIT_STEPS,
    MAX_GAUSSIANS,
    ExtraView,
    ReconstructionBackend,
    ReconstructionResult,
)
from glimpse3d.services.reconstruction.backends.triposr.convert import (
    GridOptions,
    placement_for_crop,
    to_splat,
    triplane_to_gaussians,
)
from glimpse3d.services.reconstruction.backends.triposr.preprocess import (
    FOREGROUND_RATIO,
    conditioning_image,
    foreground_crop,
)
from glimpse3d.services.reconstruction.backends.triposr.source import CONFIG_FILE, NAME, REQUIRED_FILES, WEIGHTS_FILE
from glimpse3d.services.reconstruction.common import (
    FitOptions,
    Inputs,
    downscale,
    fit_layer,
    input_view_psnr,
    prepare_inputs,
)

logger = logging.getLogger(__name__)

DEFAULT_OBJECT_DISTANCE = 2.7  # world units; the default orbit radius (core.convert)


class TripoSROptions(LearnedOptions):
    """Options of the triposr backend (``GLIMPSE3D_BACKEND_OPTIONS``)."""

    fit_steps: int = Field(default=0, ge=0, le=MAX_FIT_STEPS)  # refinement steps when a request asks for 0
    max_gaussians: int = Field(default=40_000, ge=1, le=MAX_GAUSSIANS)  # budget when a request asks for 0
    grid_resolution: int = Field(default=128, ge=8, le=512)  # cells per side of the sampling grid
    density_threshold: float = Field(default=25.0, ge=1e-6, le=1e9)  # TripoSR's isosurface level
    shell_voxels: int = Field(default=2, ge=0, le=64)  # outer cell layers kept; 0 keeps the solid
    gaussian_scale: float = Field(default=0.6, ge=0.1, le=4.0)  # Gaussian standard deviation, in grid cells
    jitter: bool = True  # seeded sub-cell shift of the grid
    chunk_size: int = Field(default=65536, ge=0, le=1 << 24)  # points per decoder call; 0 = all at once
    foreground_ratio: float = Field(default=FOREGROUND_RATIO, ge=0.3, le=1.0)


def object_distance(inputs: Inputs) -> float:
    """Camera-space depth of the object centre: the world origin's (where the project normalises
    objects to sit), else the median depth inside the mask, else the default orbit radius."""
    z = float(inputs.camera.translation[2])
    if z > 1e-6:
        return z
    inside = inputs.depth[inputs.valid]
    return float(np.median(inside)) if inside.size else DEFAULT_OBJECT_DISTANCE


class TripoSRBackend(ReconstructionBackend, LearnedBackend):
    """The ``triposr`` backend (see the module docstring)."""

    name = "triposr"
    Options = TripoSROptions
    options: TripoSROptions

    def _load_model(self) -> None:
        """Read config.yaml and model.ckpt from ``<model_dir>/reconstruction/triposr``, check the
        checkpoint against the manifest, move the model to the device."""
        root = self.require_model(NAME, REQUIRED_FILES)
        from glimpse3d.services.reconstruction.backends.triposr.checkpoint import load_model
        from glimpse3d.services.reconstruction.backends.triposr.model import load_config

        model = load_model(root / WEIGHTS_FILE, load_config(root / CONFIG_FILE))
        model = model.to(device=self.device, dtype=self.dtype)
        model.decoder.float()  # exp(density) overflows half precision; the MLP is tiny
        if self.device.type == "cuda":  # first-call kernel selection happens here, not in a request
            with torch.inference_mode():
                size = model.config.cond_image_size
                model(torch.full((1, 3, size, size), 0.5, device=self.device))
        self._model = model

    def _reconstruct(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, camera: Camera,
                     views: Sequence[ExtraView], fit_steps: int, max_gaussians: int, seed: int) -> ReconstructionResult:
        inputs = prepare_inputs(image, depth, mask, camera)
        if views:
            logger.info("triposr backend ignores %d extra view(s)", len(views))
        steps = fit_steps or self.options.fit_steps
        budget = max_gaussians or self.options.max_gaussians
        splat, metrics = self._splat(self._model, inputs, steps, budget, seed)
        metrics["input_view_psnr_db"] = input_view_psnr(splat, inputs)
        logger.info("triposr: %d Gaussians, input-view PSNR %.2f dB in %.2f s", splat.num_gaussians,
                    metrics["input_view_psnr_db"], metrics["total_seconds"])
        return ReconstructionResult(splat, metrics)

    def _splat(self, model: Any, inputs: Inputs, steps: int, budget: int,
                     seed: int) -> tuple[Splat, dict[str, float]]:
        cfg = self.options
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


def _fit(splat: Splat, inputs: Inputs, steps: int) -> Splat:
    """Refine colours, opacities and scales against the photo with the shared fit (default options)."""
    cfg = FitOptions()
    layer = Layer(splat.means, splat.unit_quats, splat.log_scales, splat.base_colors,
                  np.zeros((splat.num_gaussians, 2), np.int64))
    fit = fit_layer(layer, splat.opacities, downscale(inputs, cfg.work_max_side), steps, cfg)
    return layers_to_splat([fit.layer], [fit.opacities])
