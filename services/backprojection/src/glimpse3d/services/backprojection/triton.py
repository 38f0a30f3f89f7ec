"""MVCRM with its CLIP check on Triton: the ``triton`` backend (client) and the
``backprojection_clip`` model's handler (server), which runs :class:`~.clip.ClipImageScorer`.

MVCRM itself (depth-consistent back-projection, normal smoothing, fusion) is not a learned model: it
runs in the service process as in the ``mvcrm`` backend. Only the CLIP drift check goes to Triton.

===========  ======  ============  ===========================================================
tensor       type    shape         meaning
===========  ======  ============  ===========================================================
IMAGE_A      UINT8   [H, W, 3]     one image (per request; a batch axis of 1 is added by the client)
IMAGE_B      UINT8   [h, w, 3]     the other image
SCORE        FP32    [1]           cosine similarity of their CLIP image embeddings, in [-1, 1]
===========  ======  ============  ===========================================================

Dynamic batching helps here: a score is two small forward passes, and checks from concurrent rounds
(requests whose images have the same sizes) are gathered by Triton and embedded in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glimpse3d.core.errors import Glimpse3DError
from glimpse3d.core.triton.client import DEFAULT_URL, TritonBacked
from glimpse3d.core.triton.python_model import Handler, Tensors, require
from glimpse3d.services.backprojection.backends import MVCRMBackend
from glimpse3d.services.backprojection.clip import ClipImageScorer, to_uint8
from glimpse3d.services.backprojection.models import CLIP_BASE
from glimpse3d.services.backprojection.options import DEFAULT_CLIP_THRESHOLD

MODEL = "backprojection_clip"


class TritonClipScorer(TritonBacked):
    """A :class:`~.options.ClipScorer` whose embeddings come from ``backprojection_clip`` in Triton."""

    default_model = MODEL

    @property
    def name(self) -> str:
        return f"{self.triton.model} at {self.triton.options.url}"

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        out = self.triton.infer({"IMAGE_A": to_uint8(a, "a"), "IMAGE_B": to_uint8(b, "b")}, ["SCORE"])
        return float(np.asarray(out["SCORE"]).reshape(-1)[0])


class TritonMVCRMBackend(MVCRMBackend):
    """MVCRM in this process with the CLIP check from Triton (the Triton options plus MVCRM's own)."""

    name = "triton"

    def __init__(self, model: str = MODEL, url: str = DEFAULT_URL, timeout_s: float = 60.0, retry_s: float = 60.0,
                 ready_timeout_s: float = 900.0, device: str = "cpu", max_side: int | None = 256,
                 clip_check: bool = True, clip_threshold: float = DEFAULT_CLIP_THRESHOLD) -> None:
        scorer = TritonClipScorer(model=model, url=url, timeout_s=timeout_s, retry_s=retry_s,
                                  ready_timeout_s=ready_timeout_s)
        super().__init__(clip=scorer, device=device, max_side=max_side, clip_check=clip_check,
                         clip_threshold=clip_threshold)


class ClipHandler(Handler):
    """Server side of ``backprojection_clip``; options: ``model`` (a CLIP checkpoint in the model
    directory, default ``clip/clip-vit-base-patch32``) and ``dtype``."""

    def load(self) -> None:
        self.backend = ClipImageScorer(self.model_dir, model=self.options.get("model", CLIP_BASE),
                                       device=self.device, dtype=self.options.get("dtype", "auto"))
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
                results[i] = (Glimpse3DError(f"CLIP model {self.backend.name} produced a non-finite embedding")
                              if not np.isfinite(value) else {"SCORE": np.array([min(1.0, max(-1.0, value))],
                                                                                 np.float32)})
        return [r for r in results if r is not None]
