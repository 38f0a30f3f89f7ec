"""CLIP image similarity for MVCRM's drift check (transformers ``CLIPModel`` + ``CLIPImageProcessor``).

:meth:`ClipImageScorer.score` quantises float images to uint8 (the input the processor's
rescaling expects), runs the checkpoint's own ``CLIPImageProcessor`` (resize, centre crop 224,
CLIP's mean and std), embeds both images in one batch with ``CLIPModel.get_image_features`` and
returns the cosine similarity of the embeddings in [-1, 1]; identical images score 1. The model is
read from ``<model_dir>/<model>`` and never from the network.

The scorer is not a service backend of its own: the ``mvcrm`` backend and the Triton
``backprojection_clip`` handler hold one, and it has the lifecycle of a :class:`LearnedBackend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import field_validator

from glimpse3d.core.backend import LearnedBackend, LearnedOptions
from glimpse3d.core.errors import Glimpse3DError, InvalidInput
from glimpse3d.core.models import ModelMissing, require_model
from glimpse3d.services.backprojection.weights import CLIP_BASE, CONFIG_FILES, WEIGHT_FILES


def check_model_name(name: str) -> str:
    """``<group>/<name>`` (a subdirectory of the model directory), else ValueError."""
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise ValueError("must be a model name '<group>/<name>'")
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


class ClipOptions(LearnedOptions):
    """model: a CLIP checkpoint in the model directory (``make models`` fetches
    ``clip/clip-vit-base-patch32`` and ``clip/clip-vit-large-patch14``)."""

    model: str = CLIP_BASE

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return check_model_name(value)


class ClipImageScorer(LearnedBackend):
    """A :class:`~.api.ClipScorer` on a transformers CLIP checkpoint; ``ClipImageScorer(model_dir,
    model, device=, dtype=)``."""

    service = "backprojection"
    name = "clip"
    Options = ClipOptions
    options: ClipOptions

    def __init__(self, model_dir: Path | str | None = None, model: str | None = None, /, **values: Any) -> None:
        if model is not None:
            values["model"] = model
        super().__init__(model_dir, **values)

    def _setup(self) -> None:
        self._model: Any = None
        self._processor: Any = None

    @property
    def label(self) -> str:
        """The model's name (reports name it: thresholds are model specific)."""
        return self.options.model

    def _load_model(self) -> None:
        root = clip_model_path(self.model_dir, self.label)
        from safetensors import SafetensorError
        from transformers import CLIPImageProcessor, CLIPModel

        try:
            processor = CLIPImageProcessor.from_pretrained(root, local_files_only=True)
            model = CLIPModel.from_pretrained(root, local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # truncated or foreign files
            raise ModelMissing(
                f"CLIP model {self.label!r} at {root} cannot be read ({err}); run `make models` to fetch it again",
                field="clip_model", metadata={"model": self.label, "path": str(root)},
            ) from err
        self._processor = processor
        self._model = model.to(self.device).eval()

    def _describe_loaded(self) -> dict[str, Any]:
        return {"model": self.label, **super()._describe_loaded()}

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """[B, D] float32 unit-length image embeddings of RGB images (uint8, or float in [0, 1])."""
        return self._run("embed", self._embed, images)

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of the CLIP image embeddings of ``a`` and ``b``, in [-1, 1]."""
        return self._run("score", self._score, a, b)

    def _embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        batch = [to_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
        pixels = self._processor(images=batch, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        with torch.inference_mode():
            out = self._model.get_image_features(pixel_values=pixels.to(self.device, self._model.dtype))
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output  # [B, D]
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def _score(self, a: np.ndarray, b: np.ndarray) -> float:
        ea, eb = self._embed([a, b])
        value = float(np.dot(ea, eb))
        if not np.isfinite(value):
            raise Glimpse3DError(f"CLIP model {self.label} produced a non-finite embedding")
        return min(1.0, max(-1.0, value))
