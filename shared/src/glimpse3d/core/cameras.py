"""Pinhole cameras.

Conventions (the same as gsplat, COLMAP and OpenCV, and written into protos/glimpse3d/v1/common.proto):

- World space is right-handed with +y up. Orbit azimuth 0 places the camera on the +z axis looking
  at the target; positive azimuth turns towards +x (counter-clockwise seen from above); positive
  elevation raises the camera.
- Camera space: +x right, +y down, +z forward (the camera looks along +z).
- ``world_to_camera`` is a 4x4 rigid transform, x_cam = R @ x_world + t.
- Intrinsics are in pixels; pixel (row i, column j) has its centre at image coordinates
  (u, v) = (j + 0.5, i + 0.5), and u = fx * x / z + cx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from glimpse3d.core.errors import InvalidInput, shorten

MAX_IMAGE_SIDE = 8192


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"camera {name} must be a number, got {shorten(value)}", field=f"camera.{name}") from None
    if not math.isfinite(v):
        raise InvalidInput(f"camera {name} must be finite, got {value}", field=f"camera.{name}")
    return v


def _is_integral(value: float) -> bool:
    """True for a finite whole number (int, or a float such as 256.0); False for NaN, inf, strings."""
    try:
        return int(value) == value
    except (TypeError, ValueError, OverflowError):
        return False


@dataclass(frozen=True, eq=False)
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    world_to_camera: np.ndarray = field(default_factory=lambda: np.eye(4))  # [4, 4] float64

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if self.fx <= 0 or self.fy <= 0:
            raise InvalidInput(
                f"camera focal lengths must be positive, got fx={self.fx}, fy={self.fy}", field="camera.fx"
            )
        for name in ("width", "height"):
            v = getattr(self, name)
            if not _is_integral(v) or not 1 <= int(v) <= MAX_IMAGE_SIDE:
                raise InvalidInput(
                    f"camera {name} must be an integer in 1..{MAX_IMAGE_SIDE}, got {v}", field=f"camera.{name}"
                )
            object.__setattr__(self, name, int(v))
        m = np.asarray(self.world_to_camera, dtype=np.float64)
        if m.shape != (4, 4):
            raise InvalidInput(
                f"camera world_to_camera must be 4x4, got shape {list(m.shape)}", field="camera.world_to_camera"
            )
        if not np.isfinite(m).all():
            raise InvalidInput("camera world_to_camera has a non-finite entry", field="camera.world_to_camera")
        r = m[:3, :3]
        rigid = np.allclose(r @ r.T, np.eye(3), atol=1e-4) and np.linalg.det(r) > 0
        if not rigid or not np.allclose(m[3], [0, 0, 0, 1]):
            raise InvalidInput(
                "camera world_to_camera must be a rigid transform (proper rotation, det +1; last row 0 0 0 1)",
                field="camera.world_to_camera",
            )
        object.__setattr__(self, "world_to_camera", m)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the standard name for the intrinsic matrix
        """[3, 3] intrinsic matrix."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    @property
    def rotation(self) -> np.ndarray:
        return self.world_to_camera[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.world_to_camera[:3, 3]

    @property
    def camera_to_world(self) -> np.ndarray:
        return invert_rigid(self.world_to_camera)

    @property
    def position(self) -> np.ndarray:
        """[3] camera centre in world space."""
        return -self.rotation.T @ self.translation

    def with_size(self, width: int, height: int) -> Camera:
        """Same view at another resolution (intrinsics scaled)."""
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height, self.world_to_camera)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [N, 3] -> (pixel coords [N, 2] as (u, v), camera-space depth [N])."""
        pts = np.asarray(points, dtype=np.float64)
        cam = pts @ self.rotation.T + self.translation
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * cam[:, 0] / z + self.cx, self.fy * cam[:, 1] / z + self.cy], axis=1)
        return uv, z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coords [N, 2] and camera-space z-depth [N] -> world points [N, 3]."""
        uv = np.asarray(uv, dtype=np.float64)
        z = np.asarray(depth, dtype=np.float64)
        cam = np.stack([(uv[:, 0] - self.cx) / self.fx * z, (uv[:, 1] - self.cy) / self.fy * z, z], axis=1)
        return (cam - self.translation) @ self.rotation

    def pixel_rays(self) -> np.ndarray:
        """[H, W, 3] camera-space ray directions with z = 1 through every pixel centre."""
        j, i = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        return np.stack([(j - self.cx) / self.fx, (i - self.cy) / self.fy, np.ones_like(j)], axis=-1)


