"""The depth service's API: :class:`DepthBackend` and its result; backends are chosen by name.

A backend turns a decoded photo (uint8 ``[H, W, 3|4]``; alpha, when not all opaque, is the matte)
and its camera into a foreground matte and a camera-space z-depth map
(``protos/glimpse3d/v1/depth.proto``). Backends implement ``_estimate`` and, when their matte is not
the weight-free one, ``_matte``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glimpse3d.core.backend import Backend
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera
from glimpse3d.services.depth.common import check_camera, check_image, check_points, estimate_mask

Points = Sequence[tuple[float, float, bool]]  # the user's matte corrections: (x, y, keep), x and y fractions


@dataclass(frozen=True, eq=False)
class DepthResult:
    depth: np.ndarray  # [H, W] float32, camera-space z in world units; 0 outside the mask
    mask: np.ndarray  # [H, W] float32 in [0, 1], 1 = object


class DepthBackend(Backend):
    """One implementation of the depth service."""

    service = "depth"

    def estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        """``image`` uint8/float [H, W, 3|4] and its camera -> depth and mask."""
        img = check_image(image)
        cam = check_camera(camera, (img.shape[0], img.shape[1]))
        return self._run("estimate", self._estimate, img, cam)

    def matte(self, image: np.ndarray, points: Points = ()) -> np.ndarray:
        """Foreground matte [H, W] float32 in [0, 1] of ``image``, with the user's correction ``points``."""
        img = check_image(image)
        return self._run("matte", self._matte, img, check_points(points))

    def _estimate(self, image: np.ndarray, camera: Camera) -> DepthResult:
        raise NotImplementedError

    def _matte(self, image: np.ndarray, points: list[tuple[float, float, bool]]) -> np.ndarray:
        """The weight-free matte (:func:`~glimpse3d.services.depth.common.estimate_mask`)."""
        return estimate_mask(image, points=points)


REGISTRY: BackendRegistry[DepthBackend] = BackendRegistry("depth")
backend_names = REGISTRY.names


def make_backend(name: str, **options: Any) -> DepthBackend:
    """Instantiate the backend called ``name`` with keyword ``options`` (not loaded yet)."""
    return REGISTRY.create(name, **options)
