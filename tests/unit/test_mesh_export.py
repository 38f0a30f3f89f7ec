"""Splat -> mesh (glimpse3d.core.mesh) and its export formats (obj, mesh-glb): on a checkered
ellipsoid splat and a box splat, the mesh is a closed, consistently wound 2-manifold (trimesh and
manifold3d agree) with UVs and a texture; trimesh reads both files back; rendered by an independent
ray caster (trimesh + Embree, sampling the texture of the mesh read from the .glb) the mesh matches
the splat's own renders over held-out views; its shape is close to the true surface; and the Khronos
glTF validator finds no error in the .glb."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import cast

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("manifold3d")
pytest.importorskip("xatlas")

import manifold3d
import torch
import trimesh
from scipy.ndimage import binary_dilation

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats import get_format
from glimpse3d.core.formats.mesh import MTL_MEMBER, OBJ_MEMBER, TEXTURE_MEMBER, mesh_to_glb, mesh_to_obj_zip
from glimpse3d.core.mesh import DEFAULT_RESOLUTION, splat_to_mesh
from glimpse3d.core.render import rasterize
from glimpse3d.core.reproject import psnr_db
from glimpse3d.core.splat import Splat
from glimpse3d.core.synthetic import SEMI_AXES, textured_object

REPO_ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = REPO_ROOT / "web" / "node_modules" / "gltf-validator"
BOX_EXTENTS = (1.2, 0.8, 0.6)
HELD_OUT = [(20.0, 15.0), (110.0, -25.0), (200.0, 40.0), (290.0, 5.0)]  # none is a fusion view
# Mean PSNR over the held-out views, inside both masks (docs/mesh.md has the figures; measured 26.8
# on the ellipsoid, 25.5 on the box). The target is 25 dB on both. The box is the harder case: its
# opaque, coplanar discs are composited in depth order, so a slanted view shows each stripe shifted by
# about a disc radius towards the camera, differently per view. These floors sit 0.5 dB under the means.
MIN_MEAN_PSNR_DB = {"ellipsoid": 26.3, "box": 25.0}


def _quats_to(normals: np.ndarray) -> np.ndarray:
    """(w, x, y, z) rotations of +z onto each unit normal."""
    w = 1.0 + normals[:, 2]
    q = np.concatenate([w[:, None], -normals[:, 1:2], normals[:, 0:1], np.zeros_like(w)[:, None]], axis=1)
    q[w < 1e-8] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def box_splat(spacing: float = 0.025) -> Splat:
    """Flat, opaque discs on a regular grid over each face of a box, coloured per face with stripes."""
    half = np.asarray(BOX_EXTENTS) / 2.0
    means, normals, colours = [], [], []
    for axis in range(3):
        u_axis, v_axis = [a for a in range(3) if a != axis]
        us = np.arange(-half[u_axis] + spacing / 2, half[u_axis], spacing)
        vs = np.arange(-half[v_axis] + spacing / 2, half[v_axis], spacing)
        uu, vv = (g.ravel() for g in np.meshgrid(us, vs, indexing="ij"))
        for sign in (1.0, -1.0):
            p = np.zeros((len(uu), 3))
            p[:, axis], p[:, u_axis], p[:, v_axis] = sign * half[axis], uu, vv
            n = np.zeros_like(p)
            n[:, axis] = sign
            base = np.full((len(uu), 3), 0.25)
            base[:, axis] = 0.55 + 0.3 * sign
            stripe = (np.floor((uu + vv) / 0.3) % 2)[:, None]
            means.append(p)
            normals.append(n)
            colours.append(np.clip(base + 0.35 * stripe, 0.0, 1.0))
    means_a, normals_a = np.concatenate(means), np.concatenate(normals)
    n_total = len(means_a)
    return Splat.from_colors(means_a.astype(np.float32), np.concatenate(colours).astype(np.float32),
                             np.tile([0.75 * spacing, 0.75 * spacing, 0.08 * spacing], (n_total, 1)),
                             np.full(n_total, 0.97, np.float32), quats=_quats_to(normals_a).astype(np.float32))


def _truth(name: str) -> trimesh.Trimesh:
    if name == "box":
        return trimesh.creation.box(extents=BOX_EXTENTS)
    sphere = trimesh.creation.icosphere(subdivisions=5)
    sphere.apply_scale(SEMI_AXES)
    return sphere


@pytest.fixture(scope="module", params=["ellipsoid", "box"])
def case(request: pytest.FixtureRequest) -> tuple[str, Splat, trimesh.Trimesh]:
    splat = textured_object(n=6000) if request.param == "ellipsoid" else box_splat()
    return request.param, splat, splat_to_mesh(splat)


def _welded(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The surface without the UV seams (vertices at one position merged)."""
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)


