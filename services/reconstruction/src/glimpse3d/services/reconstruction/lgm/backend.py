"""The learned ``lgm`` reconstruction backend: four posed views -> 3D Gaussians in one forward pass.

LGM (Large Multi-View Gaussian Model, Tang et al. 2024; weights ``ashawkey/LGM``) takes four
views of an object at elevation 0 and azimuths 0, 90, 180, 270 degrees and predicts one Gaussian
per output pixel per view (4 x 128 x 128 = 65,536 for the published model). Here the photo is the
front view and the three others come from the request's ``views`` (the gateway generates them with
the multiview service when ``reconstruction_views=3``):

1. :func:`.rays.select_views` picks the views whose cameras are the photo's turned about the
   vertical axis by +90, +180 and +270 degrees (InvalidInput naming ``views`` when any is missing);
2. :func:`.rays.lgm_frame` fixes the similarity between LGM's frame (front camera at distance 1.5)
   and the world; every view is resampled to LGM's 49.1 degree camera over white, normalised with
   the ImageNet mean/std and given the Plücker rays of its camera in LGM's frame (9 channels);
3. the network (:mod:`.unet`) runs once; its Gaussians are activated as published and carried into
   the world as a :class:`~glimpse3d.core.splat.Splat` (:mod:`.gaussians`).

The forward pass is deterministic: ``seed`` has nothing to draw and does not change the result.
``fit_steps`` does not apply (nothing is fitted) and is ignored; ``max_gaussians`` keeps the most
opaque Gaussians. ``input_view_psnr_db`` is the splat rendered at the photo's camera against the
photo inside the mask (at most 256 px on the longer side), over the photo's background colour.
Rendering is the ``lift`` backend's (:func:`..lift.render_views`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import InvalidInput, NotReady
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
    ExtraView,
    ReconstructionResult,
    RenderedImage,
    check_fit_options,
)
from glimpse3d.services.reconstruction.lgm.checkpoint import load_checkpoint
from glimpse3d.services.reconstruction.lgm.gaussians import lgm_to_splat
from glimpse3d.services.reconstruction.lgm.rays import lgm_frame, network_input, resample_view, select_views
from glimpse3d.services.reconstruction.lgm.source import CHECKPOINT_FILE, MODEL_NAME
from glimpse3d.services.reconstruction.lgm.unet import LGMNet
from glimpse3d.services.reconstruction.lift import as_float_image, downscale, masked_psnr, prepare_inputs, render_views

logger = logging.getLogger(__name__)

PSNR_MAX_SIDE = 256


class LGMBackend:
    """The ``lgm`` backend (see the module docstring).

    model_dir / device: from the service settings (``GLIMPSE3D_MODEL_DIR``, ``GLIMPSE3D_DEVICE``).
    dtype: ``auto`` (fp16 on CUDA, fp32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
    min_opacity: Gaussians fainter than this are dropped, in [0, 1) (LGM's exporter: 0.005).
    view_tolerance_deg: how far (rotation, and centre offset seen from the object) an extra view's
        camera may be from the expected rig camera, in (0, 45] degrees.
    """

    name = "lgm"

    def __init__(
        self,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        device: str = "auto",
        dtype: str = "auto",
        min_opacity: float = 0.005,
        view_tolerance_deg: float = 5.0,
    ) -> None:
        self.device_options = DeviceOptions(device=device, dtype=dtype)
        for field, value, lo, hi, closed in (("min_opacity", min_opacity, 0.0, 1.0, False),
                                             ("view_tolerance_deg", view_tolerance_deg, 0.0, 45.0, True)):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not (lo <= value < hi if not closed else lo < value <= hi):
                interval = f"[{lo:g}, {hi:g})" if not closed else f"({lo:g}, {hi:g}]"
                raise InvalidInput(f"lgm option {field} must be a number in {interval}, got {value!r}", field=field)
        self.model_dir = Path(model_dir)
        self.min_opacity = float(min_opacity)
        self.view_tolerance_deg = float(view_tolerance_deg)
        self._net: LGMNet | None = None
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._net is not None

    def load(self) -> None:
        """Check the checkpoint against the architecture and load it (idempotent)."""
        with self._lock:
            if self._net is not None:
                return
            offline_hub()
            root = require_model(self.model_dir, MODEL_NAME, [CHECKPOINT_FILE])
            device = resolve_device(self.device_options.device)
            dtype = resolve_dtype(self.device_options.dtype, device)
            started = time.perf_counter()
            net = load_checkpoint(root / CHECKPOINT_FILE, device=device, dtype=dtype)
            self._device, self._dtype, self._net = device, dtype, net
            logger.info("lgm loaded on %s (%s) in %.2f s", device, dtype, time.perf_counter() - started)

    def _require_ready(self) -> LGMNet:
        if self._net is None:
            raise NotReady("the lgm backend is not loaded yet")
        return self._net

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
        net = self._require_ready()
        check_fit_options(fit_steps, max_gaussians, seed, views)
        started = time.perf_counter()
        full = prepare_inputs(image, depth, mask, camera)
        for i, v in enumerate(views):
            if not isinstance(v, ExtraView):
                raise InvalidInput(f"views[{i}] must be an ExtraView, got {type(v).__name__}", field=f"views[{i}]")
        picked = [views[i] for i in select_views(camera, [v.camera for v in views], self.view_tolerance_deg)]
        frame = lgm_frame(camera)
        size = net.config.input_size
        images = [resample_view(full.image, full.mask, camera, size)]
        images += [resample_view(as_float_image(v.rgb, "views.rgb"), v.mask, v.camera, size) for v in picked]
        poses = [frame.pose_to_lgm(c.camera_to_world) for c in (camera, *(v.camera for v in picked))]
        x = torch.from_numpy(network_input(images, poses, size))[None]  # [1, 4, 9, S, S]
        check_cancelled()
        forward_started = time.perf_counter()
        with torch.inference_mode():
            raw = net(x.to(self._device, self._dtype))[0].float().cpu()  # [N, 14]
        forward_seconds = time.perf_counter() - forward_started
        check_cancelled()
        splat = lgm_to_splat(raw, frame, self.min_opacity, int(max_gaussians))
        if fit_steps:
            logger.info("lgm backend ignores fit_steps=%d (nothing is fitted)", fit_steps)
        metrics = {
            "num_gaussians": float(splat.num_gaussians),
            "num_predicted": float(raw.shape[0]),
            "forward_seconds": forward_seconds,
            "input_view_psnr_db": _input_psnr(splat, full),
            "total_seconds": time.perf_counter() - started,
        }
        logger.info("lgm: %d of %d Gaussians, input-view PSNR %.2f dB, forward %.2f s, total %.2f s",
                    splat.num_gaussians, raw.shape[0], metrics["input_view_psnr_db"], forward_seconds,
                    metrics["total_seconds"])
        return ReconstructionResult(splat, metrics)

    def render(
        self, splat: Splat, cameras: Sequence[Camera], background: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> list[RenderedImage]:
        self._require_ready()
        return render_views(splat, cameras, background)


def _input_psnr(splat: Splat, full) -> float:
    """PSNR of ``splat`` rendered at the (downscaled) photo camera against the photo, inside the mask."""
    work = downscale(full, PSNR_MAX_SIDE)
    with torch.no_grad():
        rgb = rasterize(splat, work.camera, background=tuple(work.background.tolist())).rgb.numpy()
    return masked_psnr(rgb, work.image, work.mask)
