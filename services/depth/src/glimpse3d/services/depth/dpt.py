"""The learned ``dpt`` depth backend: MiDaS v3 (DPT) and Depth Anything V2 through transformers.

Per call (:meth:`DptDepthBackend.estimate`):

1. Matte (:meth:`DptDepthBackend.matte`): an alpha channel that is not all opaque is the matte;
   otherwise the weight-free backend's GrabCut matte
   (:func:`glimpse3d.services.depth.silhouette.estimate_mask`), or, when the ``matting`` option names
   a model (``matting/sam2.1-hiera-tiny``), SAM 2 prompted by that matte
   (:mod:`glimpse3d.services.depth.matting`, loaded by :meth:`DptDepthBackend.load` too).
2. Model input: RGB; where alpha is below 1 the colour is composited over a uniform grey
   (``background``) so whatever the transparent pixels hold does not reach the network.
3. Disparity: the model's ``DPTImageProcessor`` (from its ``preprocessor_config.json``) resizes and
   normalises the image to the network's size (DPT: 384 x 384; Depth Anything: aspect kept, sides
   multiples of 14 around 518 px); the network predicts relative inverse depth at that size, and
   the prediction is resized back to the input's H x W (``interpolation``: bicubic or bilinear,
   ``align_corners=False``), in float32 whatever the model's dtype. Any H, W works: a photo more
   than twice as long as it is wide is first centred on a ``background`` grey canvas of aspect 2
   (and the prediction cropped back), which keeps the network's work bounded (Depth Anything keeps
   the aspect, so a 518 x 8192 strip would be about 21 600 tokens) and keeps the aspect-keeping resize
   from rounding the short side of a thin strip to 0 pixels.
4. Metric z: :func:`glimpse3d.services.depth.metric.disparity_to_depth` maps the affine-invariant
   disparity to camera-space z in world units (object centre at the camera's distance to the world
   origin, depth extent from the silhouette size); 0 outside the mask.

Models (``model`` option; :mod:`glimpse3d.services.depth.models`): ``depth/dpt-hybrid-midas``
(default), ``depth/dpt-large``, ``depth/depth-anything-v2-small``, ``-base``, ``-large``; loaded from
the model directory with ``AutoModelForDepthEstimation`` / ``AutoImageProcessor`` and
``local_files_only=True``. Only relative-depth models are accepted: a Depth Anything config with
``depth_estimation_type: metric`` outputs metres, not disparity, and is refused at load.

Device: ``auto`` runs on CUDA when present (float16 there, float32 on the CPU; ``dtype`` overrides).
The prediction is deterministic: no sampling, no seed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition, Glimpse3DError, InvalidInput, NotReady
from glimpse3d.core.models import (
    DEFAULT_MODEL_DIR,
    DeviceOptions,
    offline_hub,
    require_model,
    resolve_device,
    resolve_dtype,
)
from glimpse3d.services.depth.backends import DepthResult
from glimpse3d.services.depth.metric import (
    DEFAULT_DEPTH_EXTENT,
    DEFAULT_PERCENTILE,
    DepthScale,
    disparity_to_depth,
)
from glimpse3d.services.depth.models import CONFIG_FILES, DPT_HYBRID, MODEL_NAMES, WEIGHTS_FILE
from glimpse3d.services.depth.silhouette import (
    DEFAULT_GRABCUT_ITERATIONS,
    DEFAULT_WORK_SIDE,
    _check_camera,
    _check_image,
    estimate_mask,
    learned_matting,
)

log = logging.getLogger(__name__)

Interpolation = Literal["bicubic", "bilinear"]
DEFAULT_BACKGROUND = 0.5
MAX_ASPECT = 2.0  # longer photos are padded to this aspect ratio before the network sees them
SUPPORTED_MODEL_TYPES = ("dpt", "depth_anything")
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"


def resolve_model_name(model: object) -> str:
    """``depth/<name>`` or ``<name>`` -> the full model name; anything else is an InvalidInput."""
    name = model if isinstance(model, str) else ""
    full = name if "/" in name else f"depth/{name}"
    if full not in MODEL_NAMES:
        raise InvalidInput(f"model must be one of {', '.join(MODEL_NAMES)}, got {model!r}", field="model")
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


def _check_int(value: object, field: str, lo: int, hi: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or not lo <= value <= hi:  # type: ignore[arg-type]
        raise InvalidInput(f"{field} must be an integer in {lo}..{hi}, got {value!r}", field=field)
    return int(value)  # type: ignore[arg-type]


def _check_fraction(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{field} must be a number in [0, 1], got {value!r}", field=field)
    return float(value)


class DptDepthBackend:
    """Learned depth backend: transformers DPT / Depth Anything disparity, made metric (module docstring)."""

    name = "dpt"

    def __init__(
        self,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        device: str = "auto",
        *,
        model: str = DPT_HYBRID,
        dtype: str = "auto",
        interpolation: Interpolation = "bicubic",
        depth_extent: float = DEFAULT_DEPTH_EXTENT,
        percentile: float = DEFAULT_PERCENTILE,
        object_distance: float | None = None,
        background: float = DEFAULT_BACKGROUND,
        grabcut_iterations: int = DEFAULT_GRABCUT_ITERATIONS,
        work_side: int = DEFAULT_WORK_SIDE,
        matting: str = "",
    ) -> None:
        self.model = resolve_model_name(model)
        self._model_dir = Path(model_dir)
        self._devices = DeviceOptions(device=device, dtype=dtype)
        if interpolation not in get_args(Interpolation):
            raise InvalidInput(f"interpolation must be bicubic or bilinear, got {interpolation!r}",
                               field="interpolation")
        self._interpolation = interpolation
        self.scale = DepthScale(depth_extent=depth_extent, percentile=percentile, object_distance=object_distance)
        self._background = _check_fraction(background, "background")
        self._iterations = _check_int(grabcut_iterations, "grabcut_iterations", 1, 20)
        self._work_side = _check_int(work_side, "work_side", 32, 2048)
        self._matting = learned_matting(matting, model_dir, device, self._iterations, self._work_side)
        self._lock = threading.Lock()
        self._network: Any = None
        self._processor: Any = None
        self._device: Any = None
        self._dtype: Any = None

    @property
    def ready(self) -> bool:
        return self._network is not None and (self._matting is None or self._matting.ready)

    # ----------------------------------------------------------------------------------------- #
    # Loading
    # ----------------------------------------------------------------------------------------- #

    def _model_root(self) -> Path:
        root = require_model(self._model_dir, self.model, CONFIG_FILES)
        if not (root / WEIGHTS_FILE).is_file() and not (root / LEGACY_WEIGHTS_FILE).is_file():
            require_model(self._model_dir, self.model, (WEIGHTS_FILE,))  # raises ModelMissing naming it
        return root

    def load(self) -> None:
        """Load the processor and network (and the matting model, when one is configured) from the
        model directory onto the device. Idempotent."""
        if self._matting is not None:
            self._matting.load()
        with self._lock:
            if self._network is not None:
                return
            start = time.perf_counter()
            offline_hub()
            root = self._model_root()
            device = resolve_device(self._devices.device)
            dtype = resolve_dtype(self._devices.dtype, device)
            processor, network = _load_pretrained(root, self.model, dtype)
            self._processor, self._device, self._dtype = processor, device, dtype
            self._network = network.to(device).eval()
            log.info("dpt depth backend ready", extra={
                "model": self.model, "class": type(network).__name__, "device": str(device),
                "dtype": str(dtype).removeprefix("torch."), "seconds": round(time.perf_counter() - start, 2)})

    # ----------------------------------------------------------------------------------------- #
    # Inference
    # ----------------------------------------------------------------------------------------- #

    def _pixel_values(self, rgb: np.ndarray):  # -> torch.Tensor [1, 3, h', w']
        return self._processor(images=rgb, return_tensors="pt", input_data_format="channels_last")["pixel_values"]

    def predict_disparity(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3|4] -> the network's relative inverse depth [H, W] float32 (larger = nearer)."""
        if self._network is None:
            raise NotReady("the dpt depth backend is not loaded yet", field="backend")
        import torch

        img = _check_image(image)
        h, w = img.shape[:2]
        padded, (top, left) = pad_to_aspect(model_input(img, self._background), MAX_ASPECT, self._background)
        pixels = self._pixel_values(padded)  # [1, 3, h', w']
        with torch.inference_mode():
            pred = self._network(pixel_values=pixels.to(self._device, self._dtype)).predicted_depth  # [1, h', w']
            full = torch.nn.functional.interpolate(  # [1, 1, H_pad, W_pad]
                pred[:, None].float(), size=padded.shape[:2], mode=self._interpolation, align_corners=False)
        disparity = full[0, 0, top:top + h, left:left + w].cpu().numpy().astype(np.float32)  # [H, W]
        if not np.isfinite(disparity).all():
            raise Glimpse3DError(
                f"model {self.model} produced non-finite disparity in {str(self._dtype).removeprefix('torch.')}; "
                "run it in float32 (option dtype)", field="dtype")
        return disparity

    def matte(self, image: np.ndarray, points: Sequence[tuple[float, float, bool]] = ()) -> np.ndarray:
        """Foreground matte [H, W] float32 in [0, 1]: the matting model's when one is configured, else
        the weight-free :func:`~glimpse3d.services.depth.silhouette.estimate_mask`; ``points`` are the
        user's corrections."""
        if self._matting is not None:
            return self._matting.matte(image, points)
        return estimate_mask(image, iterations=self._iterations, work_side=self._work_side, points=points)

    def estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        if not self.ready:
            raise NotReady("the dpt depth backend is not loaded yet", field="backend")
        img = _check_image(image)
        cam = _check_camera(camera, (img.shape[0], img.shape[1]))
        mask = self.matte(img)  # [H, W]
        check_cancelled()
        disparity = self.predict_disparity(img)  # [H, W]
        check_cancelled()
        depth = disparity_to_depth(disparity, mask, cam, self.scale)
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
