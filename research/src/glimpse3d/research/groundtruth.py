"""Ground-truth views of the benchmark objects from an independent renderer: Embree ray casting.

The project's Gaussian rasterizer is never used here. Rays are cast against the triangle mesh with
Embree (through trimesh's ``RayMeshIntersector`` on embreex); why Embree over Mitsuba 3 and Open3D
is measured and written down in docs/research.md. Shading is Lambertian under one fixed world light
plus an ambient term, so colours do not depend on the viewpoint (a surface point has the same colour
in every view, which is what multi-view consistency and 3DGS band-0 colour assume).

Per view: ``rgb`` over a white background and ``mask`` (pixel coverage), both averaged over
``supersample^2`` rays per pixel; ``depth`` (camera z, 0 = background) and world ``normals`` (facing
the camera) from the ray through the pixel centre. Protocol (SF3D/SPAR3D on GSO): the object in the
unit box, an input view at the product's default photo camera and 16 held-out views on two
elevation rings, 256 px, white background.
"""

from __future__ import annotations

import hashlib
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from trimesh.ray.ray_pyembree import RayMeshIntersector

from glimpse3d.core import convert
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.research.objects import BenchmarkObject, load_object

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "gt-v1"  # bump when the renderer, cameras or objects change: the cache key changes
DEFAULT_RESOLUTION = 256
SUPERSAMPLE = 2
LIGHT_DIRECTION = np.array([0.4, 0.8, 0.6]) / np.linalg.norm([0.4, 0.8, 0.6])  # towards the light
AMBIENT = 0.45
BACKGROUND = (1.0, 1.0, 1.0)
HELDOUT_RINGS = ((0.0, 22.5), (30.0, 0.0))  # (elevation, first azimuth); 8 azimuths 45 degrees apart each


@dataclass(frozen=True, eq=False)
class View:
    camera: Camera
    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1] over white
    mask: np.ndarray  # [H, W] float32 coverage in [0, 1]
    depth: np.ndarray  # [H, W] float32 camera z, 0 on the background
    normals: np.ndarray  # [H, W, 3] float32 world normals facing the camera, 0 on the background

    @property
    def rgb_uint8(self) -> np.ndarray:
        return np.round(self.rgb * 255.0).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    obj: BenchmarkObject
    input: View
    heldout: list[View]


def input_camera(resolution: int = DEFAULT_RESOLUTION) -> Camera:
    """The product's default photo camera (azimuth 0, elevation 0, distance 2.7, 40 degree field of view)."""
    return orbit_camera(0.0, 0.0, convert.DEFAULT_ORBIT_RADIUS, width=resolution, height=resolution,
                        fov_y_deg=convert.DEFAULT_FOV_Y_DEG)


def heldout_cameras(resolution: int = DEFAULT_RESOLUTION) -> list[Camera]:
    """16 held-out cameras: elevation 0 at azimuths 22.5 + 45k, elevation 30 at azimuths 45k."""
    return [orbit_camera(start + 45.0 * k, el, convert.DEFAULT_ORBIT_RADIUS, width=resolution, height=resolution,
                         fov_y_deg=convert.DEFAULT_FOV_Y_DEG) for el, start in HELDOUT_RINGS for k in range(8)]


