"""The project's values as Triton tensors, the same on the client and inside ``model.py``.

Each Triton model declares named tensors in its ``config.pbtxt``; these helpers turn the values the
backends exchange into those tensors and back, validating what arrives:

- a :class:`~glimpse3d.core.cameras.Camera` is one FP64 row of :data:`CAMERA_WIDTH` values
  ``[fx, fy, cx, cy, width, height, world_to_camera (16, row-major)]``; a list of cameras is
  ``[N, CAMERA_WIDTH]``;
- a :class:`~glimpse3d.core.splat.Splat` is five FP32 tensors ``<prefix>_MEANS [N, 3]``,
  ``_QUATS [N, 4]``, ``_LOG_SCALES [N, 3]``, ``_OPACITY_LOGITS [N]`` and ``_SH [N, K, 3]``;
- scalar parameters (seeds, step counts, prompts) and result metrics are one JSON document as a
  UINT8 tensor of its UTF-8 bytes (``[L]``; UINT8 rather than BYTES so that every tensor of the
  Python backend travels through DLPack);
- a :class:`~glimpse3d.core.errors.Glimpse3DError` raised inside Triton crosses as the response's
  error message, prefixed with :data:`ERROR_MARKER` and a JSON object (reason, message, field), so
  the client raises the same error class and the caller sees the same gRPC status as in-process.

Seeds are JSON integers (0..2^64-1 survives: Python's json keeps arbitrary-precision integers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import Glimpse3DError, InvalidInput
from glimpse3d.core.splat import Splat

CAMERA_WIDTH = 22
ERROR_MARKER = "glimpse3d-error "
SPLAT_FIELDS = (
    ("MEANS", "means"),
    ("QUATS", "quats"),
    ("LOG_SCALES", "log_scales"),
    ("OPACITY_LOGITS", "opacity_logits"),
    ("SH", "sh"),
)


def camera_to_array(camera: Camera) -> np.ndarray:
    """One camera as FP64 ``[CAMERA_WIDTH]``."""
    head = [camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height]
    return np.concatenate([np.asarray(head, np.float64), np.asarray(camera.world_to_camera, np.float64).reshape(16)])


def cameras_to_array(cameras: list[Camera]) -> np.ndarray:
    """Cameras as FP64 ``[N, CAMERA_WIDTH]`` (``[0, CAMERA_WIDTH]`` for none)."""
    if not cameras:
        return np.zeros((0, CAMERA_WIDTH), np.float64)
    return np.stack([camera_to_array(c) for c in cameras])


def array_to_camera(arr: np.ndarray, field: str = "camera") -> Camera:
    """The camera in a ``[CAMERA_WIDTH]`` row; a malformed row is :class:`InvalidInput` naming ``field``."""
    row = np.asarray(arr)
    if row.shape != (CAMERA_WIDTH,) or not np.issubdtype(row.dtype, np.floating):
        raise InvalidInput(f"{field} must be a float row of {CAMERA_WIDTH} values, got {row.dtype}{list(row.shape)}",
                           field=field)
    if not np.isfinite(row).all():
        raise InvalidInput(f"{field} has a non-finite value", field=field)
    width, height = row[4], row[5]
    if width != int(width) or height != int(height):
        raise InvalidInput(f"{field} width and height must be whole numbers, got {width}, {height}", field=field)
    return Camera(fx=float(row[0]), fy=float(row[1]), cx=float(row[2]), cy=float(row[3]), width=int(width),
                  height=int(height), world_to_camera=row[6:].astype(np.float64).reshape(4, 4))


def array_to_cameras(arr: np.ndarray, field: str = "cameras") -> list[Camera]:
    """The cameras in ``[N, CAMERA_WIDTH]``."""
    rows = np.asarray(arr)
    if rows.ndim != 2 or rows.shape[1] != CAMERA_WIDTH:
        raise InvalidInput(f"{field} must have shape [N, {CAMERA_WIDTH}], got {list(rows.shape)}", field=field)
    return [array_to_camera(row, f"{field}[{i}]") for i, row in enumerate(rows)]


def splat_to_tensors(splat: Splat, prefix: str = "SPLAT") -> dict[str, np.ndarray]:
    """The splat's five arrays as FP32 tensors named ``<prefix>_MEANS`` … ``<prefix>_SH``."""
    return {f"{prefix}_{name}": np.ascontiguousarray(getattr(splat, attr), np.float32) for name, attr in SPLAT_FIELDS}


def tensors_to_splat(tensors: Mapping[str, np.ndarray], prefix: str = "SPLAT") -> Splat:
    """The splat in ``tensors`` (validated by :class:`Splat` itself)."""
    missing = [f"{prefix}_{name}" for name, _ in SPLAT_FIELDS if f"{prefix}_{name}" not in tensors]
    if missing:
        raise InvalidInput(f"splat tensors missing: {', '.join(missing)}", field=prefix.lower())
    return Splat(**{attr: np.asarray(tensors[f"{prefix}_{name}"], np.float32) for name, attr in SPLAT_FIELDS})


def json_tensor(values: Mapping[str, Any]) -> np.ndarray:
    """A JSON object as a UINT8 tensor of its UTF-8 bytes."""
    return np.frombuffer(json.dumps(dict(values), sort_keys=True).encode(), dtype=np.uint8).copy()


def tensor_json(arr: np.ndarray | None, field: str = "PARAMS") -> dict[str, Any]:
    """The JSON object in a UINT8 tensor (``{}`` when absent)."""
    if arr is None:
        return {}
    raw = np.asarray(arr)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise InvalidInput(f"{field} must be a UINT8 vector of UTF-8 JSON, got {raw.dtype}{list(raw.shape)}",
                           field=field)
    try:
        value = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidInput(f"{field} is not valid JSON: {err}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object, got {type(value).__name__}", field=field)
    return value


def encode_error(err: Glimpse3DError) -> str:
    """The response error message that carries ``err`` across Triton."""
    body = {"reason": err.reason, "message": err.message, "field": err.field, "type": type(err).__name__}
    return ERROR_MARKER + json.dumps(body)


def _error_classes() -> dict[str, type[Glimpse3DError]]:
    from glimpse3d.core.models import ModelMissing  # noqa: F401  (registers its subclass)

    found: dict[str, type[Glimpse3DError]] = {}
    stack: list[type[Glimpse3DError]] = [Glimpse3DError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found


def decode_error(message: str) -> Glimpse3DError | None:
    """The error :func:`encode_error` put into ``message`` (anywhere in it), or None."""
    at = message.find(ERROR_MARKER)
    if at < 0:
        return None
    try:
        body, _ = json.JSONDecoder().raw_decode(message[at + len(ERROR_MARKER):])
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    classes = _error_classes()
    cls = classes.get(str(body.get("type")))
    if cls is None:  # a subclass this side does not have: the nearest class with the same reason
        cls = next((c for c in classes.values() if c.reason == body.get("reason")), Glimpse3DError)
    field = body.get("field")
    return cls(str(body.get("message", "")), field=field if isinstance(field, str) else None)
