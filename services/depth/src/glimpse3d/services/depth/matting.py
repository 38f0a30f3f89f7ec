"""Learned matting for the depth service: SAM 2 (``matting/sam2.1-hiera-tiny``) through transformers.

:class:`Sam2Matting` turns a photo into a soft foreground matte. It is what the ``silhouette`` and
``dpt`` backends use when their ``matting`` option names a model (empty: the weight-free GrabCut
matte of :func:`glimpse3d.services.depth.silhouette.estimate_mask`). Per call (:meth:`Sam2Matting.matte`):

1. An alpha channel that is not all opaque is the matte, returned as it is (the user drew it).
2. Prompts (:func:`build_prompts`, a pure function): the weight-free matte, computed with the
   user's correction points, gives

   - a box: the bounding box of its pixels >= 0.5, grown by ``BOX_MARGIN`` (5 %) of the image's
     width (x) and height (y), clipped to the image;
   - one positive point: the interior point farthest from the matte's edge (the maximum of
     ``cv2.distanceTransform``; the frame counts as edge);
   - the user's points, ``(x, y, keep)`` with x, y fractions of the width and height, as positive
     (keep, label 1) or negative (remove, label 0) points at pixel ``(x (W - 1), y (H - 1))``, the
     pixel :func:`~glimpse3d.services.depth.silhouette.estimate_mask` seeds for the same point.

   When the weight-free matte is empty (every pixel removed) the box is the whole image and only
   the user's points remain.
3. SAM 2 (``Sam2Model``, ``multimask_output=True``) predicts three candidate masks and their
   predicted IoU; the one with the highest predicted IoU is kept (:func:`select_mask`), its logits
   are resized to the photo's H x W (``Sam2Processor.post_process_masks(..., binarize=False)``,
   bilinear) and the sigmoid of the logits is the soft matte, float32 in [0, 1].

Loading (:meth:`Sam2Matting.load`, thread-safe, idempotent): local files only,
``Sam2Model.from_pretrained(root)`` and ``Sam2Processor(image_processor=Sam2ImageProcessor.from_pretrained(root))``
from ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``. The published
``processor_config.json`` names a video processor and is not used. The network runs in float32 on
every device (0.16 GB of weights); ``device="auto"`` picks CUDA when present. The matte is
deterministic: no sampling, no seed.

Measured on the tiny random SAM 2 that :mod:`glimpse3d.services.depth.tiny` writes in the production
layout (128 px input, 123k parameters; tests/test_matting.py), float32 on two shared CPU cores (two
torch threads), medians of 15 runs: loading takes 0.06-0.08 s once transformers is imported (about
0.2 s for the first load in a process); one 256 x 256 photo (an orange disc on grey) takes 82 ms end
to end, of which the weight-free matte that builds the prompts (GrabCut) is 70 ms and SAM 2 with its
pre- and post-processing 11 ms.

Limits: SAM 2's matte quality with the production weights is not measured (the tests run only the
tiny random model): neither against the weight-free matte on the photos of
tests/test_matte_photos.py nor its speed at its 1024 px input. The tests prove the wiring (prompts,
loading from the published layout, mask selection, resizing, backends and server), not the
quality. The prompts come from the weight-free matte: when GrabCut picks the wrong object, the box
steers SAM 2 to that wrong object too, until the user's points correct it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from glimpse3d.core.errors import FailedPrecondition, InvalidInput, NotReady
from glimpse3d.core.models import DEFAULT_MODEL_DIR, DeviceOptions, offline_hub, require_model, resolve_device
from glimpse3d.services.depth.models import MATTING_FILES, MATTING_NAMES, SAM2_TINY
from glimpse3d.services.depth.silhouette import (
    DEFAULT_GRABCUT_ITERATIONS,
    DEFAULT_WORK_SIDE,
    _check_image,
    _check_points,
    estimate_mask,
)

log = logging.getLogger(__name__)

DEFAULT_MATTING = SAM2_TINY
BOX_MARGIN = 0.05  # the prompt box grows by this fraction of the image's width (x) and height (y)
KEEP, REMOVE = 1, 0  # SAM's point labels: positive, negative
SUPPORTED_MODEL_TYPES = ("sam2",)


def resolve_matting_name(model: object) -> str:
    """``matting/<name>`` or ``<name>`` -> the full model name; anything else is an InvalidInput."""
    name = model if isinstance(model, str) else ""
    full = name if "/" in name else f"matting/{name}"
    if full not in MATTING_NAMES:
        raise InvalidInput(f"matting must be one of {', '.join(MATTING_NAMES)} (or empty for the weight-free "
                           f"matte), got {model!r}", field="matting")
    return full


# --------------------------------------------------------------------------------------------- #
# Prompts and mask selection (pure)
# --------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Prompts:
    """SAM 2's prompts for one photo, in pixel coordinates of the photo (SAM's convention: pixel
    ``(i, j)`` is at ``x = i, y = j``)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    points: tuple[tuple[float, float], ...]  # (x, y) each
    labels: tuple[int, ...]  # KEEP (1) or REMOVE (0), one per point


