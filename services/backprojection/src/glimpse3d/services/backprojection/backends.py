"""Backprojection backends: one Protocol, picked by name from config.

``mvcrm`` (the default) is the torch implementation in :mod:`.mvcrm`. Its CLIP check is optional:
the option ``clip_model`` names a CLIP checkpoint in the model directory (``clip/clip-vit-base-patch32``
from ``make models``, scored by :class:`~.clip.ClipImageScorer`), or an in-process caller passes any
:class:`~.options.ClipScorer` as ``clip``. Without either the backend needs no weights, the check is
skipped and every report says so.

When the check runs. proto3 cannot tell an unset ``RefineOptions.clip_check`` from false, so a
request's ``clip_check = false`` means "the service's default", which is the backend option
``clip_check`` (true unless configured otherwise): a service with a CLIP model checks every round,
and one started with ``clip_check: false`` checks only the rounds that set ``clip_check = true``.
Likewise a request's ``clip_threshold = 0`` means the backend option ``clip_threshold``. Both live in
:attr:`MVCRMBackend.defaults`, which :meth:`.options.RefineOptions.from_proto` applies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.models import DEFAULT_MODEL_DIR, DeviceOptions, resolve_device
from glimpse3d.core.splat import Splat
from glimpse3d.services.backprojection.clip import ClipImageScorer
from glimpse3d.services.backprojection.mvcrm import refine
from glimpse3d.services.backprojection.options import (
    DEFAULT_CLIP_THRESHOLD,
    ClipScorer,
    RefineOptions,
    RefineResult,
    TrustedView,
)

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "mvcrm"


@runtime_checkable
class BackprojectionBackend(Protocol):
    name: str
    # The values of the options a request leaves unset (zeros, clip_check false); see RefineOptions.from_proto.
    defaults: RefineOptions

    @property
    def ready(self) -> bool: ...

    def load(self) -> None: ...

    def refine(
        self,
        splat: Splat,
        view: np.ndarray,
        camera: Camera,
        view_depth: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        options: RefineOptions | None = None,
        reference: np.ndarray | None = None,
        *,
        background: Sequence[float] | None = None,
        trusted: Sequence[TrustedView] = (),
    ) -> RefineResult: ...


class MVCRMBackend:
    """MVCRM on torch (CPU by default; any torch device works), with an optional CLIP check.

    clip: a ready-made :class:`~.options.ClipScorer` (in-process callers), or
    clip_model: the name of a CLIP checkpoint in ``model_dir`` ("" = no CLIP model, no weights needed).
    clip_check: whether a round is checked when the request does not ask (see the module docstring).
    clip_threshold: the threshold when the request leaves it at 0, in [0, 1].
    clip_dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
    device: where MVCRM and the CLIP model run. max_side: working resolution cap (see :func:`.mvcrm.refine`).
    """

    name = "mvcrm"

    def __init__(
        self,
        clip: ClipScorer | None = None,
        device: str | torch.device = "cpu",
        max_side: int | None = 256,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        clip_model: str = "",
        clip_check: bool = True,
        clip_threshold: float = DEFAULT_CLIP_THRESHOLD,
        clip_dtype: str = "auto",
    ) -> None:
        if clip is not None and not isinstance(clip, ClipScorer):
            raise InvalidInput(f"clip must have a score(a, b) method, got {type(clip).__name__}", field="clip")
        if not isinstance(clip_model, str):
            raise InvalidInput(f"clip_model must be a model name or '', got {clip_model!r}", field="clip_model")
        if clip is not None and clip_model:
            raise InvalidInput("give either a clip scorer or clip_model, not both", field="clip_model")
        self.defaults = RefineOptions(clip_check=_flag(clip_check, "clip_check"), clip_threshold=_unit(clip_threshold))
        if isinstance(device, str):
            DeviceOptions(device=device)  # names the option when it is not auto, cpu, cuda or cuda:N
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if clip_model:
            clip = ClipImageScorer(model_dir, clip_model, device=str(self.device), dtype=clip_dtype)
        self.clip = clip
        # Rounds run at most at this resolution (the splat does not depend on it); see refine().
        self.max_side = max_side
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Nothing to download for MVCRM itself; a CLIP scorer with a ``load()`` (the CLIP model,
        read offline from ``model_dir``) is loaded here."""
        loader = getattr(self.clip, "load", None)
        if callable(loader):
            loader()
        self._ready = True
        logger.info("backprojection backend %s ready (CLIP check: %s)", self.name, self.clip_summary())

    def clip_summary(self) -> str:
        """How the CLIP check is configured, in words."""
        if self.clip is None:
            return "off, no CLIP model"
        when = "every round" if self.defaults.clip_check else "rounds that set clip_check"
        label = getattr(self.clip, "name", type(self.clip).__name__)
        return f"{label}, {when}, default threshold {self.defaults.clip_threshold:g}"

    def refine(
        self,
        splat: Splat,
        view: np.ndarray,
        camera: Camera,
        view_depth: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        options: RefineOptions | None = None,
        reference: np.ndarray | None = None,
        *,
        background: Sequence[float] | None = None,
        trusted: Sequence[TrustedView] = (),
    ) -> RefineResult:
        """One MVCRM round; ``options=None`` uses :attr:`defaults`; ``trusted``: see :func:`.mvcrm.refine`."""
        if not self._ready:
            raise NotReady(f"backprojection backend {self.name} is not loaded yet")
        opts = self.defaults if options is None else options
        return refine(
            splat, view, camera, view_depth, confidence, opts, self.clip, reference,
            background=background, device=self.device, max_side=self.max_side, trusted=trusted,
        )


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false, got {value!r}", field=field)
    return value


def _unit(value: object, field: str = "clip_threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and 0 <= value <= 1):
        raise InvalidInput(f"{field} must be a number in [0, 1], got {value!r}", field=field)
    return float(value)


# "triton": MVCRM here with the CLIP check served by Triton (:mod:`.triton`).
REGISTRY: BackendRegistry[BackprojectionBackend] = BackendRegistry("backprojection")


def make_backend(
    name: str = DEFAULT_BACKEND, clip: ClipScorer | None = None, device: str | torch.device = "cpu", **options: object
) -> BackprojectionBackend:
    """Backend by name (``mvcrm``) with constructor ``options``; call ``load()`` before use."""
    return REGISTRY.create(name, clip=clip, device=device, **options)
