"""Learned matting for the depth service: SAM 2 (``matting/sam2.1-hiera-tiny``) through transformers.

:class:`Sam2Matting` is what the ``silhouette`` and ``dpt`` backends use when their ``matting`` option
names a model (empty: the weight-free matte, :func:`~glimpse3d.services.depth.common.estimate_mask`).
Per call: an alpha channel that is not all opaque is the matte as it is; otherwise the weight-free
matte (with the user's points) gives the prompts (:func:`build_prompts`: its bounding box grown by
``BOX_MARGIN``, its innermost point, and the user's points as positive / negative points), SAM 2
predicts three candidates, the one with the highest predicted IoU is kept (:func:`select_mask`) and
the sigmoid of its logits at the photo's size is the matte. Loaded from the model directory (local
files only; ``preprocessor_config.json`` gives the image processor), run in float32 on every device
(``dtype`` is not used). Deterministic. Limits: the prompts come from the weight-free matte, so when
GrabCut picks the wrong object SAM 2 is steered to it too, until the user's points correct it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from pydantic import Field, field_validator

from glimpse3d.core.backend import BackendOptions, LearnedBackend, LearnedOptions
from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.services.depth.common import (
    DEFAULT_GRABCUT_ITERATIONS,
    DEFAULT_WORK_SIDE,
    check_image,
    check_points,
    estimate_mask,
)
from glimpse3d.services.depth.weights import MATTING_FILES, MATTING_NAMES, SAM2_TINY

log = logging.getLogger(__name__)

DEFAULT_MATTING = SAM2_TINY
BOX_MARGIN = 0.05  # the prompt box grows by this fraction of the image's width (x) and height (y)
KEEP, REMOVE = 1, 0  # SAM's point labels: positive, negative
SUPPORTED_MODEL_TYPES = ("sam2",)


def resolve_matting_name(model: str) -> str:
    """``matting/<name>`` or ``<name>`` -> the full model name; a ValueError otherwise."""
    full = model if "/" in model else f"matting/{model}"
    if full not in MATTING_NAMES:
        raise ValueError(f"must be one of {', '.join(MATTING_NAMES)}")
    return full


class GrabcutOptions(BackendOptions):
    """The weight-free matte's settings (:func:`~glimpse3d.services.depth.common.estimate_mask`)."""

    grabcut_iterations: int = Field(default=DEFAULT_GRABCUT_ITERATIONS, ge=1, le=20)
    work_side: int = Field(default=DEFAULT_WORK_SIDE, ge=32, le=2048)


class MatteOptions(GrabcutOptions):
    """The matte options of the ``silhouette`` and ``dpt`` backends. ``matting``: a matting model
    (:data:`~glimpse3d.services.depth.weights.MATTING_NAMES`); empty: the weight-free matte."""

    matting: str = ""

    @field_validator("matting")
    @classmethod
    def _matting(cls, value: str) -> str:
        if not value:
            return ""
        try:
            return resolve_matting_name(value)
        except ValueError as err:
            raise ValueError(f"{err} (or empty for the weight-free matte)") from None


class Sam2Options(GrabcutOptions, LearnedOptions):
    model: str = DEFAULT_MATTING

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return resolve_matting_name(value)


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


class Sam2Matting(LearnedBackend):
    """SAM 2 matting prompted by the weight-free matte and the user's points (module docstring); not a
    service backend of its own: the ``silhouette`` and ``dpt`` backends hold one."""

    service = "depth"
    name = "sam2-matting"
    Options = Sam2Options
    options: Sam2Options

    @property
    def model(self) -> str:
        return self.options.model

    def _load_model(self) -> None:
        root = self.require_model(self.model, MATTING_FILES)
        self._processor, network = _load_pretrained(root, self.model)
        self._network = network.to(self.device).eval()

    def _describe_loaded(self) -> dict[str, Any]:
        return {"model": self.model, "device": str(self.device)}

    def matte(self, image: np.ndarray, points: Sequence[tuple[float, float, bool]] = ()) -> np.ndarray:
        """Foreground matte of ``image`` (uint8/float [H, W, 3|4]) -> [H, W] float32 in [0, 1].

        ``points``: the user's corrections, ``(x, y, keep)`` with x, y fractions of the width and
        height. An alpha channel that is not all opaque is the matte as it is."""
        img = check_image(image)
        return self._run("matte", self._matte, img, check_points(points))

    def _matte(self, img: np.ndarray, points: list[tuple[float, float, bool]]) -> np.ndarray:
        if img.shape[2] == 4 and img[:, :, 3].min() < 255:
            return img[:, :, 3].astype(np.float32) / np.float32(255.0)
        rgb = np.ascontiguousarray(img[:, :, :3])
        o = self.options
        coarse = estimate_mask(rgb, iterations=o.grabcut_iterations, work_side=o.work_side, points=points)
        logits = self._predict_logits(rgb, build_prompts(coarse, points))  # [H, W]
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def predict_logits(self, rgb: np.ndarray, prompts: Prompts) -> np.ndarray:
        """uint8 [H, W, 3] and its prompts -> the chosen mask's logits at H x W, float32."""
        return self._run("predict_logits", self._predict_logits, rgb, prompts)

    def _predict_logits(self, rgb: np.ndarray, prompts: Prompts) -> np.ndarray:
        import torch

        rgb = np.require(rgb, np.uint8, ["C", "W"])  # torch.from_numpy wants a writable array
        prompt_args: dict[str, Any] = {"input_boxes": [[list(prompts.box)]]}  # [image, box, 4]
        if prompts.points:  # [image, object, point, 2] and [image, object, point]
            prompt_args.update(input_points=[[[list(p) for p in prompts.points]]],
                               input_labels=[[list(prompts.labels)]])
        inputs = self._processor(images=rgb, return_tensors="pt", input_data_format="channels_last", **prompt_args)
        tensors = {k: v.to(self.device) for k, v in inputs.items() if k != "original_sizes"}
        with torch.inference_mode():
            out = self._network(**tensors, multimask_output=True)
            best = select_mask(out.pred_masks, out.iou_scores)  # [1, 1, 1, h, w]
            full = self._processor.post_process_masks([best[0].float().cpu()], inputs["original_sizes"],
                                                      binarize=False)[0]  # [1, 1, H, W]
        logits = full[0, 0].numpy().astype(np.float32)
        if not np.isfinite(logits).all():
            raise FailedPrecondition(f"model {self.model} produced a non-finite matte", field="matting")
        return logits


def learned_matting(options: MatteOptions, model_dir: Path, device: str) -> Sam2Matting | None:
    """The :class:`Sam2Matting` that ``options.matting`` names (not loaded), or None for the weight-free matte."""
    if not options.matting:
        return None
    return Sam2Matting(model_dir, device, model=options.matting, grabcut_iterations=options.grabcut_iterations,
                       work_side=options.work_side)


def _load_pretrained(root: Path, name: str) -> tuple[Any, Any]:
    """(processor, network) from the transformers folder ``root``, local files only, float32."""
    import torch
    from safetensors import SafetensorError
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-tensor progress bars in the service log
    try:
        image_processor = Sam2ImageProcessor.from_pretrained(root, local_files_only=True)
        # output_loading_info=True: (model, loading info); transformers annotates the model alone
        network, info = cast(tuple[Sam2Model, dict[str, Any]], Sam2Model.from_pretrained(
            root, local_files_only=True, dtype=torch.float32, output_loading_info=True))
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
