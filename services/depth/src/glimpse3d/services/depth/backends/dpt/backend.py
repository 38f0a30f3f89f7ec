"""The learned ``dpt`` depth backend: MiDaS v3 (DPT) and Depth Anything V2 through transformers.

Per call: the matte (:class:`~glimpse3d.services.depth.matting.MatteOptions`: alpha, the weight-free
matte, or SAM 2); the RGB composited over a grey ``background`` where alpha < 1, and a photo longer
than 2:1 centred on a grey canvas of aspect 2 (bounded work, no zero-pixel side after the
processor's resize); the network's relative disparity resized back to H x W (``interpolation``,
float32 whatever the model's dtype); then metric z (:mod:`.metric`), 0 outside the mask.

Models (``model``; :mod:`glimpse3d.services.depth.weights`) load with ``AutoModelForDepthEstimation``
/ ``AutoImageProcessor`` from local files only; a metric-depth checkpoint is refused. Deterministic.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from glimpse3d.core.backend import BackendOptions, LearnedBackend, LearnedOptions
from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition, Glimpse3DError
from glimpse3d.services.depth.api import DepthBackend, DepthResult
from glimpse3d.services.depth.backends.dpt.metric import DepthScale, disparity_to_depth
from glimpse3d.services.depth.common import check_image, estimate_mask
from glimpse3d.services.depth.matting import MatteOptions, Sam2Matting, learned_matting
from glimpse3d.services.depth.weights import CONFIG_FILES, DPT_HYBRID, MODEL_NAMES, WEIGHTS_FILE

log = logging.getLogger(__name__)

DEFAULT_BACKGROUND = 0.5
MAX_ASPECT = 2.0  # longer photos are padded to this aspect ratio before the network sees them
SUPPORTED_MODEL_TYPES = ("dpt", "depth_anything")
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"


def resolve_model_name(model: str) -> str:
    """``depth/<name>`` or ``<name>`` -> the full model name; a ValueError otherwise."""
    full = model if "/" in model else f"depth/{model}"
    if full not in MODEL_NAMES:
        raise ValueError(f"must be one of {', '.join(MODEL_NAMES)}")
    return full


def model_input(image: np.ndarray, background: float) -> np.ndarray:
    """uint8 [H, W, 3|4] -> uint8 [H, W, 3]: RGB, composited over grey ``background`` where alpha < 1."""
    if image.shape[2] == 3 or image[:, :, 3].min() == 255:
        return np.ascontiguousarray(image[:, :, :3])
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0  # [H, W, 1]
    rgb = image[:, :, :3].astype(np.float32) * alpha + (255.0 * background) * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def pad_to_aspect(rgb: np.ndarray, max_aspect: float, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [H, W, 3] -> (the image centred on a grey ``fill`` canvas whose long side is at most
    ``max_aspect`` times its short side, (top, left) offset of the image in it)."""
    h, w = rgb.shape[:2]
    ph, pw = max(h, math.ceil(w / max_aspect)), max(w, math.ceil(h / max_aspect))
    if (ph, pw) == (h, w):
        return rgb, (0, 0)
    top, left = (ph - h) // 2, (pw - w) // 2
    canvas = np.full((ph, pw, 3), round(255 * fill), np.uint8)
    canvas[top:top + h, left:left + w] = rgb
    return canvas, (top, left)


class DptOptions(DepthScale, MatteOptions, LearnedOptions):
    """``model``: the depth network; ``interpolation``: how its prediction is resized back;
    ``background``: the grey behind transparent pixels; the rest: :class:`.metric.DepthScale`,
    :class:`~glimpse3d.services.depth.matting.MatteOptions` and the learned backends' options."""

    model: str = DPT_HYBRID
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    background: float = Field(default=DEFAULT_BACKGROUND, ge=0.0, le=1.0)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return resolve_model_name(value)


