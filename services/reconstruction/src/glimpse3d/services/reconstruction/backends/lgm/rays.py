"""LGM's camera conventions, its Plücker ray inputs, and the map between its frame and ours.

LGM's first camera sits at (0, 0, 1.5) looking at the origin, +y up, 49.1 degree field of view; its
rig adds azimuths 90, 180 and 270 at elevation 0 (the project's orbit conventions, up to scale).
:func:`lgm_frame` is the similarity ``p_ours = s R p_lgm + t`` carrying LGM's front camera onto the
photo's; :func:`select_views` finds the rig views among the request's; :func:`resample_view` maps
a view to LGM's intrinsics (outside the frame: white); :func:`plucker_rays` gives each pixel's ray
``(o x d, d)`` in LGM's frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from glimpse3d.core.cameras import Camera, invert_rigid, look_at, orbit_angles, orbit_eye, turned_about_up
from glimpse3d.core.errors import InvalidInput

LGM_FOVY_DEG = 49.1
LGM_CAM_RADIUS = 1.5
LGM_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Camera-to-world rotation of LGM's front camera (at +z, looking at the origin), OpenCV axes.
_FRONT_ROTATION = np.diag([1.0, -1.0, -1.0])
_FRONT_CENTRE = np.array([0.0, 0.0, LGM_CAM_RADIUS])


@dataclass(frozen=True, eq=False)
class Similarity:
    """``p_ours = scale * rotation @ p_lgm + translation``: LGM's frame -> the project's world."""

    scale: float
    rotation: np.ndarray  # [3, 3] proper rotation
    translation: np.ndarray  # [3]

    def points(self, p: np.ndarray) -> np.ndarray:
        """LGM points [N, 3] -> world points [N, 3]."""
        return self.scale * np.asarray(p, np.float64) @ self.rotation.T + self.translation

    def pose_to_lgm(self, camera_to_world: np.ndarray) -> np.ndarray:
        """A world camera-to-world [4, 4] (OpenCV axes) -> the same camera in LGM's frame."""
        out = np.eye(4)
        out[:3, :3] = self.rotation.T @ camera_to_world[:3, :3]
        out[:3, 3] = self.rotation.T @ (camera_to_world[:3, 3] - self.translation) / self.scale
        return out


def lgm_intrinsics(size: int) -> tuple[float, float]:
    """(focal, principal point) in pixels of LGM's square ``size`` x ``size`` cameras."""
    return 0.5 * size / math.tan(math.radians(LGM_FOVY_DEG) / 2), size / 2.0


def lgm_camera(camera_to_world: np.ndarray, size: int) -> Camera:
    """LGM's pinhole camera (49.1 degree field of view, centred) at a pose in LGM's frame."""
    f, c = lgm_intrinsics(size)
    return Camera(f, f, c, c, size, size, invert_rigid(np.asarray(camera_to_world, np.float64)))


def lgm_default_pose(azimuth_deg: float) -> np.ndarray:
    """Camera-to-world [4, 4] (OpenCV axes) of LGM's default rig camera at ``azimuth_deg``, elevation 0."""
    eye = orbit_eye(azimuth_deg, 0.0, LGM_CAM_RADIUS)
    return invert_rigid(look_at(eye, np.zeros(3)))


def lgm_frame(photo: Camera) -> Similarity:
    """The similarity that carries LGM's front camera onto ``photo`` (see the module docstring)."""
    depth = float(photo.translation[2])  # camera-space z of the world origin
    if depth <= 1e-6:
        raise InvalidInput(
            "camera: the world origin (the object centre) must be in front of the photo's camera, "
            f"got depth {depth:.3g}",
            field="camera",
        )
    c2w = photo.camera_to_world
    rotation = c2w[:3, :3] @ _FRONT_ROTATION.T
    scale = depth / LGM_CAM_RADIUS
    return Similarity(scale, rotation, c2w[:3, 3] - scale * rotation @ _FRONT_CENTRE)


