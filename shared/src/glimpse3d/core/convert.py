"""Conversions between protobuf messages and the core types, with validation.

Every check raises :class:`~glimpse3d.core.errors.InvalidInput` whose ``field`` is the request
field path (e.g. ``views[2].camera.world_to_camera``), so callers see exactly what was wrong.
"""

from __future__ import annotations

import math

import numpy as np

from glimpse3d.core.artifacts import ArtifactRef
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.v1 import common_pb2

DEFAULT_ORBIT_RADIUS = 2.7
DEFAULT_FOV_Y_DEG = 40.0
DEFAULT_VIEW_SIZE = 512


_INTRINSICS = frozenset({"fx", "fy", "cx", "cy", "width", "height"})


def _prefixed(err: InvalidInput, field: str, *, intrinsics: bool) -> InvalidInput:
    """Re-raise a core Camera error under the request's field path, e.g. ``camera.fx`` ->
    ``views[2].camera.intrinsics.fx`` (or ``views[2].orbit.width`` for an orbit view)."""
    name = (err.field or "").removeprefix("camera.").removeprefix("camera")
    if intrinsics and name in _INTRINSICS:
        name = f"intrinsics.{name}"
    path = f"{field}.{name}" if name else field
    return InvalidInput(f"{field}: {err.message}", field=path, metadata=err.metadata)


def camera_from_proto(msg: common_pb2.Camera, field: str = "camera") -> Camera:
    intr = msg.intrinsics
    values = list(msg.world_to_camera)
    if len(values) != 16:
        raise InvalidInput(
            f"{field}.world_to_camera must have 16 values (row-major 4x4), got {len(values)}",
            field=f"{field}.world_to_camera",
        )
    try:
        return Camera(intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height,
                      np.array(values, dtype=np.float64).reshape(4, 4))
    except InvalidInput as err:
        raise _prefixed(err, field, intrinsics=True) from None


def camera_to_proto(cam: Camera) -> common_pb2.Camera:
    return common_pb2.Camera(
        intrinsics=common_pb2.Intrinsics(
            fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy, width=cam.width, height=cam.height
        ),
        world_to_camera=[float(v) for v in cam.world_to_camera.reshape(-1)],
    )


def orbit_from_proto(msg: common_pb2.OrbitView, field: str = "orbit") -> Camera:
    values = {"azimuth_deg": msg.azimuth_deg, "elevation_deg": msg.elevation_deg,
              "radius": msg.radius, "fov_y_deg": msg.fov_y_deg}
    for name, v in values.items():
        if not math.isfinite(v):
            raise InvalidInput(f"{field}.{name} must be finite, got {v}", field=f"{field}.{name}")
    try:
        return orbit_camera(
            msg.azimuth_deg % 360.0,
            msg.elevation_deg,
            msg.radius or DEFAULT_ORBIT_RADIUS,
            width=msg.width or DEFAULT_VIEW_SIZE,
            height=msg.height or DEFAULT_VIEW_SIZE,
            fov_y_deg=msg.fov_y_deg or DEFAULT_FOV_Y_DEG,
        )
    except InvalidInput as err:
        raise _prefixed(err, field, intrinsics=False) from None


def view_from_proto(msg: common_pb2.ViewSpec, field: str = "view") -> Camera:
    kind = msg.WhichOneof("view")
    if kind == "camera":
        return camera_from_proto(msg.camera, f"{field}.camera")
    if kind == "orbit":
        return orbit_from_proto(msg.orbit, f"{field}.orbit")
    raise InvalidInput(f"{field} must set either camera or orbit", field=field)


def artifact_from_proto(msg: common_pb2.ArtifactRef, field: str = "artifact") -> ArtifactRef:
    if not msg.uri:
        raise InvalidInput(f"{field}.uri is required", field=f"{field}.uri")
    try:
        return ArtifactRef(uri=msg.uri, sha256=msg.sha256, size=msg.size, media_type=msg.media_type)
    except InvalidInput as err:
        raise InvalidInput(f"{field}: {err.message}", field=f"{field}.{err.field or 'uri'}") from None


def optional_artifact(msg: common_pb2.ArtifactRef, field: str) -> ArtifactRef | None:
    """None when the message is unset/empty, else the validated reference."""
    return artifact_from_proto(msg, field) if msg.uri else None


def artifact_to_proto(ref: ArtifactRef) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256, size=ref.size, media_type=ref.media_type)