class DptDepthBackend(LearnedBackend, DepthBackend):
    """Learned depth backend: transformers DPT / Depth Anything disparity, made metric (module docstring)."""

    name = "dpt"
    Options: ClassVar[type[BackendOptions]] = DptOptions
    options: DptOptions

    def _setup(self) -> None:
        self.matting: Sam2Matting | None = learned_matting(self.options, self.options.model_dir, self.options.device)

    @property
    def model(self) -> str:
        return self.options.model

    def _model_root(self) -> Path:
        root = self.require_model(self.model, CONFIG_FILES)
        if not (root / WEIGHTS_FILE).is_file() and not (root / LEGACY_WEIGHTS_FILE).is_file():
            self.require_model(self.model, (WEIGHTS_FILE,))  # raises ModelMissing naming it
        return root

    def _load_model(self) -> None:
        if self.matting is not None:
            self.matting.load()
        root = self._model_root()
        self._processor, network = _load_pretrained(root, self.model, self.dtype)
        self._network = network.to(self.device).eval()

    def _describe_loaded(self) -> dict[str, Any]:
        return {**super()._describe_loaded(), "model": self.model, "class": type(self._network).__name__}

    def _pixel_values(self, rgb: np.ndarray):  # -> torch.Tensor [1, 3, h', w']
        return self._processor(images=rgb, return_tensors="pt", input_data_format="channels_last")["pixel_values"]

    def predict_disparity(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3|4] -> the network's relative inverse depth [H, W] float32 (larger = nearer)."""
        return self._run("predict_disparity", self._predict_disparity, check_image(image))

    def _predict_disparity(self, img: np.ndarray) -> np.ndarray:
        import torch

        h, w = img.shape[:2]
        background = self.options.background
        padded, (top, left) = pad_to_aspect(model_input(img, background), MAX_ASPECT, background)
        pixels = self._pixel_values(padded)  # [1, 3, h', w']
        with torch.inference_mode():
            pred = self._network(pixel_values=pixels.to(self.device, self.dtype)).predicted_depth  # [1, h', w']
            full = torch.nn.functional.interpolate(  # [1, 1, H_pad, W_pad]
                pred[:, None].float(), size=padded.shape[:2], mode=self.options.interpolation, align_corners=False)
        disparity = full[0, 0, top:top + h, left:left + w].cpu().numpy().astype(np.float32)  # [H, W]
        if not np.isfinite(disparity).all():
            raise Glimpse3DError(
                f"model {self.model} produced non-finite disparity in {str(self.dtype).removeprefix('torch.')}; "
                "run it in float32 (option dtype)", field="dtype")
        return disparity

    def _matte(self, image: np.ndarray, points: list[tuple[float, float, bool]]) -> np.ndarray:
        if self.matting is not None:
            return self.matting.matte(image, points)
        o = self.options
        return estimate_mask(image, iterations=o.grabcut_iterations, work_side=o.work_side, points=points)

    def _estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        mask = self._matte(image, [])  # [H, W]
        check_cancelled()
        disparity = self._predict_disparity(image)  # [H, W]
        check_cancelled()
        depth = disparity_to_depth(disparity, mask, camera, self.options)
        return DepthResult(depth=depth, mask=mask)


def _load_pretrained(root: Path, name: str, dtype: Any) -> tuple[Any, Any]:
    """(image processor, network) from the transformers folder ``root``, local files only."""
    from safetensors import SafetensorError
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-tensor progress bars in the service log
    try:
        processor = AutoImageProcessor.from_pretrained(root, local_files_only=True)
        network, info = AutoModelForDepthEstimation.from_pretrained(
            root, local_files_only=True, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise FailedPrecondition(
            f"model {name!r} at {root} could not be loaded ({type(err).__name__}: {str(err)[:300]}); "
            "run `make models` to fetch it again", field="model_dir", metadata={"model": name, "path": str(root)},
        ) from err
    model_type = getattr(network.config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FailedPrecondition(f"model {name!r} is a {model_type!r} model; the dpt backend runs "
                                 f"{' and '.join(SUPPORTED_MODEL_TYPES)} models", field="model")
    if getattr(network.config, "depth_estimation_type", "relative") != "relative":
        raise FailedPrecondition(f"model {name!r} predicts metric depth; the dpt backend expects relative "
                                 "inverse depth (a relative Depth Anything checkpoint)", field="model")
    if info.get("missing_keys"):
        log.warning("weights missing from the checkpoint were left at their initial values",
                    extra={"model": name, "missing": sorted(info["missing_keys"])[:20]})
    return processor, network