def build_prompts(coarse: np.ndarray, points: Sequence[tuple[float, float, bool]] = ()) -> Prompts:
    """Prompts from the weight-free matte ``coarse`` ([H, W] in [0, 1]) and the user's checked
    ``points`` ((x, y, keep), x, y fractions of the width and height); see the module docstring."""
    h, w = coarse.shape
    inside = coarse >= 0.5  # [H, W]
    xy: list[tuple[float, float]] = []
    labels: list[int] = []
    if inside.any():
        ys, xs = np.nonzero(inside)
        mx, my = BOX_MARGIN * w, BOX_MARGIN * h
        box = (max(0.0, xs.min() - mx), max(0.0, ys.min() - my),
               min(w - 1.0, xs.max() + mx), min(h - 1.0, ys.max() + my))
        dist = cv2.distanceTransform(np.pad(inside.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        cy, cx = np.unravel_index(int(np.argmax(dist[1:-1, 1:-1])), (h, w))
        xy.append((float(cx), float(cy)))
        labels.append(KEEP)
    else:
        box = (0.0, 0.0, w - 1.0, h - 1.0)
    for x, y, keep in points:
        xy.append((float(x) * (w - 1), float(y) * (h - 1)))
        labels.append(KEEP if keep else REMOVE)
    return Prompts(box=tuple(float(v) for v in box), points=tuple(xy), labels=tuple(labels))  # type: ignore[arg-type]


def select_mask(pred_masks: Any, iou_scores: Any) -> Any:
    """The candidate with the highest predicted IoU: ``pred_masks`` [B, P, K, h, w] and
    ``iou_scores`` [B, P, K] (torch tensors, as ``Sam2Model`` returns them) -> [B, P, 1, h, w]."""
    import torch

    best = torch.argmax(iou_scores, dim=-1)  # [B, P]
    index = best[..., None, None, None].expand(*pred_masks.shape[:2], 1, *pred_masks.shape[-2:])
    return torch.gather(pred_masks, 2, index)


# --------------------------------------------------------------------------------------------- #
# The model
# --------------------------------------------------------------------------------------------- #


class Sam2Matting:
    """SAM 2 matting prompted by the weight-free matte and the user's points (module docstring).

    ``grabcut_iterations`` / ``work_side``: the weight-free matte that builds the prompts
    (:func:`~glimpse3d.services.depth.silhouette.estimate_mask`)."""

    def __init__(
        self,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        model: str = DEFAULT_MATTING,
        device: str = "auto",
        *,
        grabcut_iterations: int = DEFAULT_GRABCUT_ITERATIONS,
        work_side: int = DEFAULT_WORK_SIDE,
    ) -> None:
        self.model = resolve_matting_name(model)
        self._model_dir = Path(model_dir)
        self._devices = DeviceOptions(device=device)
        for field, value, lo, hi in (("grabcut_iterations", grabcut_iterations, 1, 20),
                                     ("work_side", work_side, 32, 2048)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or int(value) != value or not lo <= value <= hi:
                raise InvalidInput(f"{field} must be an integer in {lo}..{hi}, got {value!r}", field=field)
        self._iterations = int(grabcut_iterations)
        self._work_side = int(work_side)
        self._lock = threading.Lock()
        self._network: Any = None
        self._processor: Any = None
        self._device: Any = None

    @property
    def ready(self) -> bool:
        return self._network is not None

    def load(self) -> None:
        """Load the processor and network from the model directory onto the device. Idempotent."""
        with self._lock:
            if self._network is not None:
                return
            start = time.perf_counter()
            offline_hub()
            root = require_model(self._model_dir, self.model, MATTING_FILES)
            device = resolve_device(self._devices.device)
            processor, network = _load_pretrained(root, self.model)
            self._processor, self._device = processor, device
            self._network = network.to(device).eval()
            log.info("sam2 matting ready", extra={"model": self.model, "device": str(device),
                                                  "seconds": round(time.perf_counter() - start, 2)})

    def matte(self, image: np.ndarray, points: Sequence[tuple[float, float, bool]] = ()) -> np.ndarray:
        """Foreground matte of ``image`` (uint8/float [H, W, 3|4]) -> [H, W] float32 in [0, 1].

        ``points``: the user's corrections, ``(x, y, keep)`` with x, y fractions of the width and
        height. An alpha channel that is not all opaque is the matte as it is."""
        if self._network is None:
            raise NotReady("the sam2 matting model is not loaded yet", field="backend")
        img = _check_image(image)
        corrections = _check_points(points)
        if img.shape[2] == 4 and img[:, :, 3].min() < 255:
            return img[:, :, 3].astype(np.float32) / np.float32(255.0)
        rgb = np.ascontiguousarray(img[:, :, :3])
        coarse = estimate_mask(rgb, iterations=self._iterations, work_side=self._work_side, points=corrections)
        logits = self.predict_logits(rgb, build_prompts(coarse, corrections))  # [H, W]
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def predict_logits(self, rgb: np.ndarray, prompts: Prompts) -> np.ndarray:
        """uint8 [H, W, 3] and its prompts -> the chosen mask's logits at H x W, float32."""
        if self._network is None:
            raise NotReady("the sam2 matting model is not loaded yet", field="backend")
        import torch

        rgb = np.require(rgb, np.uint8, ["C", "W"])  # torch.from_numpy wants a writable array
        prompt_args: dict[str, Any] = {"input_boxes": [[list(prompts.box)]]}  # [image, box, 4]
        if prompts.points:  # [image, object, point, 2] and [image, object, point]
            prompt_args.update(input_points=[[[list(p) for p in prompts.points]]],
                               input_labels=[[list(prompts.labels)]])
        inputs = self._processor(images=rgb, return_tensors="pt", input_data_format="channels_last", **prompt_args)
        tensors = {k: v.to(self._device) for k, v in inputs.items() if k != "original_sizes"}
        with torch.inference_mode():
            out = self._network(**tensors, multimask_output=True)
            best = select_mask(out.pred_masks, out.iou_scores)  # [1, 1, 1, h, w]
            full = self._processor.post_process_masks([best[0].float().cpu()], inputs["original_sizes"],
                                                      binarize=False)[0]  # [1, 1, H, W]
        logits = full[0, 0].numpy().astype(np.float32)
        if not np.isfinite(logits).all():
            raise FailedPrecondition(f"model {self.model} produced a non-finite matte", field="matting")
        return logits


def _load_pretrained(root: Path, name: str) -> tuple[Any, Any]:
    """(processor, network) from the transformers folder ``root``, local files only, float32."""
    import torch
    from safetensors import SafetensorError
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-tensor progress bars in the service log
    try:
        image_processor = Sam2ImageProcessor.from_pretrained(root, local_files_only=True)
        network, info = Sam2Model.from_pretrained(root, local_files_only=True, dtype=torch.float32,
                                                  output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as err:
        raise FailedPrecondition(
            f"model {name!r} at {root} could not be loaded ({type(err).__name__}: {str(err)[:300]}); "
            "run `make models` to fetch it again", field="model_dir", metadata={"model": name, "path": str(root)},
        ) from err
    model_type = getattr(network.config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FailedPrecondition(f"model {name!r} is a {model_type!r} model; matting runs SAM 2 ('sam2') models",
                                 field="matting")
    if info.get("missing_keys"):
        log.warning("weights missing from the checkpoint were left at their initial values",
                    extra={"model": name, "missing": sorted(info["missing_keys"])[:20]})
    return Sam2Processor(image_processor=image_processor), network
