"""TripoSR triplane NeRF -> Gaussians, and TripoSR's object frame -> the project's world.

- :func:`triplane_to_gaussians`: the density is evaluated at the cell centres of a
  ``resolution``^3 grid over TripoSR's cube [-r, r]^3 (seeded sub-cell shift with ``jitter``);
  cells at least ``density_threshold`` dense, in the outer ``shell_voxels`` layers (found by 3x3x3
  erosion), become isotropic Gaussians of std ``gaussian_scale * h`` with the decoder's colour and
  the alpha of one cell under TripoSR's volume rendering, ``1 - exp(-sigma h / (2 r))``; over the
  budget, the shallowest layers are kept (seeded order within a layer).
- Frames: TripoSR is right-handed, +z up, its canonical camera at (1.9, 0, 0) with a 40 degree
  field of view; in OpenCV camera axes it maps p to ``(p_y, -p_z, 1.9 - p_x)`` (:data:`OBJECT_TO_CAMERA`).
- :func:`placement_for_crop`: the crop is a virtual camera inside the photo's; the object goes on
  the ray through the crop centre at the photo camera's depth of the world origin, turned onto that
  ray and scaled so its apparent size matches (exact at the centre, first order around it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from glimpse3d.core.cameras import Camera, intrinsics_from_fov, look_at
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.splat import Splat
from glimpse3d.services.reconstruction.backends.triposr.preprocess import Crop

TRIPOSR_CAMERA_DISTANCE = 1.9
TRIPOSR_FOV_Y_DEG = 40.0
# World-to-camera rotation of TripoSR's canonical camera (OpenCV axes): rows right, down, forward.
OBJECT_TO_CAMERA = look_at((TRIPOSR_CAMERA_DISTANCE, 0.0, 0.0), (0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0))[:3, :3]
_MIN_OPACITY, _MAX_OPACITY = 1e-3, 0.999

Query = Callable[[Tensor], tuple[Tensor, Tensor]]  # points [N, 3] -> (density [N], rgb [N, 3])


@dataclass(frozen=True)
class GridOptions:
    resolution: int = 128
    density_threshold: float = 25.0
    shell_voxels: int = 2
    gaussian_scale: float = 0.6
    jitter: bool = True
    chunk_size: int = 65536  # points per decoder call; 0 = all at once


@dataclass(frozen=True, eq=False)
class ObjectGaussians:
    """Isotropic Gaussians in TripoSR's object frame."""

    means: np.ndarray  # [N, 3]
    sigma: float  # standard deviation, object units
    opacities: np.ndarray  # [N] in (0, 1)
    colors: np.ndarray  # [N, 3] in [0, 1]
    stats: dict[str, float]


def triposr_camera(size: int = 512) -> Camera:
    """TripoSR's canonical input camera in its own object frame (a ``size`` px square image)."""
    fx, fy, cx, cy = intrinsics_from_fov(TRIPOSR_FOV_Y_DEG, size, size)
    w2c = look_at((TRIPOSR_CAMERA_DISTANCE, 0.0, 0.0), (0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0))
    return Camera(fx, fy, cx, cy, size, size, w2c)


# ----------------------------------------------------------------------------- sampling


def cell_centers(resolution: int, radius: float, offset: Tensor) -> Tensor:
    """[R^3, 3] centres of the grid cells (x slowest, z fastest), shifted by ``offset`` [3]."""
    h = 2.0 * radius / resolution
    axis = -radius + (torch.arange(resolution, dtype=torch.float32) + 0.5) * h
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # [R, R, R, 3]
    return grid.reshape(-1, 3) + offset


