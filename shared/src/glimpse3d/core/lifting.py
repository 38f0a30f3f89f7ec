"""Flat Gaussians lifted from a depth map: the lift backend's layers and the re-lift of an extra photo.

A *layer* is a set of Gaussians that came from image samples (pixels). Each is a flat disc at the
sample's unprojected position, oriented by the surface normal of the (smoothed) depth map and sized
to the pixel footprint at its depth; the in-plane axis along the slant is stretched by
1 / cos(angle to the view ray) (capped) so that surfaces seen at a grazing angle stay closed.

Needs OpenCV (``opencv-python-headless``), which the services that lift (reconstruction,
backprojection) install; the gateway never imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from glimpse3d.core.cameras import Camera
from glimpse3d.core.splat import Splat, rgb_to_sh0

_MIN_COS = 0.5  # in-plane stretch at grazing angles is capped at 1 / _MIN_COS (rim walls do the rest)
THIN = 0.2  # disc thickness relative to the in-plane footprint


@dataclass(frozen=True, eq=False)
class Layer:
    """Gaussians lifted from image samples; all arrays share the first dimension N."""

    means: np.ndarray  # [N, 3] world
    quats: np.ndarray  # [N, 4] (w, x, y, z)
    log_scales: np.ndarray  # [N, 3]
    colors: np.ndarray  # [N, 3] in [0, 1]
    pixels: np.ndarray  # [N, 2] int (row, col) the sample came from

    def __len__(self) -> int:
        return int(self.means.shape[0])


def smooth_depth(depth: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Mask-aware Gaussian blur of ``depth`` [H, W] over ``valid`` pixels (normalised convolution)."""
    if sigma <= 0:
        return depth
    w = valid.astype(np.float32)
    num = cv2.GaussianBlur(depth * w, (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return np.where(valid, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def _masked_diff(z: np.ndarray, valid: np.ndarray, axis: int) -> np.ndarray:
    """d z / d pixel along ``axis`` [H, W]: central where both neighbours are valid, else one-sided, else 0."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 1)
    zp, vp = np.pad(z, pad), np.pad(valid, pad)
    n = z.shape[axis]
    nxt = np.take(zp, range(2, n + 2), axis=axis), np.take(vp, range(2, n + 2), axis=axis)
    prv = np.take(zp, range(0, n), axis=axis), np.take(vp, range(0, n), axis=axis)
    fwd = np.where(nxt[1], nxt[0] - z, 0.0)
    bwd = np.where(prv[1], z - prv[0], 0.0)
    both = nxt[1] & prv[1]
    return np.where(both, 0.5 * (fwd + bwd), fwd + bwd).astype(np.float32)


def camera_normals(depth: np.ndarray, valid: np.ndarray, camera: Camera) -> np.ndarray:
    """[H, W, 3] unit camera-space surface normals of a z-depth map, facing the camera."""
    rays = camera.pixel_rays().astype(np.float32)  # [H, W, 3] with z = 1
    dzdu = _masked_diff(depth, valid, axis=1)[..., None]  # [H, W, 1]
    dzdv = _masked_diff(depth, valid, axis=0)[..., None]
    z = depth[..., None]
    du = dzdu * rays + z * np.array([1.0 / camera.fx, 0.0, 0.0], np.float32)  # [H, W, 3] dP/du
    dv = dzdv * rays + z * np.array([0.0, 1.0 / camera.fy, 0.0], np.float32)  # [H, W, 3] dP/dv
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), -rays / np.linalg.norm(rays, axis=-1, keepdims=True))
    flip = np.sum(n * rays, axis=-1, keepdims=True) > 0
    return np.where(flip, -n, n).astype(np.float32)


def rotmat_to_quat(m: np.ndarray) -> np.ndarray:
    """[N, 4] unit (w, x, y, z) quaternions of rotation matrices [N, 3, 3] (Shepperd's method)."""
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([
        np.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                  m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], 1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0],
                  1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], 1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0],
                  m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1),
    ])  # [4, N, 4]; the candidate with the largest diagonal term is the stable one
    pick = np.argmax(np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]]), axis=0)  # [N]
    q = cand[pick, np.arange(m.shape[0])]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q).astype(np.float32)


