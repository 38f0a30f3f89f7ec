"""The weight-free ``lift`` reconstruction backend: one photo + depth + mask -> a closed coarse splat.

The masked pixels, sampled on a grid sized to ``max_gaussians``, become flat Gaussians at their
depth (:mod:`glimpse3d.core.lifting`); colours, opacities and in-plane scales are fitted through the rasterizer
against the photo (:func:`~glimpse3d.services.reconstruction.common.fit_layer`); a back layer and
rim walls close the object (:mod:`.closure`). ``seed`` picks the sub-pixel phase of the sampling
grid, so the same inputs and seed give identical splats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.lifting import layers_to_splat, lift_layer, sample_grid
from glimpse3d.core.models import warm_optimizer
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.services.reconstruction.api import (
    MAX_FIT_STEPS,
    MAX_GAUSSIANS,
    ExtraView,
    ReconstructionBackend,
    ReconstructionResult,
)
from glimpse3d.services.reconstruction.backends.lift.closure import (
    back_layer,
    opaque_core,
    wall_budget_share,
    wall_layer,
)
from glimpse3d.services.reconstruction.common import (
    FitOptions,
    Inputs,
    downscale,
    fit_layer,
    input_view_psnr,
    prepare_inputs,
)

logger = logging.getLogger(__name__)


class LiftOptions(FitOptions):
    """Options of the lift backend (the defaults are sized for a CPU)."""

    fit_steps: int = Field(default=20, ge=0, le=MAX_FIT_STEPS)  # when a request asks for 0
    max_gaussians: int = Field(default=12_000, ge=1, le=MAX_GAUSSIANS)  # when a request asks for 0
    footprint: float = Field(default=0.6, ge=0.1, le=4.0)  # in-plane std dev of a Gaussian, in grid spacings
    opacity: float = Field(default=0.95, ge=0.01, le=0.999)  # initial opacity
    back_side: bool = True
    back_darken: float = Field(default=0.9, ge=0.01, le=1.0)
    # back colours: the front's blurred with sigma = this x the silhouette's inscribed radius
    back_blur: float = Field(default=0.5, ge=0.0, le=10.0)
    min_thickness: float = Field(default=2.0, ge=0.0, le=100.0)  # back layer at least this many footprints behind


def unblend(inputs: Inputs, pixels: np.ndarray) -> np.ndarray:
    """Object colours [N, 3] at ``pixels`` [N, 2]: the photo with the background blend of soft edges removed."""
    m = inputs.mask[pixels[:, 0], pixels[:, 1], None]  # [N, 1], >= 0.5 at valid pixels
    rgb = inputs.image[pixels[:, 0], pixels[:, 1]]  # [N, 3]
    return np.clip((rgb - (1.0 - m) * inputs.background) / np.maximum(m, 0.5), 0.0, 1.0).astype(np.float32)


def lift_object(full: Inputs, steps: int, budget: int, seed: int, cfg: LiftOptions) -> tuple[Splat, dict[str, float]]:
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


class LiftBackend(ReconstructionBackend):
    """The weight-free ``lift`` backend (see the module docstring). Extra ``views`` are ignored."""

    name = "lift"
    Options = LiftOptions
    options: LiftOptions

    def _load(self) -> None:
        """Nothing to download; one tiny render and the optimiser's set-up warm up torch so the first
        request is not slower."""
        warm = Splat.from_colors(np.array([[0.0, 0.0, 0.0]]), [0.5, 0.5, 0.5], 0.1, 0.5)
        with torch.no_grad():
            rasterize(warm, orbit_camera(0.0, 0.0, 2.7, width=16, height=16))
        warm_optimizer()

    def _reconstruct(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, camera: Camera,
                     views: Sequence[ExtraView], fit_steps: int, max_gaussians: int, seed: int) -> ReconstructionResult:
        started = time.perf_counter()
        full = prepare_inputs(image, depth, mask, camera)
        if views:
            logger.info("lift backend ignores %d extra view(s)", len(views))
        splat, metrics = lift_object(full, fit_steps or self.options.fit_steps,
                                     max_gaussians or self.options.max_gaussians, seed, self.options)
        metrics["input_view_psnr_db"] = input_view_psnr(splat, full)
        metrics["total_seconds"] = time.perf_counter() - started
        logger.info("lift: %d Gaussians, %d steps, input-view PSNR %.2f dB in %.2f s", splat.num_gaussians,
                    metrics["fit_steps"], metrics["input_view_psnr_db"], metrics["total_seconds"])
        return ReconstructionResult(splat, metrics)
