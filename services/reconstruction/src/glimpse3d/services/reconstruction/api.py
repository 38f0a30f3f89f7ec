"""The reconstruction API: one photo (+ depth and mask) -> a coarse Gaussian splat, and rendering.

Every backend derives from :class:`ReconstructionBackend` and implements ``_reconstruct`` (and
``_render`` if it does not draw with the project's rasterizer); the server picks one by name with
:func:`make_backend`. Arrays in and out are numpy (the servicer decodes/encodes artifacts):

- ``image``  uint8 [H, W, 3] (or [H, W, 4], alpha ignored) or float in [0, 1];
- ``depth``  float [H, W], camera z of the object surface, 0 (or anything) outside the mask;
- ``mask``   float [H, W] in [0, 1], the object matte;
- ``camera`` the photo's :class:`~glimpse3d.core.cameras.Camera`, same size as the image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from glimpse3d.core.backend import Backend
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat

# Limits from protos/glimpse3d/v1/reconstruction.proto.
MAX_FIT_STEPS = 5000
MAX_GAUSSIANS = 2_000_000
MAX_EXTRA_VIEWS = 16


@dataclass(frozen=True, eq=False)
class ExtraView:
    """An additional image of the object with its camera (e.g. from the multiview service)."""

    camera: Camera
    rgb: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray | None = None  # float [H, W] in [0, 1]


@dataclass(frozen=True, eq=False)
class ReconstructionResult:
    splat: Splat
    # Always has "input_view_psnr_db" (splat rendered at the input camera vs the photo, inside the
    # mask) and "num_gaussians"; backends add their own (timings, losses).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RenderedImage:
    rgb: np.ndarray  # float32 [H, W, 3] in [0, 1], composited over the background
    depth: np.ndarray  # float32 [H, W], expected camera z, 0 where alpha is ~0
    alpha: np.ndarray  # float32 [H, W] in [0, 1]


def check_fit_options(fit_steps: int, max_gaussians: int, seed: int, views: Sequence[ExtraView]) -> None:
    """Validate the scalar request options shared by every backend (proto ranges)."""
    for name, value, hi in (("fit_steps", fit_steps, MAX_FIT_STEPS), ("max_gaussians", max_gaussians, MAX_GAUSSIANS)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= hi:
            raise InvalidInput(f"{name} must be an integer in 0..{hi}, got {value!r}", field=name)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
        raise InvalidInput(f"seed must be an integer in 0..2^64-1, got {seed!r}", field="seed")
    if len(views) > MAX_EXTRA_VIEWS:
        raise InvalidInput(f"at most {MAX_EXTRA_VIEWS} extra views, got {len(views)}", field="views")


def check_render_inputs(splat: object, cameras: object) -> None:
    """A :class:`Splat` and a non-empty sequence of :class:`Camera`."""
    if not isinstance(splat, Splat):
        raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
    if isinstance(cameras, Camera) or not cameras:
        raise InvalidInput("cameras must be a non-empty sequence of Camera", field="cameras")
    for i, cam in enumerate(cast(Iterable[object], cameras)):  # a non-iterable raises TypeError here
        if not isinstance(cam, Camera):
            raise InvalidInput(f"cameras[{i}] must be a Camera, got {type(cam).__name__}", field=f"cameras[{i}]")


class ReconstructionBackend(Backend, ABC):
    """A reconstruction backend: :meth:`reconstruct` a photo, :meth:`render` a splat."""

    service = "reconstruction"

    def reconstruct(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        mask: np.ndarray | None,
        camera: Camera,
        views: Sequence[ExtraView] = (),
        fit_steps: int = 0,
        max_gaussians: int = 0,
        seed: int = 0,
    ) -> ReconstructionResult:
        """Coarse splat of the object in ``image``; 0 for ``fit_steps``/``max_gaussians`` = default."""
        check_fit_options(fit_steps, max_gaussians, seed, views)
        return self._run("reconstruct", self._reconstruct, image, depth, mask, camera, views,
                         int(fit_steps), int(max_gaussians), int(seed))

    def render(
        self, splat: Splat, cameras: Sequence[Camera], background: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> list[RenderedImage]:
        """Render ``splat`` from each camera, in order."""
        check_render_inputs(splat, cameras)
        return self._run("render", self._render, splat, cameras, background)

    @abstractmethod
    def _reconstruct(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, camera: Camera,
                     views: Sequence[ExtraView], fit_steps: int, max_gaussians: int, seed: int) -> ReconstructionResult:
        ...

    def _render(self, splat: Splat, cameras: Sequence[Camera], background: Sequence[float]) -> list[RenderedImage]:
        from glimpse3d.services.reconstruction.common import render_views

        return render_views(splat, cameras, background)


# Learned backends: "triposr", "lgm" in-process, "triton" (either model served by Triton).
REGISTRY: BackendRegistry[ReconstructionBackend] = BackendRegistry("reconstruction")


def make_backend(name: str, **options: Any) -> ReconstructionBackend:
    """The backend called ``name`` (``"lift"``), built with backend-specific ``options``."""
    return REGISTRY.create(name, **options)
