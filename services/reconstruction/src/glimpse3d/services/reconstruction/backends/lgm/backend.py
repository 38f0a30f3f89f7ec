"""The learned ``lgm`` reconstruction backend (LGM, Tang et al. 2024): four posed views -> 3D
Gaussians in one forward pass.

The photo is the front view; the request's ``views`` must hold the photo's camera turned about the
vertical axis by +90, +180 and +270 degrees (:func:`.rays.select_views`). Every view is resampled to
LGM's camera over white and given its Plücker rays in LGM's frame (:mod:`.rays`); the network
(:mod:`.unet`) runs once and its Gaussians are carried into the world (:mod:`.gaussians`). The pass
is deterministic (``seed`` changes nothing), ``fit_steps`` is ignored and ``max_gaussians`` keeps the
most opaque Gaussians.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field

from glimpse3d.core.backend import LearnedBackend, LearnedOptions
from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import InvalidInput
from glimpse3d.services.reconstruction.api import ExtraView, ReconstructionBackend, ReconstructionResult
from glimpse3d.services.reconstruction.backends.lgm.checkpoint import load_checkpoint
from glimpse3d.services.reconstruction.backends.lgm.gaussians import lgm_to_splat
from glimpse3d.services.reconstruction.backends.lgm.rays import lgm_frame, network_input, resample_view, select_views
from glimpse3d.services.reconstruction.backends.lgm.source import CHECKPOINT_FILE, MODEL_NAME
from glimpse3d.services.reconstruction.common import as_float_image, downscale, input_view_psnr, prepare_inputs

logger = logging.getLogger(__name__)

PSNR_MAX_SIDE = 256  # the input-view PSNR is measured at most this size


class LGMOptions(LearnedOptions):
    """Options of the lgm backend.

    min_opacity: Gaussians fainter than this are dropped (LGM's exporter: 0.005).
    view_tolerance_deg: how far (rotation, and centre offset seen from the object) an extra view's
        camera may be from the expected rig camera.
    """

    min_opacity: float = Field(default=0.005, ge=0.0, lt=1.0)
    view_tolerance_deg: float = Field(default=5.0, gt=0.0, le=45.0)


class LGMBackend(ReconstructionBackend, LearnedBackend):
    """The ``lgm`` backend (see the module docstring)."""

    name = "lgm"
    Options = LGMOptions
    options: LGMOptions

    def _load_model(self) -> None:
        """Check the checkpoint against the architecture and load it."""
        root = self.require_model(MODEL_NAME, [CHECKPOINT_FILE])
        self._net = load_checkpoint(root / CHECKPOINT_FILE, device=self.device, dtype=self.dtype)

    def _reconstruct(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, camera: Camera,
                     views: Sequence[ExtraView], fit_steps: int, max_gaussians: int, seed: int) -> ReconstructionResult:
        net = self._net
        started = time.perf_counter()
        full = prepare_inputs(image, depth, mask, camera)
        for i, v in enumerate(views):
            if not isinstance(v, ExtraView):
                raise InvalidInput(f"views[{i}] must be an ExtraView, got {type(v).__name__}", field=f"views[{i}]")
        picked = [views[i] for i in select_views(camera, [v.camera for v in views], self.options.view_tolerance_deg)]
        frame = lgm_frame(camera)
        size = net.config.input_size
        images = [resample_view(full.image, full.mask, camera, size)]
        images += [resample_view(as_float_image(v.rgb, "views.rgb"), v.mask, v.camera, size) for v in picked]
        poses = [frame.pose_to_lgm(c.camera_to_world) for c in (camera, *(v.camera for v in picked))]
        x = torch.from_numpy(network_input(images, poses, size))[None]  # [1, 4, 9, S, S]
        check_cancelled()
        forward_started = time.perf_counter()
        with torch.inference_mode():
            raw = net(x.to(self.device, self.dtype))[0].float().cpu()  # [N, 14]
        forward_seconds = time.perf_counter() - forward_started
        check_cancelled()
        splat = lgm_to_splat(raw, frame, self.options.min_opacity, max_gaussians)
        if fit_steps:
            logger.info("lgm backend ignores fit_steps=%d (nothing is fitted)", fit_steps)
        metrics = {
            "num_gaussians": float(splat.num_gaussians),
            "num_predicted": float(raw.shape[0]),
            "forward_seconds": forward_seconds,
            "input_view_psnr_db": input_view_psnr(splat, downscale(full, PSNR_MAX_SIDE)),
            "total_seconds": time.perf_counter() - started,
        }
        logger.info("lgm: %d of %d Gaussians, input-view PSNR %.2f dB, forward %.2f s, total %.2f s",
                    splat.num_gaussians, raw.shape[0], metrics["input_view_psnr_db"], forward_seconds,
                    metrics["total_seconds"])
        return ReconstructionResult(splat, metrics)