def _texture(mesh: trimesh.Trimesh) -> np.ndarray:
    material = mesh.visual.material  # type: ignore[union-attr]
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    assert image is not None, "the mesh has no texture"
    return np.asarray(image.convert("RGB"), np.float64) / 255.0


def render_mesh(mesh: trimesh.Trimesh, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(rgb [H, W, 3], hit [H, W]) of a textured mesh: Embree ray casting, bilinear texture lookup."""
    rays = camera.pixel_rays().reshape(-1, 3) @ camera.rotation  # camera -> world directions
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    origins = np.tile(camera.position, (len(rays), 1))
    tri, ray, loc = cast(tuple[np.ndarray, np.ndarray, np.ndarray],  # with return_locations
                         mesh.ray.intersects_id(origins, rays, multiple_hits=False, return_locations=True))
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)
    uv = np.einsum("nk,nkd->nd", bary, mesh.visual.uv[mesh.faces[tri]])  # type: ignore[union-attr]
    tex = _texture(mesh)
    h, w = tex.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    colour = (tex[y0, x0] * (1 - fx) * (1 - fy) + tex[y0, x1] * fx * (1 - fy)
              + tex[y1, x0] * (1 - fx) * fy + tex[y1, x1] * fx * fy)
    out = np.zeros((camera.height * camera.width, 3))
    hit = np.zeros(camera.height * camera.width, bool)
    out[ray], hit[ray] = colour, True
    return out.reshape(camera.height, camera.width, 3), hit.reshape(camera.height, camera.width)


def test_mesh_is_a_closed_manifold_with_uvs_and_a_texture(case: tuple[str, Splat, trimesh.Trimesh]) -> None:
    _name, _splat, mesh = case
    welded = _welded(mesh)
    assert welded.is_watertight and welded.is_winding_consistent and welded.volume > 0
    assert welded.euler_number == 2  # one closed sphere-like surface
    solid = manifold3d.Manifold(manifold3d.Mesh(vert_properties=np.asarray(welded.vertices, np.float32),
                                                tri_verts=np.asarray(welded.faces, np.uint32)))
    assert solid.status() == manifold3d.Error.NoError and solid.genus() == 0
    uv = mesh.visual.uv  # type: ignore[union-attr]
    assert uv.shape == (len(mesh.vertices), 2) and uv.min() >= 0.0 and uv.max() <= 1.0
    texture = _texture(mesh)
    assert texture.shape == (1024, 1024, 3) and texture.std() > 0.05


def test_shape_is_close_to_the_true_surface(case: tuple[str, Splat, trimesh.Trimesh]) -> None:
    name, _splat, mesh = case
    truth = _truth(name)
    ours = trimesh.sample.sample_surface(mesh, 20_000, seed=0)[0]
    theirs = trimesh.sample.sample_surface(truth, 20_000, seed=1)[0]
    from scipy.spatial import cKDTree  # pyright: ignore[reportAttributeAccessIssue]  # compiled, no stub

    chamfer = 0.5 * (cKDTree(theirs).query(ours)[0].mean() + cKDTree(ours).query(theirs)[0].mean())
    voxel = float(np.max(truth.extents)) / DEFAULT_RESOLUTION
    assert chamfer < voxel, (chamfer, voxel)  # within one voxel of the fusion grid (~0.02 here)
    assert abs(mesh.volume - truth.volume) / truth.volume < 0.1


def test_files_read_back_with_trimesh(case: tuple[str, Splat, trimesh.Trimesh], tmp_path: Path) -> None:
    _name, _splat, mesh = case
    archive = zipfile.ZipFile(io.BytesIO(mesh_to_obj_zip(mesh)))
    assert sorted(archive.namelist()) == sorted([OBJ_MEMBER, MTL_MEMBER, TEXTURE_MEMBER])
    assert f"map_Kd {TEXTURE_MEMBER}" in archive.read(MTL_MEMBER).decode()
    archive.extractall(tmp_path)
    from_obj = trimesh.load(tmp_path / OBJ_MEMBER, force="mesh")
    from_glb = trimesh.load(io.BytesIO(mesh_to_glb(mesh)), file_type="glb", force="mesh")
    for loaded in (from_obj, from_glb):
        assert isinstance(loaded, trimesh.Trimesh)
        assert len(loaded.faces) == len(mesh.faces)
        assert _welded(loaded).is_watertight
        assert np.isclose(loaded.area, mesh.area, rtol=1e-4)
        assert np.array_equal(_texture(loaded), _texture(mesh))
        assert loaded.visual.uv is not None  # type: ignore[union-attr]


def test_mesh_renders_match_the_splat_over_held_out_views(case: tuple[str, Splat, trimesh.Trimesh]) -> None:
    name, splat, mesh = case
    loaded = trimesh.load(io.BytesIO(mesh_to_glb(mesh)), file_type="glb", force="mesh")
    assert isinstance(loaded, trimesh.Trimesh)
    scores = []
    for azimuth, elevation in HELD_OUT:
        camera = orbit_camera(azimuth, elevation, 3.2, width=192, height=192)
        with torch.no_grad():
            out = rasterize(splat, camera)
        alpha = out.alpha.numpy()
        target = out.rgb.numpy() / np.maximum(alpha, 1e-6)[..., None]
        rendered, hit = render_mesh(loaded, camera)
        splat_mask = alpha > 0.5
        # the silhouettes agree up to two pixels around the outline (the splat's edge is soft, and the
        # mesh rounds corners off at the voxel scale)
        for a, b in ((splat_mask, hit), (hit, splat_mask)):
            assert (a & ~np.asarray(binary_dilation(b, iterations=2), bool)).sum() <= 0.005 * a.sum()
        scores.append(psnr_db(rendered, target, (splat_mask & hit).astype(np.float64)))
    assert float(np.mean(scores)) >= MIN_MEAN_PSNR_DB[name], scores


def test_the_registry_writes_meshes_and_the_pipeline_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    import glimpse3d.core.formats.mesh as mesh_formats

    splat = textured_object(n=600)
    seen: list[Splat] = []

    def small_mesh(s: Splat) -> trimesh.Trimesh:  # the writers' pipeline at a small, quick size
        seen.append(s)
        return splat_to_mesh(s, views=6, resolution=32, texture_size=256)

    monkeypatch.setattr(mesh_formats, "_mesh", small_mesh)
    obj, glb = get_format("obj"), get_format("mesh-glb")
    assert obj.export_only and obj.media_type == "application/zip" and obj.extension == ".obj.zip"
    assert glb.export_only and glb.media_type == "model/gltf-binary" and glb.extension == ".mesh.glb"
    first_zip, second_zip = obj.writer(splat), obj.writer(splat)
    first_glb, second_glb = glb.writer(splat), glb.writer(splat)
    assert len(seen) == 4 and all(s is splat for s in seen)
    assert first_zip == second_zip and first_glb == second_glb  # the same bytes every time
    archive = zipfile.ZipFile(io.BytesIO(first_zip))
    assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # no clock in the bytes
    assert sorted(archive.namelist()) == sorted([OBJ_MEMBER, MTL_MEMBER, TEXTURE_MEMBER])
    assert b"seconds" not in first_glb  # the mesh's timing metadata stays out of the file
    for fmt in (obj, glb):
        with pytest.raises(InvalidInput) as err:
            fmt.reader(first_glb)
        assert err.value.field == "format"


def test_bad_arguments_and_splats_without_a_surface() -> None:
    splat = textured_object(n=64)
    for field, value in (("resolution", 8), ("views", 3), ("views", 27), ("texture_size", 100), ("image_size", True)):
        with pytest.raises(InvalidInput) as err:
            splat_to_mesh(splat, **{field: value})
        assert err.value.field == field
    faint = Splat(splat.means, splat.quats, splat.log_scales, np.full(64, -8.0, np.float32), splat.sh)
    with pytest.raises(FailedPrecondition) as err:
        splat_to_mesh(faint)
    assert err.value.field == "splat"
    empty = splat.subset(np.zeros(0, np.int64))
    with pytest.raises(FailedPrecondition):
        splat_to_mesh(empty)


def test_gltf_validator_reports_no_errors(case: tuple[str, Splat, trimesh.Trimesh], tmp_path: Path) -> None:
    if shutil.which("node") is None or not VALIDATOR.is_dir():
        pytest.skip("the Khronos glTF validator is not installed (make web runs npm ci in web/, which installs it)")
    path = tmp_path / "mesh.glb"
    path.write_bytes(mesh_to_glb(case[2]))
    script = ("const v = require('gltf-validator'); const fs = require('fs');"
              "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[1])))"
              ".then(r => console.log(JSON.stringify(r.issues)), e => { console.error(e); process.exit(1); });")
    run = subprocess.run(["node", "-e", script, str(path)], capture_output=True, text=True, timeout=60,
                         cwd=REPO_ROOT / "web", check=False)
    assert run.returncode == 0, run.stderr
    issues = json.loads(run.stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
