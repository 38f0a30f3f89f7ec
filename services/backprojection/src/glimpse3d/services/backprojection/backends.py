"""Backprojection backends: one Protocol, picked by name from config.

``mvcrm`` (the default) is the weight-free torch implementation in :mod:`.mvcrm`. Its CLIP check is
an optional injection: pass any :class:`~.options.ClipScorer` (a transformers CLIP scorer is added
by a later issue); without one the check is skipped and every report says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.models import resolve_device
from glimpse3d.core.splat import Splat
from glimpse3d.services.backprojection.mvcrm import refine
from glimpse3d.services.backprojection.options import ClipScorer, RefineOptions, RefineResult

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "mvcrm"


@runtime_checkable
class BackprojectionBackend(Protocol):
    name: str

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
    ) -> RefineResult: ...


class MVCRMBackend:
    """MVCRM on torch (CPU by default; any torch device works)."""

    name = "mvcrm"

    def __init__(
        self, clip: ClipScorer | None = None, device: str | torch.device = "cpu", max_side: int | None = 256
    ) -> None:
        if clip is not None and not isinstance(clip, ClipScorer):
            raise InvalidInput(f"clip must have a score(a, b) method, got {type(clip).__name__}", field="clip")
        self.clip = clip
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        # Rounds run at most at this resolution (the splat does not depend on it); see refine().
        self.max_side = max_side
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Nothing to download; a CLIP scorer with its own ``load()`` is loaded here."""
        loader = getattr(self.clip, "load", None)
        if callable(loader):
            loader()
        self._ready = True
        logger.info("backprojection backend %s ready (CLIP check: %s)", self.name, "on" if self.clip else "off")

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
    ) -> RefineResult:
        if not self._ready:
            raise NotReady(f"backprojection backend {self.name} is not loaded yet")
        return refine(
            splat, view, camera, view_depth, confidence, options, self.clip, reference,
            background=background, device=self.device, max_side=self.max_side,
        )


# A transformers CLIP scorer and a "triton" backend register here when they arrive.
REGISTRY: BackendRegistry[BackprojectionBackend] = BackendRegistry(
    "backprojection", {"mvcrm": "glimpse3d.services.backprojection.backends:MVCRMBackend"}
)


def make_backend(
    name: str = DEFAULT_BACKEND, clip: ClipScorer | None = None, device: str | torch.device = "cpu"
) -> BackprojectionBackend:
    """Backend by name (``mvcrm``); call ``load()`` before use."""
    return REGISTRY.create(name, clip=clip, device=device)
