"""Splat -> watertight, UV-mapped, textured triangle mesh (the pipeline of docs/mesh.md).

1. Render colour, expected depth and alpha of the splat from ``views`` cameras spread over a sphere
   around it with the project's rasterizer (:func:`glimpse3d.core.render.rasterize`: the compiled CPU
   kernel when it is built).
2. Fuse the depths into a truncated signed distance field on a voxel grid whose voxel is the
   splat's longest extent / ``resolution``, every view's expected depth with the same weight, so that
   the surface lies where the splat shows its colours (docs/mesh.md, "Figures"). Pixels the splat
   leaves transparent carve free space; voxels no view sees in front of a surface count as inside, so
   the field is closed.
3. Extract the zero level set with marching cubes (scikit-image) and hand it to manifold3d, which
   checks that it is a closed 2-manifold, simplifies it (edges collapse within a quarter voxel, more
   while it has over MAX_FACES triangles) and splits it, so that specks can be dropped. A surface
   that would pinch when its vertices are welded by position is extracted again from a blurred field.
4. Unwrap UVs with xatlas and bake the texture: every texel is mapped back to its 3D point, projected
   into each view, and takes the colour of the views that see it (the rendered depth agrees with the
   point's depth), weighted by the pixel's alpha: an average over the view directions. Texels no
   view sees take the colour of the nearest opaque Gaussian; empty texels take their nearest baked
   neighbour's colour so that bilinear filtering does not bleed the background into seams.

Everything is deterministic: fixed cameras, no random sampling, CPU tensors. The heavy imports
(torch, scikit-image, manifold3d, xatlas, trimesh) happen on the first call, so that importing this
module (the format registry does) costs nothing where they are not installed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from glimpse3d.core.cameras import Camera, intrinsics_from_fov, look_at
from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.splat import Splat

if TYPE_CHECKING:
    import trimesh

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_RESOLUTION = 64  # voxels along the splat's longest side
MIN_RESOLUTION, MAX_RESOLUTION = 16, 256
MIN_VIEWS, MAX_VIEWS = 6, 26
DEFAULT_MAX_VIEWS = 14  # the axes and the cube corners: more adds time, little colour
DEFAULT_IMAGE_SIZE = 256  # pixels per side of each fusion/bake view
DEFAULT_TEXTURE_SIZE = 1024
VIEW_WORK_BUDGET = 800_000  # Gaussians x views that the default view count allows (CPU time bound)
MAX_FACES = 20_000  # the simplification tolerance doubles until the mesh has at most this many triangles
# Blur (sigma, in voxels) of the distance field before marching cubes, tried in turn until the surface
# has no pinch (two sheets meeting at an edge, which a position-welding reader would see as non-manifold).
SMOOTHING = (0.0, 0.75, 1.5)
MIN_OPACITY = 0.05  # Gaussians fainter than this are left out of the renders and the bounds
_FOV_Y_DEG = 40.0
_SURFACE_ALPHA = 0.5  # a pixel at least this opaque shows a surface; less is free space
_MIN_COMPONENT_AREA = 0.01  # components with less than this fraction of the total area are dropped

# The view directions, best coverage first: the six axes, the eight cube corners, the twelve edge midpoints.
_AXES = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
_CORNERS = [(x, y, z) for x in (1, -1) for y in (1, -1) for z in (1, -1)]
_EDGES = [(x, y, 0) for x in (1, -1) for y in (1, -1)] + [(x, 0, z) for x in (1, -1) for z in (1, -1)] + [
    (0, y, z) for y in (1, -1) for z in (1, -1)]
VIEW_DIRECTIONS = np.array(_AXES + _CORNERS + _EDGES, np.float64)
VIEW_DIRECTIONS /= np.linalg.norm(VIEW_DIRECTIONS, axis=1, keepdims=True)


@dataclass(frozen=True)
class View:
    """One rendered view: the camera, un-premultiplied colour [H, W, 3], z-depth [H, W], alpha [H, W]."""

    camera: Camera
    rgb: np.ndarray
    depth: np.ndarray
    alpha: np.ndarray


class _Clock:
    """Seconds each stage took (logged at debug level; the benchmark reads them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, stage: str, result: _T) -> _T:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now
        return result


