"""CLIP image similarity for MVCRM's drift check (transformers ``CLIPModel`` + ``CLIPImageProcessor``).

A diffusion-enhanced view can drift away from the object: a different face, an invented logo, a
texture from another object. Pixel-level trust (depth agreement) does not see that, because the
geometry may still agree. The check compares what the two images *show*: each image is embedded by
CLIP's image tower and the round is rejected when the cosine similarity of the two embeddings is
below a threshold (see :func:`.mvcrm.refine`, step 3).

:meth:`ClipImageScorer.score` takes two RGB images (float in [0, 1] or uint8, any sizes) and

1. quantises float images to uint8 (``round(255 x)``), the input the processor's rescaling expects
   (a float array would be divided by 255 a second time);
2. runs the checkpoint's own ``CLIPImageProcessor``: bicubic resize of the shortest edge to 224,
   centre crop 224 x 224, scale to [0, 1], normalise with CLIP's mean and std;
3. embeds both images in one batch with ``CLIPModel.get_image_features`` (the image tower's pooled
   output through the visual projection: 512 values for ViT-B/32, 768 for ViT-L/14);
4. returns the cosine similarity ``<e_a, e_b> / (|e_a| |e_b|)`` in [-1, 1], computed in float32.

Identical images score 1. The model is read from ``<model_dir>/<name>`` with the library's own
loading code and never from the network (:func:`~glimpse3d.core.models.offline_hub`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse3d.core.errors import Glimpse3DError, InvalidInput, NotReady
from glimpse3d.core.models import (
    DEFAULT_MODEL_DIR,
    DeviceOptions,
    ModelMissing,
    offline_hub,
    require_model,
    resolve_device,
    resolve_dtype,
)
from glimpse3d.services.backprojection.models import CLIP_BASE, CONFIG_FILES, WEIGHT_FILES

logger = logging.getLogger(__name__)


def check_model_name(name: object, field: str = "clip_model") -> str:
    """``<group>/<name>`` (a subdirectory of the model directory), else :class:`InvalidInput`."""
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise InvalidInput(f"{field} must be a model name '<group>/<name>', got {name!r}", field=field)
    return name


def clip_model_path(model_dir: Path | str, name: str) -> Path:
    """The folder of CLIP model ``name``: config files and one weight file must be there, else
    :class:`ModelMissing` naming what is absent and the ``make models`` step."""
    root = require_model(model_dir, name, CONFIG_FILES)
    if not any((root / w).is_file() for w in WEIGHT_FILES):
        raise ModelMissing(
            f"model {name!r} is not installed: no weights in {root} (looked for {' or '.join(WEIGHT_FILES)}). "
            f"Run `make models` (or `python -m glimpse3d.core.modelfetch --model-dir {Path(model_dir)} --only {name}`)",
            field="model_dir", metadata={"model": name, "path": str(root)},
        )
    return root


def to_uint8(image: object, field: str) -> np.ndarray:
    """[H, W, 3] uint8 from a uint8 image or a float image in [0, 1]."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        got = list(image.shape) if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"{field} must be an RGB image [H, W, 3], got {got}", field=field)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)  # flipped or strided views: the image processor needs positive strides
    if not np.issubdtype(image.dtype, np.floating) or not np.isfinite(image).all():
        raise InvalidInput(f"{field} must be uint8 or finite floating point, got {image.dtype}", field=field)
    return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


class ClipImageScorer:
    """A :class:`~.options.ClipScorer` on a transformers CLIP checkpoint in the model directory.

    model: the model name (``clip/clip-vit-base-patch32`` or ``clip/clip-vit-large-patch14`` from
    ``make models``, or any folder with the same layout). device / dtype: see
    :class:`~glimpse3d.core.models.DeviceOptions` (auto: CUDA in float16 when present, else CPU float32).
    """

    def __init__(
        self,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        model: str = CLIP_BASE,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = check_model_name(model)
        self.options = DeviceOptions(device=device, dtype=dtype)
        self._model: Any = None
        self._processor: Any = None
        self._device: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Read the processor and the model (idempotent); :class:`ModelMissing` when absent."""
        with self._lock:
            if self._model is not None:
                return
            offline_hub()
            root = clip_model_path(self.model_dir, self.name)
            from safetensors import SafetensorError
            from transformers import CLIPImageProcessor, CLIPModel

            device = resolve_device(self.options.device)
            dtype = resolve_dtype(self.options.dtype, device)
            try:
                processor = CLIPImageProcessor.from_pretrained(root, local_files_only=True)
                model = CLIPModel.from_pretrained(root, local_files_only=True, dtype=dtype)
            except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # truncated or foreign files
                raise ModelMissing(
                    f"CLIP model {self.name!r} at {root} cannot be read ({err}); run `make models` to fetch it again",
                    field="clip_model", metadata={"model": self.name, "path": str(root)},
                ) from err
            self._processor, self._device = processor, device
            self._model = model.to(device).eval()
            logger.info("CLIP scorer %s loaded on %s (%s)", self.name, device, dtype)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """[B, D] float32 unit-length image embeddings of RGB images (uint8, or float in [0, 1])."""
        if self._model is None:
            raise NotReady(f"CLIP scorer {self.name} is not loaded yet")
        import torch

        batch = [to_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
        pixels = self._processor(images=batch, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        with torch.inference_mode():
            out = self._model.get_image_features(pixel_values=pixels.to(self._device, self._model.dtype))
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output  # [B, D]
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of the CLIP image embeddings of ``a`` and ``b``, in [-1, 1]."""
        ea, eb = self.embed([a, b])
        value = float(np.dot(ea, eb))
        if not np.isfinite(value):
            raise Glimpse3DError(f"CLIP model {self.name} produced a non-finite embedding")
        return min(1.0, max(-1.0, value))
