"""The ``mvcrm`` backend: :func:`.mvcrm.refine` on torch with an optional CLIP check.

The check needs either ``clip_model`` (a CLIP checkpoint in the model directory, scored by
:class:`~.clip.ClipImageScorer`) or, in process, any :class:`~.api.ClipScorer` as ``clip``; without
either no weights are needed and every report says the check was skipped. proto3 cannot tell an
unset ``clip_threshold`` from 0, so a request's zero means the backend option ``clip_threshold``;
an unset ``clip_check`` means the backend option ``clip_check`` (:attr:`defaults`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from glimpse3d.core.backend import BackendOptions, Device
from glimpse3d.core.models import DEFAULT_MODEL_DIR, resolve_device, warm_optimizer
from glimpse3d.core.splat import Splat
from glimpse3d.services.backprojection.api import (
    DEFAULT_CLIP_THRESHOLD,
    DEFAULT_STEPS,
    MAX_STEPS,
    BackprojectionBackend,
    ClipScorer,
    RefineOptions,
    RefineResult,
    TrustedView,
)
from glimpse3d.services.backprojection.clip import ClipImageScorer, check_model_name
from glimpse3d.services.backprojection.mvcrm import refine


class MVCRMRoundOptions(BackendOptions):
    """Options of every backend that runs MVCRM here. device: where MVCRM runs. max_side: working
    resolution cap (None: the view's size; see :func:`.mvcrm.refine`). steps, clip_check, clip_threshold:
    what a request's unset fields mean (fewer steps: cheaper, less converged rounds)."""

    device: Device = "cpu"
    max_side: int | None = Field(default=256, ge=16)
    steps: int = Field(default=DEFAULT_STEPS, ge=1, le=MAX_STEPS)
    clip_check: bool = True
    clip_threshold: float = Field(default=DEFAULT_CLIP_THRESHOLD, ge=0.0, le=1.0)


class MVCRMOptions(MVCRMRoundOptions):
    """clip / clip_model: a scorer object, or a CLIP checkpoint in ``model_dir`` ("": no check),
    which runs on ``device`` in ``clip_dtype``."""

    model_dir: Path = Field(default=DEFAULT_MODEL_DIR, strict=False)
    clip: ClipScorer | None = None
    clip_model: str = ""
    clip_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    @field_validator("clip_model")
    @classmethod
    def _clip_model(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("clip") is not None:
            raise ValueError("give either a clip scorer or clip_model, not both")
        return check_model_name(value) if value else value


class MVCRMBackend(BackprojectionBackend):
    """MVCRM on torch (CPU by default; any torch device works), with an optional CLIP check."""

    name = "mvcrm"
    Options: Any = MVCRMOptions
    options: MVCRMOptions

    def _setup(self) -> None:
        self.defaults = RefineOptions(steps=self.options.steps, clip_check=self.options.clip_check,
                                      clip_threshold=self.options.clip_threshold)
        self.clip: ClipScorer | None = self._clip_scorer()
        self.device: Any = None  # torch.device once loaded

    def _clip_scorer(self) -> ClipScorer | None:
        o = self.options
        if o.clip_model:
            return ClipImageScorer(o.model_dir, o.clip_model, device=o.device, dtype=o.clip_dtype)
        return o.clip

    def _load(self) -> None:
        """Nothing to load for MVCRM itself (the optimiser's one-off set-up is paid here); a CLIP scorer
        with a ``load()`` is loaded here."""
        self.device = resolve_device(self.options.device)
        warm_optimizer()
        loader = getattr(self.clip, "load", None)
        if callable(loader):
            loader()

    def _describe_loaded(self) -> dict[str, Any]:
        return {"device": str(self.device), "clip": self.clip_summary()}

    def clip_summary(self) -> str:
        """How the CLIP check is configured, in words."""
        if self.clip is None:
            return "off, no CLIP model"
        when = "every round" if self.defaults.clip_check else "rounds that set clip_check"
        label = getattr(self.clip, "label", type(self.clip).__name__)
        return f"{label}, {when}, default threshold {self.defaults.clip_threshold:g}"

    def _refine(
        self,
        splat: Splat,
        view: np.ndarray,
        camera: Any,
        view_depth: np.ndarray | None,
        confidence: np.ndarray | None,
        options: RefineOptions,
        reference: np.ndarray | None,
        *,
        background: Sequence[float] | None,
        trusted: Sequence[TrustedView],
        photo_cameras: Sequence[Any] = (),
    ) -> RefineResult:
        return refine(splat, view, camera, view_depth, confidence, options, self.clip, reference,
                      background=background, device=self.device, max_side=self.options.max_side, trusted=trusted,
                      photo_cameras=photo_cameras)