def disc_gaussians(
    points: np.ndarray, normals: np.ndarray, sigma: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat Gaussians at camera-space ``points`` [N, 3] with ``normals`` [N, 3], footprint ``sigma`` [N].

    Returns world (means [N, 3], quats [N, 4], log_scales [N, 3]). The in-plane axis along the slant
    is stretched by 1 / cos(angle to the view ray) (capped) so the disc covers its pixel footprint.
    """
    rays = points / np.linalg.norm(points, axis=1, keepdims=True)  # [N, 3]
    cos = np.abs(np.sum(rays * normals, axis=1))  # [N]
    t1 = rays - np.sum(rays * normals, axis=1, keepdims=True) * normals  # ray projected into the plane
    t1_norm = np.linalg.norm(t1, axis=1, keepdims=True)
    fallback = np.cross(normals, [0.0, 1.0, 0.0])  # any in-plane direction when facing the camera
    fallback /= np.maximum(np.linalg.norm(fallback, axis=1, keepdims=True), 1e-12)
    t1 = np.where(t1_norm > 1e-6, t1 / np.maximum(t1_norm, 1e-12), fallback)
    t2 = np.cross(normals, t1)
    rot_cam = np.stack([t1, t2, normals], axis=2)  # [N, 3, 3], columns = local axes
    rot_world = camera.rotation.T[None] @ rot_cam  # [N, 3, 3]
    scales = np.stack([sigma / np.maximum(cos, _MIN_COS), sigma, THIN * sigma], axis=1)  # [N, 3]
    means = (points - camera.translation) @ camera.rotation  # [N, 3] camera -> world
    return means.astype(np.float32), rotmat_to_quat(rot_world), np.log(scales).astype(np.float32)


def sample_grid(valid: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(pixels [N, 2] (row, col) on a regular grid over ``valid`` with N <= ``target``, spacing in px)."""
    count = int(valid.sum())
    spacing = max(1.0, math.sqrt(count / max(target, 1)))
    phase = rng.uniform(0.0, 1.0, size=2)  # sub-grid offset, in spacings
    h, w = valid.shape
    while True:
        rows = np.floor((np.arange(math.ceil(h / spacing)) + phase[0]) * spacing).astype(int)
        cols = np.floor((np.arange(math.ceil(w / spacing)) + phase[1]) * spacing).astype(int)
        rows, cols = np.unique(rows[rows < h]), np.unique(cols[cols < w])
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        keep = valid[rr, cc]
        if int(keep.sum()) <= target:
            return np.stack([rr[keep], cc[keep]], axis=1), spacing
        spacing *= 1.03


def rays_at(camera: Camera, pixels: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """[N, 3] camera rays (z = 1) through ``pixels`` [N, 2] (row, col) centres moved by ``shift`` [N, 2] (x, y) px."""
    u = pixels[:, 1] + 0.5 + (0.0 if shift is None else shift[:, 0])
    v = pixels[:, 0] + 0.5 + (0.0 if shift is None else shift[:, 1])
    return np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], 1).astype(np.float32)


def lift_layer(
    depth: np.ndarray, valid: np.ndarray, colors: np.ndarray, pixels: np.ndarray, sigma_px: float, camera: Camera,
    shift: np.ndarray | None = None,
) -> Layer:
    """Gaussians for ``pixels`` [N, 2] of a depth map [H, W] (normals from the smoothed map).

    ``shift`` [N, 2] (x, y) px optionally moves each Gaussian's ray off its pixel centre (the depth,
    normal and footprint stay those of the pixel).
    """
    smooth = smooth_depth(depth, valid, sigma=max(1.0, sigma_px))
    normals = camera_normals(smooth, valid, camera)[pixels[:, 0], pixels[:, 1]]  # [N, 3]
    rays = rays_at(camera, pixels, shift)  # [N, 3]
    z = depth[pixels[:, 0], pixels[:, 1]]  # [N]
    points = rays * z[:, None]  # [N, 3] camera space
    sigma = sigma_px * z / math.sqrt(camera.fx * camera.fy)  # [N] world units
    means, quats, log_scales = disc_gaussians(points, normals, sigma, camera)
    return Layer(means, quats, log_scales, colors.astype(np.float32), pixels)


def outward_directions(dist: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """[N, 3] camera-space unit vectors (z = 0) at ``pixels`` pointing out of the silhouette (down ``dist``)."""
    smooth = cv2.GaussianBlur(dist, (0, 0), 1.5)
    gx = -cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)[pixels[:, 0], pixels[:, 1]]  # [N] (+x right)
    gy = -cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)[pixels[:, 0], pixels[:, 1]]  # [N] (+y down)
    out = np.stack([gx, gy, np.zeros_like(gx)], axis=1)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norm > 1e-6, out / np.maximum(norm, 1e-6), [1.0, 0.0, 0.0]).astype(np.float32)


def layers_to_splat(layers: Sequence[Layer], opacities: Sequence[np.ndarray]) -> Splat:
    """Concatenate layers into one degree-0 splat with the given per-layer opacities [N_i]."""
    means = np.concatenate([layer.means for layer in layers])
    opac = np.clip(np.concatenate(opacities), 1e-4, 1 - 1e-4).astype(np.float32)
    return Splat(
        means=means,
        quats=np.concatenate([layer.quats for layer in layers]),
        log_scales=np.concatenate([layer.log_scales for layer in layers]),
        opacity_logits=(np.log(opac) - np.log1p(-opac)).astype(np.float32),
        sh=rgb_to_sh0(np.concatenate([layer.colors for layer in layers]))[:, None, :],
    )




def to_world(points: np.ndarray, camera: Camera) -> np.ndarray:
    """Camera-space points [N, 3] -> world [N, 3], float32."""
    return ((points - camera.translation) @ camera.rotation).astype(np.float32)
