"""The ``triton`` backend: MVCRM in this process, its CLIP check from the ``backprojection_clip``
model in Triton; and that model's server-side :class:`ClipHandler` (:class:`~.clip.ClipImageScorer`).

===========  ======  ============  ===========================================================
tensor       type    shape         meaning
===========  ======  ============  ===========================================================
IMAGE_A      UINT8   [H, W, 3]     one image (per request; a batch axis of 1 is added by the client)
IMAGE_B      UINT8   [h, w, 3]     the other image
SCORE        FP32    [1]           cosine similarity of their CLIP image embeddings, in [-1, 1]
===========  ======  ============  ===========================================================

Checks from concurrent rounds whose images have the same sizes are batched by Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glimpse3d.core.errors import Glimpse3DError
from glimpse3d.core.triton.client import TritonBackendOptions, TritonMixin, TritonModel
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.services.backprojection.backends.mvcrm import MVCRMBackend, MVCRMRoundOptions
from glimpse3d.services.backprojection.clip import ClipImageScorer, to_uint8

MODEL = "backprojection_clip"


class TritonClipScorer:
    """A :class:`~.api.ClipScorer` whose embeddings come from ``backprojection_clip`` in Triton."""

    def __init__(self, triton: TritonModel) -> None:
        self.triton = triton

    @property
    def label(self) -> str:
        return f"{self.triton.model} at {self.triton.options.url}"

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        out = self.triton.infer({"IMAGE_A": to_uint8(a, "a"), "IMAGE_B": to_uint8(b, "b")}, ["SCORE"])
        return float(np.asarray(out["SCORE"]).reshape(-1)[0])


class TritonMVCRMOptions(TritonBackendOptions, MVCRMRoundOptions):
    """The Triton options (a CLIP score is quick: a shorter call deadline) and MVCRM's own."""

    timeout_s: float = 60.0


class TritonMVCRMBackend(TritonMixin, MVCRMBackend):
    """MVCRM in this process with the CLIP check from Triton."""

    default_model = MODEL
    Options: Any = TritonMVCRMOptions
    options: TritonMVCRMOptions

    def _setup(self) -> None:
        TritonMixin._setup(self)
        MVCRMBackend._setup(self)

    def _clip_scorer(self) -> TritonClipScorer:
        return TritonClipScorer(self.triton)

    def _load(self) -> None:
        MVCRMBackend._load(self)
        TritonMixin._load(self)


class ClipHandler(Handler):
    """Server side of ``backprojection_clip``; options: those of :class:`~.clip.ClipImageScorer`
    (``model``, default ``clip/clip-vit-base-patch32``, and ``dtype``)."""

    def load(self) -> None:
        self.backend = ClipImageScorer(self.model_dir, device=self.device, **self.options)
        self.backend.load()

    def run(self, inputs: Tensors) -> Tensors:
        return self.run_batch([inputs])[0]  # type: ignore[return-value]

    def run_batch(self, batch: Sequence[Tensors]) -> list[Tensors | Glimpse3DError]:
        """Every valid request's two images embedded in one forward pass."""
        results: list[Tensors | Glimpse3DError | None] = [None] * len(batch)
        images: list[np.ndarray] = []
        owners: list[int] = []
        for i, inputs in enumerate(batch):
            try:
                pair = [to_uint8(require(inputs, name), name) for name in ("IMAGE_A", "IMAGE_B")]
            except Glimpse3DError as err:
                results[i] = err
                continue
            images.extend(pair)
            owners.append(i)
        if images:
            emb = self.backend.embed(images)
            for k, i in enumerate(owners):
                value = float(np.dot(emb[2 * k], emb[2 * k + 1]))
                results[i] = (Glimpse3DError(f"CLIP model {self.backend.label} produced a non-finite embedding")
                              if not np.isfinite(value) else {"SCORE": np.array([min(1.0, max(-1.0, value))],
                                                                                 np.float32)})
        return [r for r in results if r is not None]