MIN_VIEW_SIDE = 32  # a smaller view holds too few pixels for a diffusion pass to add anything
MIN_VIEW_FOV_DEG, MAX_VIEW_FOV_DEG = 1.0, 170.0  # the field-of-view range an orbit view accepts
MIN_VISIBLE_FRACTION = 0.001


def check_view_camera(camera: Camera, field: str = "view") -> None:
    """InvalidInput naming ``field`` unless ``camera`` can render a useful view: each side at least
    MIN_VIEW_SIDE pixels, the principal point inside the image, and fields of view in
    [MIN_VIEW_FOV_DEG, MAX_VIEW_FOV_DEG] degrees (a 1x1 image or cx = 1e308 renders nothing)."""
    if min(camera.width, camera.height) < MIN_VIEW_SIDE:
        raise InvalidInput(f"{field} image is {camera.width}x{camera.height} pixels; each side must be at least "
                           f"{MIN_VIEW_SIDE}", field=field)
    if not (0.0 <= camera.cx <= camera.width and 0.0 <= camera.cy <= camera.height):
        raise InvalidInput(f"{field} principal point (cx={camera.cx:.6g}, cy={camera.cy:.6g}) must lie inside its "
                           f"{camera.width}x{camera.height} image", field=field)
    for axis, focal, side in (("x", camera.fx, camera.width), ("y", camera.fy, camera.height)):
        fov = math.degrees(2.0 * math.atan(side / (2.0 * focal)))
        if not MIN_VIEW_FOV_DEG <= fov <= MAX_VIEW_FOV_DEG:
            raise InvalidInput(f"{field} field of view along {axis} is {fov:.4g} degrees (f{axis}={focal:.6g}); it "
                               f"must be in [{MIN_VIEW_FOV_DEG:g}, {MAX_VIEW_FOV_DEG:g}]", field=field)


def visible_fraction(camera: Camera, points: np.ndarray) -> float:
    """The fraction of ``points`` [N, 3] (e.g. Gaussian centres) in front of ``camera`` and inside its
    image; 0.0 for no points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(pts):
        return 0.0
    uv, z = camera.project(pts)
    with np.errstate(invalid="ignore"):
        inside = ((z > 1e-6) & np.isfinite(uv).all(axis=1) & (uv[:, 0] >= 0) & (uv[:, 0] <= camera.width)
                  & (uv[:, 1] >= 0) & (uv[:, 1] <= camera.height))
    return float(inside.mean())


def check_sees(camera: Camera, points: np.ndarray, field: str = "view") -> None:
    """InvalidInput naming ``field`` when ``camera`` sees less than MIN_VISIBLE_FRACTION of ``points``
    (it looks away from the object, or the object is behind it)."""
    seen = visible_fraction(camera, points)
    if seen < MIN_VISIBLE_FRACTION:
        raise InvalidInput(f"{field} sees {seen:.2%} of the model's Gaussians (at least {MIN_VISIBLE_FRACTION:.1%} "
                           "must be in front of the camera and inside its image); aim it at the object",
                           field=field)


def invert_rigid(m: np.ndarray) -> np.ndarray:
    r, t = m[:3, :3], m[:3, 3]
    out = np.eye(4)
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ t
    return out


def intrinsics_from_fov(fov_y_deg: float, width: int, height: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) for a vertical field of view in degrees, square pixels, centred principal point."""
    fov = _finite("fov_y_deg", fov_y_deg)
    if not 1.0 <= fov <= 170.0:
        raise InvalidInput(f"fov_y_deg must be in [1, 170], got {fov}", field="fov_y_deg")
    f = 0.5 * height / math.tan(math.radians(fov) / 2)
    return f, f, width / 2.0, height / 2.0