def query_points(query: Query, points: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Decode ``points`` [N, 3] in chunks (cancellable between chunks) -> (density [N], rgb [N, 3]) on CPU."""
    step = chunk if chunk > 0 else max(len(points), 1)
    densities, colours = [], []
    for start in range(0, len(points), step):
        check_cancelled()
        density, rgb = query(points[start:start + step])
        densities.append(density.float().cpu())
        colours.append(rgb.float().cpu())
    if not densities:
        return torch.zeros(0), torch.zeros(0, 3)
    return torch.cat(densities), torch.cat(colours)


def occupancy_depth(occupied: Tensor, layers: int) -> Tensor:
    """[R, R, R] int: for occupied cells, how many 3x3x3 erosions they survive (0 = on the boundary),
    capped at ``layers``; outside the grid counts as empty. Empty cells get ``layers`` too."""
    depth = torch.full(occupied.shape, layers, dtype=torch.int64)
    current = occupied.float()[None, None]  # [1, 1, R, R, R]
    for k in range(layers):
        padded = functional.pad(current, (1, 1, 1, 1, 1, 1), value=0.0)
        eroded = -functional.max_pool3d(-padded, kernel_size=3, stride=1)
        boundary = (current > 0.5) & (eroded < 0.5)
        depth[boundary[0, 0]] = k
        current = eroded
    return depth


def voxel_opacity(density: Tensor, spacing: float, radius: float) -> Tensor:
    """Alpha of a cell of side ``spacing`` under TripoSR's rendering: ``1 - exp(-sigma * spacing / (2 r))``."""
    return -torch.expm1(-density * (spacing / (2.0 * radius)))


def select_cells(density: Tensor, opts: GridOptions, budget: int, generator: torch.Generator) -> tuple[Tensor, dict]:
    """Indices (into the flattened grid) of the cells that become Gaussians, and counts for the metrics."""
    occupied = density >= opts.density_threshold  # [R, R, R]
    layers = opts.shell_voxels if opts.shell_voxels > 0 else 4  # depth only ranks cells when all are kept
    depth = occupancy_depth(occupied, layers)
    keep = occupied & (depth < opts.shell_voxels) if opts.shell_voxels > 0 else occupied
    index = torch.nonzero(keep.reshape(-1)).squeeze(1)
    stats = {"occupied_cells": float(occupied.sum()), "candidate_cells": float(len(index))}
    if len(index) > budget:
        score = depth.reshape(-1)[index].double() + torch.rand(len(index), generator=generator, dtype=torch.float64)
        index = index[torch.argsort(score)[:budget]].sort().values
    return index, stats


@torch.no_grad()
def triplane_to_gaussians(query: Query, radius: float, opts: GridOptions, budget: int,
                          generator: torch.Generator) -> ObjectGaussians:
    """Sample the field ``query`` on the grid and turn the kept cells into Gaussians (module docstring)."""
    res = opts.resolution
    h = 2.0 * radius / res
    shift = (torch.rand(3, generator=generator) - 0.5) * h if opts.jitter else torch.zeros(3)
    centers = cell_centers(res, radius, shift)  # [R^3, 3]
    density, _ = query_points(query, centers, opts.chunk_size)
    index, stats = select_cells(density.reshape(res, res, res), opts, budget, generator)
    points = centers[index]  # [N, 3]
    kept_density, rgb = query_points(query, points, opts.chunk_size)
    opacity = voxel_opacity(kept_density, h, radius).clamp(_MIN_OPACITY, _MAX_OPACITY)
    stats.update({"grid_resolution": float(res), "grid_spacing": h, "max_density": float(density.max())})
    return ObjectGaussians(points.numpy().astype(np.float32), opts.gaussian_scale * h,
                           opacity.numpy().astype(np.float32), rgb.clamp(0.0, 1.0).numpy().astype(np.float32), stats)


# ----------------------------------------------------------------------------- placement


@dataclass(frozen=True, eq=False)
class Placement:
    """A similarity transform object -> world: ``x_world = scale * rotation @ x + translation``."""

    rotation: np.ndarray  # [3, 3] proper rotation
    scale: float
    translation: np.ndarray  # [3]

    def apply(self, points: np.ndarray) -> np.ndarray:
        """[N, 3] object points -> [N, 3] world points (float32)."""
        p = np.asarray(points, np.float64)
        return (self.scale * p @ self.rotation.T + self.translation).astype(np.float32)


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[3, 3] the smallest rotation taking unit vector ``a`` to unit vector ``b`` (Rodrigues)."""
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-12:
        return np.eye(3) if c > 0 else -np.eye(3) + 2.0 * np.outer(_perpendicular(a), _perpendicular(a))
    k = axis / s
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    angle = math.atan2(s, c)
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * kx @ kx


def _perpendicular(a: np.ndarray) -> np.ndarray:
    other = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    v = np.cross(a, other)
    return v / np.linalg.norm(v)


def placement_for_crop(camera: Camera, crop: Crop, distance: float) -> Placement:
    """Where the object TripoSR reconstructed from ``crop`` of the photo taken by ``camera`` sits in
    the world, its centre at camera-space depth ``distance`` (module docstring)."""
    u, v = crop.center_uv
    ray = np.array([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, 1.0])
    center_cam = ray * distance  # [3] camera space, z = distance
    turn = _rotation_between(np.array([0.0, 0.0, 1.0]), ray / np.linalg.norm(ray))
    focal_t = 0.5 / math.tan(math.radians(TRIPOSR_FOV_Y_DEG) / 2.0)  # per crop side
    focal = math.sqrt(camera.fx * camera.fy)
    scale = crop.size * focal_t * distance / (TRIPOSR_CAMERA_DISTANCE * focal)
    rotation = camera.rotation.T @ turn @ OBJECT_TO_CAMERA
    translation = camera.rotation.T @ (center_cam - camera.translation)
    return Placement(rotation, scale, translation)


def to_splat(gaussians: ObjectGaussians, placement: Placement) -> Splat:
    """The world-frame degree-0 splat of object-frame Gaussians."""
    n = len(gaussians.means)
    return Splat.from_colors(placement.apply(gaussians.means), gaussians.colors,
                             np.full((n, 3), gaussians.sigma * placement.scale, np.float32), gaussians.opacities)