def plucker_rays(camera_to_world: np.ndarray, size: int) -> np.ndarray:
    """[6, size, size] float32 Plücker coordinates (moment o x d, then unit direction d) of the rays
    through every pixel centre of LGM's ``size`` camera at ``camera_to_world`` (OpenCV axes)."""
    f, c = lgm_intrinsics(size)
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)  # pixel centres (u, v)
    local = np.stack([(j - c) / f, (i - c) / f, np.ones_like(j)], axis=-1)  # [S, S, 3] camera space
    d = local @ camera_to_world[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(camera_to_world[:3, 3], d.shape)
    return np.concatenate([np.cross(o, d), d], axis=-1).transpose(2, 0, 1).astype(np.float32)


def resample_view(rgb: np.ndarray, mask: np.ndarray | None, camera: Camera, size: int) -> np.ndarray:
    """A view (float [H, W, 3] in [0, 1], optional matte [H, W]) as LGM's ``size`` camera at the same
    pose would see it: composited over white, reprojected to LGM's intrinsics. Returns [size, size, 3]."""
    image = rgb if mask is None else rgb * mask[..., None] + (1.0 - mask[..., None])
    f, c = lgm_intrinsics(size)
    cam = camera
    shrink = min(f / camera.fx, f / camera.fy)
    if shrink < 0.75:  # area-filter large reductions first; the affine warp below is bilinear
        w, h = max(1, round(camera.width * shrink)), max(1, round(camera.height * shrink))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        cam = camera.with_size(w, h)
    ax, ay = f / cam.fx, f / cam.fy
    # u_lgm = ax (u - cx) + c in continuous coordinates; cv2 puts pixel centres at integers (u - 0.5).
    warp = np.array([[ax, 0.0, ax * (0.5 - cam.cx) + c - 0.5], [0.0, ay, ay * (0.5 - cam.cy) + c - 0.5]])
    out = cv2.warpAffine(image.astype(np.float32), warp, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(1.0, 1.0, 1.0))
    return np.clip(out, 0.0, 1.0)


def network_input(images: Sequence[np.ndarray], poses: Sequence[np.ndarray], size: int) -> np.ndarray:
    """[4, 9, size, size] float32: ImageNet-normalised RGB of each resampled view, then its rays."""
    out = []
    for image, pose in zip(images, poses, strict=True):
        assert image.shape == (size, size, 3), f"views must be [{size}, {size}, 3], got {list(image.shape)}"
        rgb = ((image - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
        out.append(np.concatenate([rgb, plucker_rays(pose, size)], axis=0))
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------- the view rig


def _rig_error_deg(camera: Camera, expected: Camera) -> float:
    """How far ``camera`` is from ``expected``: the larger of the rotation between their axes and the
    offset of their centres seen from the origin (as an angle), in degrees; inf if the distance differs
    by more than that angle allows."""
    rel = camera.rotation @ expected.rotation.T
    rot = math.degrees(math.acos(np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0)))
    r = max(float(np.linalg.norm(expected.position)), 1e-9)
    offset = math.degrees(math.atan(float(np.linalg.norm(camera.position - expected.position)) / r))
    return max(rot, offset)


def select_views(photo: Camera, cameras: Sequence[Camera], tolerance_deg: float) -> list[int]:
    """Indices into ``cameras`` of the views at +90, +180 and +270 degrees of azimuth from ``photo``
    (``photo`` turned about the vertical axis), each within ``tolerance_deg``; InvalidInput naming
    ``views`` with the expected azimuths when any is missing."""
    picked: list[int] = []
    missing: list[float] = []
    for offset in LGM_AZIMUTHS_DEG[1:]:
        expected = turned_about_up(photo, offset)
        errors = [_rig_error_deg(cam, expected) for cam in cameras]
        best = int(np.argmin(errors)) if errors else -1
        if best < 0 or errors[best] > tolerance_deg:
            missing.append(offset)
        else:
            picked.append(best)
    if missing:
        az, el, r = orbit_angles(photo)
        given = ", ".join(f"({a:.1f}, {e:.1f})" for a, e, _ in map(orbit_angles, cameras)) or "none"
        want = ", ".join(f"{(az + o) % 360:.1f}" for o in LGM_AZIMUTHS_DEG[1:])
        raise InvalidInput(
            f"views: the lgm backend needs 3 extra views of the object at azimuths {want} degrees "
            f"(the photo's camera at azimuth {az:.1f} turned by +90, +180, +270 about the vertical axis; "
            f"elevation {el:.1f}, distance {r:.3g}, within {tolerance_deg:g} degrees); missing the ones at "
            f"+{', +'.join(f'{m:g}' for m in missing)}. Views given (azimuth, elevation): {given}. "
            "The gateway sends them with reconstruction_views=3 and a learned multiview backend",
            field="views",
        )
    return picked
