"""The learned metrics: LPIPS (VGG) and CLIP image similarity, when their weights are installed.

Both read ``GLIMPSE3D_MODEL_DIR`` (``make models``) and nothing else: no download at run time. When
the weights are absent the metric is reported as ``"n/a: no weights (...)"``, never estimated.

- LPIPS: the reference implementation (the ``lpips`` package, Zhang et al. 2018, v0.1 linear heads
  shipped in its wheel) on the VGG-16 backbone from :data:`.models.LPIPS_VGG`; images in [0, 1]
  are mapped to [-1, 1] as LPIPS expects. Lower is better; 0 for identical images.
- CLIP: cosine similarity of the image embeddings of the backprojection service's CLIP scorer
  (``clip/clip-vit-base-patch32``); 1 for identical images.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse3d.core.errors import Glimpse3DError
from glimpse3d.core.models import default_model_dir
from glimpse3d.research.models import LPIPS_VGG

log = logging.getLogger(__name__)

NO_WEIGHTS = "n/a: no weights"
# lpips' VGG wrapper splits torchvision's vgg16().features into five slices at these layer indices.
_LPIPS_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


class LpipsScorer:
    """LPIPS-VGG distance of two float RGB images [H, W, 3] in [0, 1] (CPU, float32)."""

    name = "LPIPS-VGG v0.1"

    def __init__(self, weights: Path) -> None:
        import lpips
        import torch
        from safetensors.torch import load_file

        with warnings.catch_warnings():  # lpips builds torchvision's vgg16 with the deprecated pretrained=False
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        backbone = load_file(str(weights))
        mapped = {}
        for k, (start, stop) in enumerate(_LPIPS_SLICES, start=1):
            for i in range(start, stop):
                for part in ("weight", "bias"):
                    key = f"features.{i}.{part}"
                    if key in backbone:
                        mapped[f"net.slice{k}.{i}.{part}"] = backbone[key]
        missing = [k for k in model.state_dict() if k.startswith("net.") and k not in mapped]
        if missing:
            raise Glimpse3DError(f"{weights} is not a VGG-16 checkpoint: no {missing[0]}")
        model.load_state_dict(mapped, strict=False)
        self._model = model.eval()
        self._torch = torch

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        t = self._torch

        def prep(x: np.ndarray) -> Any:
            x = np.asarray(x, np.float32)
            return t.from_numpy(x * 2.0 - 1.0).permute(2, 0, 1)[None]

        with t.inference_mode():
            return float(self._model(prep(a), prep(b)).item())

    def mean_distance(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
        return float(np.mean([self.distance(a, b) for a, b in pairs]))


def load_lpips(model_dir: Path | None = None) -> tuple[LpipsScorer | None, str]:
    """(scorer, note): the scorer when its weights are installed, else None and the reason."""
    root = (model_dir or default_model_dir()) / LPIPS_VGG
    weights = root / "model.safetensors"
    if not weights.is_file():
        return None, f"{NO_WEIGHTS} ({LPIPS_VGG} not in {root.parent.parent}; run `make models`)"
    from safetensors import SafetensorError

    try:
        return LpipsScorer(weights), LpipsScorer.name
    except (OSError, RuntimeError, ValueError, SafetensorError, Glimpse3DError) as err:  # truncated or foreign
        # file: say so, never fall back to a guess
        return None, f"n/a: {LPIPS_VGG} cannot be read ({err})"


def load_clip(model_dir: Path | None = None) -> tuple[Any | None, str]:
    """(scorer with ``score(a, b)`` and ``embed(images)``, note), or None and the reason."""
    from glimpse3d.services.backprojection.clip import ClipImageScorer
    from glimpse3d.services.backprojection.weights import CLIP_BASE

    root = model_dir or default_model_dir()
    if not (root / CLIP_BASE).is_dir():
        return None, f"{NO_WEIGHTS} ({CLIP_BASE} not in {root}; run `make models`)"
    scorer = ClipImageScorer(root, CLIP_BASE, device="auto")
    try:
        scorer.load()
    except Glimpse3DError as err:
        return None, f"n/a: {err}"
    return scorer, CLIP_BASE


def clip_similarity(scorer: Any, images: Sequence[np.ndarray], reference: np.ndarray) -> float:
    """Mean cosine similarity of each image's CLIP embedding to the reference's."""
    embeddings = scorer.embed([reference, *images])
    return float(np.mean(embeddings[1:] @ embeddings[0]))
