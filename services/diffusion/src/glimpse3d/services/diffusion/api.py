"""The diffusion service's API: :class:`DiffusionBackend` enhances one rendered view of the splat,
guided by its depth, its coverage (alpha) and the input photo (``protos/glimpse3d/v1/diffusion.proto``).

:meth:`DiffusionBackend.enhance` validates every argument (:func:`validate_request`) and hands the
backend's ``_enhance`` an :class:`EnhanceRequest`. Parameters are resolved values: ``strength`` 0
means "return the view unchanged"; the proto's "0 = backend default" is applied by the caller with
:func:`apply_proto_defaults`.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from glimpse3d.core.backend import Backend
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import MAX_IMAGE_SIDE
from glimpse3d.core.errors import InvalidInput

DEFAULT_STRENGTH = 0.5
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.5
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**64 - 1


@dataclass(frozen=True, eq=False)
class EnhanceRequest:
    """Validated, normalised arguments of one enhancement."""

    view: np.ndarray  # [H, W, 3] uint8 RGB
    depth: np.ndarray | None  # [H, W] float32 camera-space z, 0 = background
    alpha: np.ndarray | None  # [H, W] float32 in [0, 1] (from the argument or the view's alpha channel)
    reference: np.ndarray | None  # [h, w, 3|4] uint8 input photo
    prompt: str
    strength: float  # [0, 1]
    steps: int  # [1, MAX_STEPS]
    guidance: float  # [0, MAX_GUIDANCE]
    seed: int  # [0, 2^64 - 1]


# --------------------------------------------------------------------------------------------- #
# Parameters
# --------------------------------------------------------------------------------------------- #


def apply_proto_defaults(strength: float, steps: int, guidance: float) -> tuple[float, int, float]:
    """EnhanceViewRequest values, where 0 means "backend default", -> resolved values."""
    return (
        DEFAULT_STRENGTH if strength == 0 else strength,
        DEFAULT_STEPS if steps == 0 else steps,
        DEFAULT_GUIDANCE if guidance == 0 else guidance,
    )


def _real(value: object, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"{field} must be a number, got {type(value).__name__}", field=field)
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidInput(f"{field} must be in [{lo:g}, {hi:g}], got {value}", field=field)
    return v


def _integer(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInput(f"{field} must be an integer, got {type(value).__name__}", field=field)
    v = int(value)
    if not lo <= v <= hi:
        raise InvalidInput(f"{field} must be in [{lo}, {hi}], got {v}", field=field)
    return v


def _image(arr: object, field: str) -> np.ndarray:
    """uint8 or float ([0, 1]) [H, W, 3|4] -> uint8 [H, W, 3|4]."""
    if not isinstance(arr, np.ndarray):
        raise InvalidInput(f"{field} must be a numpy array, got {type(arr).__name__}", field=field)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or 0 in arr.shape:
        raise InvalidInput(f"{field} must have shape [H, W, 3] or [H, W, 4], got {list(arr.shape)}", field=field)
    if max(arr.shape[:2]) > MAX_IMAGE_SIDE:
        raise InvalidInput(f"{field} is larger than {MAX_IMAGE_SIDE} pixels a side", field=field)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInput(f"{field} must be uint8 or floating point, got {arr.dtype}", field=field)
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{field} has a non-finite value", field=field)
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _plane(arr: object, field: str, shape: tuple[int, int], hi: float | None) -> np.ndarray:
    """A finite [H, W] map matching the view, values in [0, hi] (hi=None: no upper bound)."""
    if not isinstance(arr, np.ndarray) or arr.shape != shape:
        got = list(arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
        raise InvalidInput(f"{field} must have shape {list(shape)} (the view's), got {got}", field=field)
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype in (np.uint8, np.bool_)):
        raise InvalidInput(f"{field} must be floating point, got {arr.dtype}", field=field)
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{field} has a non-finite value", field=field)
    top = np.inf if hi is None else hi + 1e-3
    if out.min() < -1e-3 or out.max() > top:
        bound = "non-negative" if hi is None else f"in [0, {hi:g}]"
        raise InvalidInput(f"{field} values must be {bound}", field=field)
    return np.clip(out, 0.0, hi if hi is not None else None)


def validate_request(
    view: object,
    *,
    depth: object,
    alpha: object,
    reference: object,
    prompt: object,
    strength: object,
    steps: object,
    guidance: object,
    seed: object,
) -> EnhanceRequest:
    """Check every argument (InvalidInput naming the field) and normalise dtypes and shapes."""
    img = _image(view, "view")
    shape = (img.shape[0], img.shape[1])
    alpha_map = None if alpha is None else _plane(alpha, "alpha", shape, 1.0)
    if alpha_map is None and img.shape[2] == 4:
        alpha_map = img[:, :, 3].astype(np.float32) / np.float32(255.0)
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidInput(f"prompt must be a string, got {type(prompt).__name__}", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}", field="prompt")
    return EnhanceRequest(
        view=np.ascontiguousarray(img[:, :, :3]),
        depth=None if depth is None else _plane(depth, "depth", shape, None),
        alpha=alpha_map,
        reference=None if reference is None else _image(reference, "reference"),
        prompt=prompt,
        strength=_real(strength, "strength", 0.0, 1.0),
        steps=_integer(steps, "steps", 1, MAX_STEPS),
        guidance=_real(guidance, "guidance", 0.0, MAX_GUIDANCE),
        seed=_integer(seed, "seed", 0, MAX_SEED),
    )


# --------------------------------------------------------------------------------------------- #
# The API
# --------------------------------------------------------------------------------------------- #


class DiffusionBackend(Backend, ABC):
    """Base of every diffusion backend: ``enhance`` validates, a backend implements ``_enhance``."""

    service = "diffusion"

    def enhance(
        self,
        view: np.ndarray,
        *,
        depth: np.ndarray | None,
        alpha: np.ndarray | None = None,
        reference: np.ndarray | None = None,
        prompt: str = "",
        strength: float,
        steps: int,
        guidance: float,
        seed: int,
    ) -> np.ndarray:
        """``view`` uint8 [H, W, 3|4] -> enhanced uint8 [H, W, 3]; identical output for identical inputs."""
        req = validate_request(view, depth=depth, alpha=alpha, reference=reference, prompt=prompt,
                               strength=strength, steps=steps, guidance=guidance, seed=seed)
        return self._run("enhance", self._enhance, req)

    @abstractmethod
    def _enhance(self, req: EnhanceRequest) -> np.ndarray:
        """A validated request -> enhanced uint8 [H, W, 3]."""


# "classical" is weight-free; "sdxl" loads SDXL + a depth ControlNet (docs/backends/diffusion.md);
# "triton" calls the sdxl model served by Triton.
REGISTRY: BackendRegistry[DiffusionBackend] = BackendRegistry("diffusion")
backend_names = REGISTRY.names


def make_backend(name: str, **options: Any) -> DiffusionBackend:
    """Instantiate the backend called ``name`` with keyword ``options`` (not loaded yet)."""
    return REGISTRY.create(name, **options)
