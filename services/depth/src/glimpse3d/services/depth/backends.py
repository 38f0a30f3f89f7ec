"""Depth backends: one :class:`DepthBackend` protocol, implementations chosen by name.

A backend turns a decoded photo (uint8 ``[H, W, 3|4]``) and the camera it was taken with into a
foreground matte and a camera-space z-depth map (see ``protos/glimpse3d/v1/depth.proto``).
Implementations live in their own modules and are imported only when selected, so choosing the
weight-free ``silhouette`` backend never imports torch or a model library:

- ``silhouette`` (default): classical matting + shape-from-silhouette inflation, no weights.
- ``dpt``: MiDaS v3 (DPT) / Depth Anything V2 relative disparity through transformers, made metric
  (:mod:`glimpse3d.services.depth.dpt`, :mod:`glimpse3d.services.depth.metric`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class DepthResult:
    depth: np.ndarray  # [H, W] float32, camera-space z in world units; 0 outside the mask
    mask: np.ndarray  # [H, W] float32 in [0, 1], 1 = object


@runtime_checkable
class DepthBackend(Protocol):
    name: str

    @property
    def ready(self) -> bool:
        """True once :meth:`load` has finished (the server reports SERVING only then)."""
        ...

    def load(self) -> None:
        """Load weights / warm up. Idempotent."""
        ...

    def estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        """``image`` uint8 [H, W, 3|4] (alpha, when not all opaque, is the matte) -> depth and mask."""
        ...


# One line per backend.
REGISTRY: BackendRegistry[DepthBackend] = BackendRegistry("depth")
backend_names = REGISTRY.names


def make_backend(name: str, **options: Any) -> DepthBackend:
    """Instantiate the backend called ``name`` with keyword ``options`` (not loaded yet)."""
    return REGISTRY.create(name, **options)
