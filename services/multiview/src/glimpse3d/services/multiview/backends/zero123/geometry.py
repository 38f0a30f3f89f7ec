"""Geometry of the ``zero123`` backend: relative poses, framing the photo for the model, and
placing each generated view into its target camera (conventions: docs/backends/multiview.md).

Relative pose ``[d_polar, sin d_azimuth, cos d_azimuth, d_radius]``: our +y-up world maps onto
Zero-1-to-3's Blender frame by ``(x, y, z) -> (z, x, y)``, so ``d_polar`` is minus the elevation
change and ``d_azimuth`` the orbit azimuth change; ``d_radius = reference_radius * (r_t / r_i - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from glimpse3d.core.cameras import Camera, orbit_angles
from glimpse3d.core.errors import InvalidInput
from glimpse3d.services.multiview.api import GeneratedView
from glimpse3d.services.multiview.matte import object_hull

CLOSE_FRACTION = 0.03  # closing disc of the generated object's matte, fraction of R


# --- poses -------------------------------------------------------------------------------------


def _spherical(camera: Camera, field: str) -> tuple[float, float, float]:
    """(polar angle from +y, azimuth, distance) of the camera centre around the origin, in radians."""
    azimuth_deg, elevation_deg, r = orbit_angles(camera)
    if r < 1e-9:
        raise InvalidInput("camera sits at the object centre (the world origin); no viewpoint to condition on",
                           field=field)
    return math.pi / 2 - math.radians(elevation_deg), math.radians(azimuth_deg), r


def relative_pose(input_camera: Camera, target: Camera, reference_radius: float = 1.85,
                  field: str = "views") -> np.ndarray:
    """Zero-1-to-3's conditioning ``[d_polar, sin d_azimuth, cos d_azimuth, d_radius]`` (float32 [4])
    of ``target`` relative to ``input_camera`` (convention: the module docstring)."""
    polar_i, az_i, r_i = _spherical(input_camera, "input_camera")
    polar_t, az_t, r_t = _spherical(target, field)
    d_az = (az_t - az_i) % (2.0 * math.pi)
    return np.array([polar_t - polar_i, math.sin(d_az), math.cos(d_az), reference_radius * (r_t / r_i - 1.0)],
                    np.float32)


# --- framing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Framing:
    """The similarity from input-photo pixels to model pixels: ``u_z = R/2 + scale * (u - centre)``."""

    scale: float
    centre: tuple[float, float]  # (u, v) image coordinates in the input photo
    resolution: int

    def matrix(self) -> np.ndarray:
        """[2, 3] OpenCV affine (pixel indices) from the photo to the model image."""
        s, (uc, vc), half = self.scale, self.centre, self.resolution / 2.0
        return np.array([[s, 0.0, half - 0.5 + s * (0.5 - uc)], [0.0, s, half - 0.5 + s * (0.5 - vc)]])


def estimate_matte(image: np.ndarray, threshold: float) -> np.ndarray:
    """float32 [H, W] matte of a photo that came without one: pixels whose colour differs from the
    median of the border ring by more than ``threshold``, closed and hole-filled; all ones when
    nothing differs (the whole frame is the object)."""
    ring = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # [2H + 2W, 3]
    diff = np.abs(image - np.median(ring, axis=0)).max(axis=2)  # [H, W]
    hull = object_hull((diff > threshold).astype(np.float32), 0.5, CLOSE_FRACTION)
    return hull.astype(np.float32) if hull.any() else np.ones(image.shape[:2], np.float32)


def _antialias(image: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian pre-blur before shrinking by ``scale`` < 1 (sigma = (1/scale - 1) / 2)."""
    if scale >= 1.0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=(1.0 / scale - 1.0) / 2.0)


def frame_input(image: np.ndarray, matte: np.ndarray, ratio: float, resolution: int) -> tuple[np.ndarray, Framing]:
    """The model input (uint8 [R, R, 3], the object over white, centred) and its :class:`Framing`."""
    rows, cols = np.nonzero(matte >= 0.5)
    if rows.size == 0:
        raise InvalidInput("the mask has no object pixels (none >= 0.5)", field="mask")
    extent = max(cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    centre = ((cols.min() + cols.max() + 1) / 2.0, (rows.min() + rows.max() + 1) / 2.0)
    framing = Framing(ratio * resolution / float(extent), centre, resolution)
    over_white = image * matte[..., None] + (1.0 - matte[..., None])  # [H, W, 3]
    warped = cv2.warpAffine(_antialias(over_white.astype(np.float32), framing.scale), framing.matrix(),
                            (resolution, resolution), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(1.0, 1.0, 1.0))
    return np.rint(np.clip(warped, 0.0, 1.0) * 255.0).astype(np.uint8), framing


def object_centre(input_camera: Camera, framing: Framing) -> np.ndarray:
    """[3] world point seen at the framing centre, at the input camera's depth of the world origin."""
    _, depth = input_camera.project(np.zeros((1, 3)))
    if depth[0] <= 1e-9:
        raise InvalidInput("the world origin (the object) is behind the input camera", field="input_camera")
    return input_camera.unproject(np.array([framing.centre]), depth)[0]


def placement(framing: Framing, input_camera: Camera, target: Camera, centre: np.ndarray, field: str) -> np.ndarray:
    """[2, 3] OpenCV affine from the model image to the ``target`` image: the model image centre goes to
    the target's projection of ``centre``, one model pixel spans ``f_t / (scale * f_i)`` target pixels."""
    uv, depth = target.project(centre[None])
    if depth[0] <= 1e-9:
        raise InvalidInput("the object centre is behind this camera", field=field)
    kx = target.fx / (framing.scale * input_camera.fx)
    ky = target.fy / (framing.scale * input_camera.fy)
    half = framing.resolution / 2.0
    u0, v0 = uv[0]
    return np.array([[kx, 0.0, u0 - 0.5 + kx * (0.5 - half)], [0.0, ky, v0 - 0.5 + ky * (0.5 - half)]])


def generated_matte(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """float32 [R, R] matte of a generated view ([R, R, 3] in [0, 1] over white)."""
    diff = (1.0 - rgb).max(axis=2)
    return object_hull((diff > threshold).astype(np.float32), 0.5, CLOSE_FRACTION).astype(np.float32)


def place_view(rgb: np.ndarray, matte: np.ndarray, affine: np.ndarray, target: Camera,
               background: np.ndarray) -> GeneratedView:
    """One generated ``R x R`` view (colour over white, matte) mapped into ``target``'s image."""
    size = (target.width, target.height)
    k = min(affine[0, 0], affine[1, 1])
    colour = cv2.warpAffine(_antialias(rgb.astype(np.float32), k), affine, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(1.0, 1.0, 1.0))
    mask = cv2.warpAffine(_antialias(matte, k), affine, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    mask = np.clip(mask, 0.0, 1.0).astype(np.float32)
    out = colour * mask[..., None] + background[None, None, :] * (1.0 - mask[..., None])
    return GeneratedView(np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8), mask)