def look_at(eye: npt.ArrayLike, target: npt.ArrayLike, up: npt.ArrayLike = (0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera [4, 4] for a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    eye = np.asarray(eye, np.float64)
    target = np.asarray(target, np.float64)
    up = np.asarray(up, np.float64)
    if not (np.isfinite(eye).all() and np.isfinite(target).all() and np.isfinite(up).all()):
        raise InvalidInput("look_at needs finite eye, target and up", field="eye")
    fwd = target - eye
    if np.linalg.norm(fwd) < 1e-12:
        raise InvalidInput("look_at needs eye and target to differ", field="eye")
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along `up`: pick any perpendicular
        right = np.cross(fwd, [0.0, 0.0, 1.0] if abs(fwd[2]) < 0.9 else [1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, down, fwd])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def orbit_eye(azimuth_deg: float, elevation_deg: float, radius: float, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    az = math.radians(_finite("azimuth_deg", azimuth_deg))
    el = math.radians(_finite("elevation_deg", elevation_deg))
    r = _finite("radius", radius)
    if r <= 0:
        raise InvalidInput(f"orbit radius must be positive, got {r}", field="radius")
    if abs(elevation_deg) >= 90:
        raise InvalidInput(f"elevation_deg must be in (-90, 90), got {elevation_deg}", field="elevation_deg")
    offset = r * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    return np.asarray(target, np.float64) + offset


def orbit_camera(
    azimuth_deg: float,
    elevation_deg: float,
    radius: float,
    *,
    width: int = 256,
    height: int = 256,
    fov_y_deg: float = 40.0,
    target=(0.0, 0.0, 0.0),
) -> Camera:
    """A camera on a sphere of ``radius`` around ``target`` looking at it."""
    fx, fy, cx, cy = intrinsics_from_fov(fov_y_deg, width, height)
    eye = orbit_eye(azimuth_deg, elevation_deg, radius, target)
    return Camera(fx, fy, cx, cy, width, height, look_at(eye, target))


def orbit_cameras(
    n: int,
    elevation_deg: float,
    radius: float,
    *,
    start_azimuth_deg: float = 0.0,
    **kwargs,
) -> list[Camera]:
    """``n`` cameras evenly spaced in azimuth (a turntable)."""
    if n < 1:
        raise InvalidInput(f"need at least one orbit camera, got {n}", field="n")
    return [orbit_camera(start_azimuth_deg + 360.0 * k / n, elevation_deg, radius, **kwargs) for k in range(n)]


def orbit_angles(camera: Camera) -> tuple[float, float, float]:
    """(azimuth in degrees in [0, 360), elevation in degrees, distance) of the camera centre seen from
    the world origin: the inverse of :func:`orbit_eye` (all zero when the camera sits at the origin)."""
    p = camera.position
    r = float(np.linalg.norm(p))
    if r < 1e-12:
        return 0.0, 0.0, 0.0
    return math.degrees(math.atan2(p[0], p[2])) % 360.0, math.degrees(math.asin(np.clip(p[1] / r, -1, 1))), r


def turned_about_up(camera: Camera, azimuth_deg: float) -> Camera:
    """``camera`` carried round the world's vertical (+y) axis through the origin by ``azimuth_deg``
    (positive turns +z towards +x): the same elevation, distance and intrinsics at another azimuth."""
    a = math.radians(azimuth_deg)
    turn = np.eye(4)
    turn[:3, :3] = [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]]
    return Camera(camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
                  camera.world_to_camera @ turn.T)
