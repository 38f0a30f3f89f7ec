"""The multiview API: novel views of the object (:class:`MultiviewBackend`) and its registry.

Arrays in and out are numpy (the servicer decodes and encodes artifacts):

- ``image``        uint8 [H, W, 3] (or [H, W, 4]; its alpha is the matte when ``mask`` is None)
  or float in [0, 1]: the input photo;
- ``mask``         optional float [H, W] in [0, 1], the object matte of the photo;
- ``input_camera`` the photo's :class:`~glimpse3d.core.cameras.Camera`;
- ``splat``        the current splat (required by ``render``, ignored by ``zero123``);
- ``cameras``      1..16 target cameras; each generated view has its camera's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glimpse3d.core.backend import Backend
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat

# Limits from protos/glimpse3d/v1/multiview.proto.
MAX_VIEWS = 16
MAX_STEPS = 200


@dataclass(frozen=True, eq=False)
class GeneratedView:
    rgb: np.ndarray  # uint8 [H, W, 3], the object composited over the background
    mask: np.ndarray  # float32 [H, W] in [0, 1], the object's matte in this view


@dataclass(frozen=True, eq=False)
class ViewRequest:
    """A validated :meth:`MultiviewBackend.generate` request."""

    image: np.ndarray  # float32 [H, W, 3] in [0, 1]
    mask: np.ndarray | None  # float32 [H, W] in [0, 1]
    input_camera: Camera
    cameras: list[Camera]
    seed: int
    steps: int


def _float_image(image: object) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 [H, W, 3] in [0, 1], alpha [H, W] or None) from uint8/float [H, W, 3|4]."""
    if not isinstance(image, np.ndarray):
        raise InvalidInput(f"image must be a numpy array, got {type(image).__name__}", field="image")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise InvalidInput(f"image must have shape [H, W, 3] or [H, W, 4], got {list(image.shape)}", field="image")
    if image.dtype == np.uint8:
        arr = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        arr = image.astype(np.float32)
        if not np.isfinite(arr).all():
            raise InvalidInput("image has non-finite values", field="image")
        arr = np.clip(arr, 0.0, 1.0)
    else:
        raise InvalidInput(f"image must be uint8 or floating point, got {image.dtype}", field="image")
    return arr[..., :3], (arr[..., 3] if arr.shape[2] == 4 else None)


def _float_mask(mask: object, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise InvalidInput(f"mask must be a numpy array, got {type(mask).__name__}", field="mask")
    arr = mask[..., 0] if mask.ndim == 3 and mask.shape[2] == 1 else mask
    if arr.shape != shape:
        raise InvalidInput(f"mask must have shape {list(shape)} like the image, got {list(mask.shape)}", field="mask")
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        raise InvalidInput(f"mask must be floating point in [0, 1], got {arr.dtype}", field="mask")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all() or out.min() < -1e-3 or out.max() > 1 + 1e-3:
        raise InvalidInput("mask values must be finite and in [0, 1]", field="mask")
    return np.clip(out, 0.0, 1.0)


def _int_in(value: object, name: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= hi:
        raise InvalidInput(f"{name} must be an integer in 0..{hi}, got {value!r}", field=name)
    return int(value)


def check_request(
    image: object, mask: object, input_camera: object, cameras: object, seed: object, steps: object
) -> ViewRequest:
    """Validate the arguments every backend shares; raises InvalidInput naming the bad field."""
    img, alpha = _float_image(image)
    m = _float_mask(mask, img.shape[:2]) if mask is not None else alpha
    if not isinstance(input_camera, Camera):
        raise InvalidInput(f"input_camera must be a Camera, got {type(input_camera).__name__}", field="input_camera")
    if isinstance(cameras, Camera) or not isinstance(cameras, Sequence) or not 1 <= len(cameras) <= MAX_VIEWS:
        raise InvalidInput(f"cameras must be a sequence of 1..{MAX_VIEWS} Camera", field="views")
    for i, cam in enumerate(cameras):
        if not isinstance(cam, Camera):
            raise InvalidInput(f"views[{i}] must be a Camera, got {type(cam).__name__}", field=f"views[{i}]")
    return ViewRequest(img, m, input_camera, list(cameras), _int_in(seed, "seed", 2**64 - 1),
                       _int_in(steps, "steps", MAX_STEPS))


class MultiviewBackend(Backend):
    """A multiview backend: implement ``_generate`` (the request is validated before it is called)."""

    service = "multiview"

    def generate(
        self,
        image: np.ndarray,
        mask: np.ndarray | None,
        input_camera: Camera,
        splat: Splat | None,
        cameras: Sequence[Camera],
        seed: int = 0,
        steps: int = 0,
    ) -> list[GeneratedView]:
        """One view per camera, in order; the same seed and inputs give the same views."""
        req = check_request(image, mask, input_camera, cameras, seed, steps)
        return self._run("generate", self._generate, req, splat)

    def _generate(self, req: ViewRequest, splat: Splat | None) -> list[GeneratedView]:
        raise NotImplementedError


REGISTRY: BackendRegistry[MultiviewBackend] = BackendRegistry("multiview")


def make_backend(name: str, **options: Any) -> MultiviewBackend:
    """The backend called ``name`` (``"render"``, ``"zero123"``, ``"triton"``), built with its ``options``."""
    return REGISTRY.create(name, **options)
