"""Splat -> mesh against ground truth: the Chamfer distance of the exported mesh beside the splat's own.

For each benchmark object two splats are meshed with :func:`glimpse3d.core.mesh.splat_to_mesh`:

- ``surface``: flat, opaque Gaussians on the true surface (``count`` uniform samples, coloured by the
  object's albedo, oriented by its face normals): what the mesher makes of a faithful splat;
- ``coarse``: the product's first version from the input photo (weight-free depth and
  reconstruction backends, :mod:`glimpse3d.research.coarse`): what a user's first export gets.

Both splat and mesh are scored with the suite's shape protocol (:func:`metrics.chamfer_fscore`
against ``surface_samples`` of the true mesh, from the depth of the 16 held-out views: the splat's
rendered depth where alpha > 0.5, the mesh's first ray hit), so the two columns compare like with like.
The held-out views cover both elevation rings, not the underside.

``python -m glimpse3d.research.meshing [objects...]`` prints a Markdown table (docs/mesh.md).
"""

from __future__ import annotations

import argparse
import time
from typing import cast

import numpy as np
import trimesh

from glimpse3d.core.cameras import Camera
from glimpse3d.core.mesh import splat_to_mesh
from glimpse3d.core.splat import Splat
from glimpse3d.research import metrics
from glimpse3d.research.groundtruth import ground_truth, surface_samples
from glimpse3d.research.objects import BenchmarkObject

DEFAULT_OBJECTS = ("ellipsoid", "checker_box", "torus", "bowl")
SURFACE_GAUSSIANS = 30_000


def surface_splat(obj: BenchmarkObject, count: int = SURFACE_GAUSSIANS, seed: int = 0) -> Splat:
    """Flat discs on the true surface, coloured by the albedo, about as wide as their spacing."""
    sampled = trimesh.sample.sample_surface(obj.mesh, count, seed=seed)  # (points, face indices)
    points, faces = np.asarray(sampled[0], np.float64), np.asarray(sampled[1])
    bary = trimesh.triangles.points_to_barycentric(obj.mesh.triangles[faces], points)
    colours = np.clip(obj.albedo(points, faces, bary), 0.0, 1.0)
    normals = np.asarray(obj.mesh.face_normals[faces], np.float64)
    w = 1.0 + normals[:, 2]
    quats = np.stack([w, -normals[:, 1], normals[:, 0], np.zeros_like(w)], axis=1)
    quats[w < 1e-8] = [0.0, 1.0, 0.0, 0.0]
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    spacing = float(np.sqrt(obj.mesh.area / count))
    scales = np.tile([0.9 * spacing, 0.9 * spacing, 0.1 * spacing], (count, 1))
    return Splat.from_colors(points.astype(np.float32), colours.astype(np.float32), scales,
                             np.full(count, 0.97, np.float32), quats=quats.astype(np.float32))


def splat_points(splat: Splat, cameras: list[Camera]) -> np.ndarray:
    import torch

    from glimpse3d.core.render import rasterize

    points = []
    with torch.no_grad():
        for camera in cameras:
            out = rasterize(splat, camera)
            points.append(metrics.depth_points(camera, out.depth.numpy(), out.alpha.numpy()))
    return np.concatenate(points)


def mesh_points(mesh: trimesh.Trimesh, cameras: list[Camera]) -> np.ndarray:
    points = []
    for camera in cameras:
        rays = camera.pixel_rays().reshape(-1, 3) @ camera.rotation
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        origins = np.tile(camera.position, (len(rays), 1))
        # (triangles, rays, locations) with return_locations
        found = cast(tuple[np.ndarray, np.ndarray, np.ndarray],
                     mesh.ray.intersects_id(origins, rays, multiple_hits=False, return_locations=True))
        points.append(np.asarray(found[2], np.float64))
    return np.concatenate(points)


def score(name: str, resolution: int = 128) -> dict[str, dict[str, float]]:
    """{"surface" | "coarse": {splat_chamfer, mesh_chamfer, splat_fscore, mesh_fscore, seconds, faces}}."""
    from glimpse3d.research.coarse import Stages, coarse_splat

    gt = ground_truth(name, resolution)
    truth = surface_samples(gt.obj)
    cameras = [v.camera for v in gt.heldout]
    splats = {"surface": surface_splat(gt.obj), "coarse": coarse_splat(gt, Stages.load())[0]}
    out: dict[str, dict[str, float]] = {}
    for kind, splat in splats.items():
        start = time.perf_counter()
        mesh = splat_to_mesh(splat)
        seconds = time.perf_counter() - start
        welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
        s = metrics.chamfer_fscore(splat_points(splat, cameras), truth)
        m = metrics.chamfer_fscore(mesh_points(mesh, cameras), truth)
        out[kind] = {"gaussians": float(splat.num_gaussians), "splat_chamfer": s.chamfer, "mesh_chamfer": m.chamfer,
                     "splat_fscore": s.fscore, "mesh_fscore": m.fscore, "seconds": seconds,
                     "faces": float(len(mesh.faces)), "watertight": float(welded.is_watertight)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("objects", nargs="*", default=list(DEFAULT_OBJECTS))
    parser.add_argument("--resolution", type=int, default=128, help="held-out view size in pixels")
    ns = parser.parse_args()
    print("| object | splat | Gaussians | Chamfer splat | Chamfer mesh | F@0.1 splat | F@0.1 mesh | faces | "
          "watertight | mesh s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in ns.objects:
        for kind, r in score(name, ns.resolution).items():
            print(f"| {name} | {kind} | {r['gaussians']:.0f} | {r['splat_chamfer']:.4f} | {r['mesh_chamfer']:.4f} | "
                  f"{r['splat_fscore']:.3f} | {r['mesh_fscore']:.3f} | {r['faces']:.0f} | "
                  f"{'yes' if r['watertight'] else 'no'} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