def default_views(num_gaussians: int) -> int:
    """The view count that keeps rendering within :data:`VIEW_WORK_BUDGET` (6..14)."""
    return int(min(DEFAULT_MAX_VIEWS, max(MIN_VIEWS, VIEW_WORK_BUDGET // max(num_gaussians, 1))))


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be an integer in {lo}..{hi}, got {value!r}", field=name)
    return value


def _dependencies() -> None:
    """FailedPrecondition naming the missing packages when the mesh extra is not installed."""
    import importlib.util

    needed = {"torch": "torch", "skimage": "scikit-image", "manifold3d": "manifold3d", "xatlas": "xatlas",
              "trimesh": "trimesh", "scipy": "scipy"}
    missing = [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise FailedPrecondition(
            f"mesh export needs {', '.join(missing)} (the 'mesh' extra of glimpse3d-shared), which this "
            "installation lacks", field="format")


def _opaque(splat: Splat) -> Splat:
    keep = np.flatnonzero(splat.opacities >= MIN_OPACITY)
    if keep.size == 0:
        raise FailedPrecondition(f"the splat has no Gaussian with opacity >= {MIN_OPACITY}; it has no surface",
                                 field="splat")
    return splat.subset(keep) if keep.size < splat.num_gaussians else splat


def view_cameras(center: np.ndarray, radius: float, views: int, size: int) -> list[Camera]:
    """``views`` cameras on a sphere around ``center`` that frame a ball of ``radius``."""
    distance = radius / math.sin(math.radians(_FOV_Y_DEG) / 2) * 1.05
    fx, fy, cx, cy = intrinsics_from_fov(_FOV_Y_DEG, size, size)
    cameras = []
    for direction in VIEW_DIRECTIONS[:views]:
        up = (0.0, 0.0, 1.0) if abs(direction[1]) > 0.99 else (0.0, 1.0, 0.0)
        cameras.append(Camera(fx, fy, cx, cy, size, size, look_at(center + distance * direction, center, up)))
    return cameras


def render_views(splat: Splat, cameras: list[Camera]) -> list[View]:
    """Colour (un-premultiplied where alpha > 0), depth and alpha of ``splat`` in each camera."""
    import torch

    from glimpse3d.core.render import rasterize, to_tensors

    gaussians = to_tensors(splat)
    out = []
    with torch.no_grad():
        for camera in cameras:  # the compiled CPU kernel when it is built (make setup), else the torch path
            rgb_t, depth_t, alpha_t = rasterize(gaussians, camera, background=(0.0, 0.0, 0.0))
            alpha = alpha_t.clamp(0.0, 1.0).numpy().astype(np.float32)
            rgb = rgb_t.numpy().astype(np.float32) / np.maximum(alpha, 1e-6)[..., None]
            depth = depth_t.numpy().astype(np.float32)
            out.append(View(camera, np.clip(rgb, 0.0, 1.0), depth, alpha))
    return out


def _project(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) of world points [N, 3] (float32): pixel coordinates (pixel centres at +0.5) and depth."""
    rot = camera.rotation.astype(np.float32)
    cam = points @ rot.T + camera.translation.astype(np.float32)
    z = cam[:, 2]
    safe = np.where(z > 1e-6, z, np.float32(1.0))
    u = cam[:, 0] / safe * np.float32(camera.fx) + np.float32(camera.cx)
    v = cam[:, 1] / safe * np.float32(camera.fy) + np.float32(camera.cy)
    return u, v, z


def _pixel_of(camera: Camera, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat index of the pixel (u, v) falls in, whether it is in the image in front of the camera)."""
    inside = (z > 1e-6) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    col = np.clip(u, 0, camera.width - 1).astype(np.int64)
    row = np.clip(v, 0, camera.height - 1).astype(np.int64)
    return row * camera.width + col, inside


def _pixels(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat pixel index, z, inside) of the pixel each world point [N, 3] (float32) falls in."""
    u, v, z = _project(camera, points)
    pixel, inside = _pixel_of(camera, u, v, z)
    return pixel, z, inside


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[N, C] bilinear samples of ``image`` [H, W, C] at pixel coordinates (pixel centres at +0.5)."""
    h, w = image.shape[:2]
    x = np.clip(u - 0.5, 0, w - 1)
    y = np.clip(v - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((image[y0, x0] * (1 - fx) + image[y0, x1] * fx) * (1 - fy)
            + (image[y1, x0] * (1 - fx) + image[y1, x1] * fx) * fy)


def fuse_tsdf(views: list[View], origin: np.ndarray, voxel: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Truncated signed distance [X, Y, Z] (in truncation units, + outside) of the voxel centres
    ``origin + voxel * index``: free space where a view sees through, the distance to the rendered
    surface near it, -1 (inside) where no view saw the voxel.

    Every view counts the same. The expected depth of a surface seen at a slant leans towards the
    camera (front-to-back compositing weights the nearer of overlapping Gaussians more), and so does
    the colour the splat shows there: the fused surface sits a little outside the Gaussians' centres,
    where a texture seen from around the object matches the splat's renders best. Weighting each depth
    by how squarely its view sees the surface (cos^2) put the surface on the centres instead, and the
    mesh's renders then matched the splat's 0.9 (box) to 1.5 (ellipsoid) dB worse (docs/mesh.md)."""
    trunc = 3.0 * voxel
    axes = [origin[k] + voxel * np.arange(shape[k]) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    total = np.zeros(len(points), np.float32)
    weight = np.zeros(len(points), np.float32)
    for view in views:
        pixel, z, inside = _pixels(view.camera, points)
        free = inside & (view.alpha.reshape(-1)[pixel] < _SURFACE_ALPHA)
        sdf = (view.depth.reshape(-1)[pixel] - z) / np.float32(trunc)
        near = inside & ~free & (sdf >= -1.0)
        w = (free | near).astype(np.float32)  # free space and the surface near it, every view alike
        total += w * np.where(free, np.float32(1.0), np.clip(sdf, -1.0, 1.0))
        weight += w
    tsdf = np.where(weight > 1e-6, total / np.maximum(weight, 1e-12), np.float32(-1.0))
    return tsdf.reshape(shape)


def extract_surface(tsdf: np.ndarray, origin: np.ndarray, voxel: float) -> trimesh.Trimesh:
    """The zero level set of ``tsdf`` as a closed, consistently wound, outward-facing manifold mesh
    whose vertices stay closed and manifold when welded by position (the first of :data:`SMOOTHING`
    that gives one; the last is kept whatever it gives, manifold3d still guarantees a closed 2-manifold)."""
    import trimesh

    for sigma in SMOOTHING:
        mesh = _level_set(tsdf, origin, voxel, sigma)
        welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
        if welded.is_watertight and welded.is_winding_consistent:
            break
        logger.debug("surface pinched at blur %.2f voxels; blurring more", sigma)
    return mesh


def _level_set(tsdf: np.ndarray, origin: np.ndarray, voxel: float, sigma: float) -> trimesh.Trimesh:
    import manifold3d
    import trimesh
    from scipy.ndimage import gaussian_filter
    from skimage.measure import marching_cubes

    # Free space all round closes the level set; a blur removes sheets thinner than a voxel.
    padded = np.pad(gaussian_filter(tsdf, sigma) if sigma else tsdf, 1, constant_values=1.0)
    if padded.min() >= 0:
        raise FailedPrecondition("the splat's renders show no surface to mesh", field="splat")
    verts, faces, _normals, _values = marching_cubes(padded, level=0.0, spacing=(voxel,) * 3,
                                                     gradient_direction="ascent")
    mesh = trimesh.Trimesh(verts + origin - voxel, faces, process=True)
    solid = manifold3d.Manifold(manifold3d.Mesh(vert_properties=np.asarray(mesh.vertices, np.float32),
                                                tri_verts=np.asarray(mesh.faces, np.uint32)))
    if solid.status() != manifold3d.Error.NoError:
        raise FailedPrecondition(f"the extracted surface is not a closed manifold ({solid.status().name})",
                                 field="splat")
    tolerance = 0.25 * voxel
    solid = solid.simplify(tolerance)
    while solid.num_tri() > MAX_FACES:  # bound the unwrapping and baking work: coarser, still closed
        tolerance *= 2.0
        solid = solid.simplify(tolerance)
    parts = [p for p in solid.decompose() if not p.is_empty()]
    areas = np.array([p.surface_area() for p in parts])
    if not parts:
        raise FailedPrecondition("the splat's renders show no surface to mesh", field="splat")
    # drop specks (floaters, and what simplification leaves of them)
    solid = manifold3d.Manifold.compose([p for p, a in zip(parts, areas, strict=True)
                                         if a >= _MIN_COMPONENT_AREA * areas.sum()])
    out = solid.to_mesh()
    result = trimesh.Trimesh(np.asarray(out.vert_properties[:, :3], np.float64), np.asarray(out.tri_verts),
                             process=False)
    if result.volume < 0:
        result.invert()
    return result


def _barycentric_2d(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """[N, 3] barycentrics of 2D points ``p`` in triangles (a, b, c), clamped into the triangle."""
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) < 1e-20, 1e-20, den)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.clip(np.stack([1.0 - v - w, v, w], axis=1), 0.0, None)
    return bary / np.maximum(bary.sum(1, keepdims=True), 1e-12)


def unwrap(mesh: trimesh.Trimesh, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices [V, 3], faces [F, 3], uv [V, 2] in [0, 1], v up) of ``mesh`` cut along xatlas's seams."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    return np.asarray(mesh.vertices)[vmapping], np.asarray(indices, np.int64), np.asarray(uvs, np.float64)


def bake_texture(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, views: list[View], splat: Splat,
                 size: int, tolerance: float) -> np.ndarray:
    """[size, size, 3] uint8 texture of the mesh (row 0 = v 1), from the views that see each texel."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree  # pyright: ignore[reportAttributeAccessIssue]  # compiled, no stub

    corners = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)  # texel coordinates, y down
    ids = Image.new("I", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    for f, tri in enumerate(corners[faces]):
        polygon = [tuple(p) for p in tri.tolist()]
        draw.polygon(polygon, fill=f + 1, outline=f + 1)
    face_of = np.asarray(ids, np.int64) - 1  # [size, size], -1 where no triangle
    rows, cols = np.nonzero(face_of >= 0)
    f = face_of[rows, cols]
    centre = np.stack([cols + 0.5, rows + 0.5], axis=1)
    tri2d = corners[faces[f]]
    bary = _barycentric_2d(centre, tri2d[:, 0], tri2d[:, 1], tri2d[:, 2])
    points = np.einsum("nk,nkd->nd", bary, vertices[faces[f]])
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)
    normal = normals[f]
    colour = np.zeros((len(points), 3), np.float64)
    weight = np.zeros(len(points), np.float64)
    points32, normal32 = points.astype(np.float32), normal.astype(np.float32)
    for view in views:
        to_camera = view.camera.position.astype(np.float32)[None, :] - points32
        cos = (normal32 * to_camera).sum(1) / np.maximum(np.linalg.norm(to_camera, axis=1), 1e-12)
        facing = np.flatnonzero(cos > 0.05)  # texels turned away from the camera cannot be seen
        u, v, z = _project(view.camera, points32[facing])
        pixel, inside = _pixel_of(view.camera, u, v, z)
        alpha = view.alpha.reshape(-1)[pixel]
        seen = inside & (alpha >= _SURFACE_ALPHA) & (np.abs(view.depth.reshape(-1)[pixel] - z) <= tolerance)
        # Every view that sees the texel counts the same (by its alpha): the splat shows a view-dependent
        # colour (its discs are composited nearest first), and the texture that matches it best from
        # all round is the average over directions; weighting by the view's cosine favoured the views
        # that see a face squarely, whose colours are shifted towards the face's centre.
        w = np.where(seen, alpha, 0.0)
        # bilinear in premultiplied colour, so that pixels at the silhouette do not pull in the background
        premultiplied = _bilinear(np.concatenate([view.rgb * view.alpha[..., None], view.alpha[..., None]], -1),
                                  u[seen], v[seen])
        sampled = np.zeros((len(pixel), 3), np.float64)
        sampled[seen] = premultiplied[:, :3] / np.maximum(premultiplied[:, 3:], 1e-6)
        colour[facing] += w[:, None] * sampled
        weight[facing] += w
    seen = weight > 0
    logger.debug("bake: %.3f of %d texels seen", seen.mean(), len(seen))
    colour[seen] /= weight[seen, None]
    if (~seen).any():  # no view sees these texels: the colour of the nearest opaque Gaussian
        _, nearest = cKDTree(splat.means).query(points[~seen])
        colour[~seen] = splat.base_colors[nearest]
    texture = np.zeros((size, size, 3), np.float64)
    texture[rows, cols] = colour
    empty = face_of < 0
    if empty.any():  # fill the gutters with the nearest texel's colour (no background bleeding)
        index = np.asarray(distance_transform_edt(empty, return_distances=False, return_indices=True))
        texture = texture[index[0], index[1]]
    return np.round(np.clip(texture, 0.0, 1.0) * 255.0).astype(np.uint8)


def splat_to_mesh(
    splat: Splat,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    views: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    texture_size: int = DEFAULT_TEXTURE_SIZE,
) -> trimesh.Trimesh:
    """A watertight triangle mesh of ``splat`` with UVs and a baked colour texture (see the module docstring).

    ``resolution``: voxels along the splat's longest side (16..256); ``views``: cameras (6..26,
    default from the splat's size, :func:`default_views`); ``image_size``: pixels per side of each
    view (64..1024); ``texture_size``: texture side in texels (256..4096). The mesh's visual is a
    :class:`trimesh.visual.TextureVisuals` whose material holds the texture as a PIL image; its
    ``metadata`` records the view count, the voxel size, the grid shape and each stage's seconds.
    """
    if not isinstance(splat, Splat):
        raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
    resolution = _check_int("resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    image_size = _check_int("image_size", image_size, 64, 1024)
    texture_size = _check_int("texture_size", texture_size, 256, 4096)
    if splat.num_gaussians == 0:
        raise FailedPrecondition("the splat has no Gaussians; it has no surface", field="splat")
    _dependencies()
    import trimesh
    from PIL import Image
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    visible = _opaque(splat)
    views = default_views(visible.num_gaussians) if views is None else _check_int("views", views, MIN_VIEWS,
                                                                                    MAX_VIEWS)
    # Bounds: the means padded by three standard deviations of the largest Gaussian axis found in most of them.
    pad = 3.0 * float(np.percentile(visible.scales.max(axis=1), 90))
    lo = visible.means.min(axis=0).astype(np.float64) - pad
    hi = visible.means.max(axis=0).astype(np.float64) + pad
    voxel = float((hi - lo).max()) / resolution
    lo, hi = lo - 2 * voxel, hi + 2 * voxel
    shape = tuple(math.ceil(float(e) / voxel) + 1 for e in hi - lo)
    center = (lo + hi) / 2.0
    radius = float(np.linalg.norm(hi - lo)) / 2.0
    clock = _Clock()
    rendered = clock("render", render_views(visible, view_cameras(center, radius, views, image_size)))
    tsdf = clock("fuse", fuse_tsdf(rendered, lo, voxel, (shape[0], shape[1], shape[2])))
    surface = clock("surface", extract_surface(tsdf, lo, voxel))
    vertices, faces, uv = clock("unwrap", unwrap(surface, texture_size))
    texture = clock("bake", bake_texture(vertices, faces, uv, rendered, visible, texture_size, tolerance=2.0 * voxel))
    material = PBRMaterial(
        name="baked", baseColorTexture=Image.fromarray(texture), metallicFactor=0.0, roughnessFactor=1.0)
    mesh = trimesh.Trimesh(vertices, faces, visual=TextureVisuals(uv=uv, material=material),
                           process=False)
    mesh.metadata.update({"views": views, "voxel": voxel, "grid": shape, "seconds": clock.seconds})
    logger.debug("splat mesh: %d Gaussians, %d views, %d voxels, %d faces; seconds: %s", splat.num_gaussians,
                 views, int(np.prod(shape)), len(faces), clock.seconds)
    return mesh