def camera_rays(camera: Camera, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(origin [3], unit world directions [H, W, s*s, 3]) of ``supersample^2`` stratified rays per pixel
    (one ray through the pixel centre when ``supersample`` is 1)."""
    offsets = (np.arange(supersample) + 0.5) / supersample  # [s]
    ou, ov = np.meshgrid(offsets, offsets)
    j, i = np.meshgrid(np.arange(camera.width), np.arange(camera.height))  # [H, W]
    u = j[..., None] + ou.reshape(-1)  # [H, W, S]
    v = i[..., None] + ov.reshape(-1)
    d_cam = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    d_world = d_cam @ camera.rotation  # R^T d for row vectors
    return camera.position, d_world / np.linalg.norm(d_world, axis=-1, keepdims=True)


class Raycaster:
    """Embree intersection and shading for one object."""

    def __init__(self, obj: BenchmarkObject) -> None:
        self.obj = obj
        self.mesh: trimesh.Trimesh = obj.mesh
        self._rays = RayMeshIntersector(self.mesh)

    def cast(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First hits of rays [M, 3] from ``origin``: (hit [M] bool, points [M, 3], normals [M, 3], rgb [M, 3])."""
        m = dirs.shape[0]
        origins = np.broadcast_to(origin, dirs.shape)
        # return_locations=True: (triangles, rays, locations); annotated as the union with the 2-tuple
        tri, ray, loc = typing.cast(tuple[np.ndarray, np.ndarray, np.ndarray], self._rays.intersects_id(
            origins, dirs, multiple_hits=False, return_locations=True))
        hit = np.zeros(m, bool)
        hit[ray] = True
        points = np.zeros((m, 3))
        normals = np.zeros((m, 3))
        rgb = np.zeros((m, 3))
        if len(ray):
            points[ray] = loc
            bary = trimesh.triangles.points_to_barycentric(self.mesh.triangles[tri], loc)
            if self.obj.smooth:
                n = np.einsum("mk,mkc->mc", bary, self.mesh.vertex_normals[self.mesh.faces[tri]])
            else:
                n = self.mesh.face_normals[tri]
            n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            n = np.where(((n * dirs[ray]).sum(1) > 0)[:, None], -n, n)  # two-sided: face the camera
            normals[ray] = n
            albedo = np.clip(self.obj.albedo(loc, tri, bary), 0.0, 1.0)
            rgb[ray] = albedo * (AMBIENT + (1 - AMBIENT) * np.clip(n @ LIGHT_DIRECTION, 0.0, None))[:, None]
        return hit, points, normals, rgb

    def render(self, camera: Camera, supersample: int = SUPERSAMPLE) -> View:
        h, w = camera.height, camera.width
        origin, dirs = camera_rays(camera, supersample)
        hit, _, _, rgb = self.cast(origin, dirs.reshape(-1, 3))
        s = supersample * supersample
        coverage = hit.reshape(h, w, s).mean(axis=2)
        colour = (rgb.reshape(h, w, s, 3) + (~hit).reshape(h, w, s, 1) * np.asarray(BACKGROUND)).mean(axis=2)
        origin, centre = camera_rays(camera, 1)
        hit_c, points, normals, _ = self.cast(origin, centre.reshape(-1, 3))
        z = (points - camera.position) @ camera.rotation[2]  # distance along the optical axis
        depth = np.where(hit_c, z, 0.0).reshape(h, w)
        return View(camera, colour.astype(np.float32), coverage.astype(np.float32), depth.astype(np.float32),
                    normals.reshape(h, w, 3).astype(np.float32))


# ---------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where ground truth is cached: ``GLIMPSE3D_RESEARCH_CACHE``, default ``.cache/research`` (git-ignored)."""
    return Path(os.environ.get("GLIMPSE3D_RESEARCH_CACHE", ".cache/research"))


def _cache_path(name: str, resolution: int) -> Path:
    return cache_dir() / f"{name}-{resolution}px-{PROTOCOL_VERSION}.npz"


def _save(path: Path, views: list[View]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        rgb=np.stack([np.round(v.rgb * 255).astype(np.uint8) for v in views]),
        mask=np.stack([v.mask for v in views]).astype(np.float16),
        depth=np.stack([v.depth for v in views]),
        normals=np.stack([v.normals for v in views]).astype(np.float16),
    )
    tmp.replace(path)


def _load(path: Path, cameras: list[Camera]) -> list[View]:
    with np.load(path) as data:
        if data["rgb"].shape[0] != len(cameras):
            raise InvalidInput(f"ground-truth cache {path} has {data['rgb'].shape[0]} views, want {len(cameras)}")
        return [View(cam, data["rgb"][k].astype(np.float32) / 255.0, data["mask"][k].astype(np.float32),
                     data["depth"][k], data["normals"][k].astype(np.float32)) for k, cam in enumerate(cameras)]


def ground_truth(name: str, resolution: int = DEFAULT_RESOLUTION, *, refresh: bool = False) -> GroundTruth:
    """The input view and the 16 held-out views of object ``name``, rendered once and cached.

    Colours are stored as 8-bit (as a photo would be); loading from the cache gives the same arrays
    as rendering afresh, quantised the same way.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 32 <= resolution <= 2048:
        raise InvalidInput(f"resolution must be an integer in 32..2048, got {resolution!r}", field="resolution")
    obj = load_object(name)
    cameras = [input_camera(resolution), *heldout_cameras(resolution)]
    path = _cache_path(name, resolution)
    if refresh or not path.exists():
        caster = Raycaster(obj)
        log.info("rendering ground truth of %s at %d px", name, resolution)
        _save(path, [caster.render(cam) for cam in cameras])
    views = _load(path, cameras)
    return GroundTruth(obj, views[0], views[1:])


def digest(gt: GroundTruth) -> str:
    """sha256 of every array of ``gt`` (determinism checks, results.json)."""
    h = hashlib.sha256()
    for v in (gt.input, *gt.heldout):
        for a in (v.rgb_uint8, v.mask, v.depth, v.normals):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def surface_samples(obj: BenchmarkObject, count: int = 20_000, seed: int = 0) -> np.ndarray:
    """[count, 3] points uniformly on the mesh surface (deterministic for a seed)."""
    points = trimesh.sample.sample_surface(obj.mesh, count, seed=seed)[0]  # (points, face indices)
    return np.asarray(points, np.float64)
