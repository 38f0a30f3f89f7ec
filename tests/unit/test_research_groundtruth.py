"""The research harness's ground-truth renderer (Embree) on analytic shapes, and its objects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from glimpse3d.core import convert
from glimpse3d.core.cameras import orbit_angles, orbit_camera
from glimpse3d.research import groundtruth as gtm
from glimpse3d.research.objects import OBJECT_NAMES, BenchmarkObject, load_object


def _sphere(radius: float = 0.5) -> BenchmarkObject:
    mesh = trimesh.creation.icosphere(subdivisions=6, radius=radius)
    return BenchmarkObject("sphere", ("convex",), "test", "icosphere", mesh,
                           lambda p, f, b: np.tile([0.2, 0.6, 0.9], (len(p), 1)))


def test_sphere_silhouette_radius_and_centre_depth():
    cam = gtm.input_camera(256)
    view = gtm.Raycaster(_sphere()).render(cam)
    d = convert.DEFAULT_ORBIT_RADIUS
    assert view.depth[128, 128] == pytest.approx(d - 0.5, abs=2e-3)  # centre ray hits the near pole
    # Silhouette of a sphere seen from distance d: a disc of angular radius asin(r / d).
    expected_px = cam.fy * math.tan(math.asin(0.5 / d))
    measured_px = math.sqrt(view.mask.sum() / math.pi)
    assert measured_px == pytest.approx(expected_px, rel=0.01)
    assert np.allclose(view.rgb[0, 0], 1.0)  # white background
    n = view.normals[128, 128]
    assert n @ -cam.rotation[2] > 0.999  # facing the camera


def test_shading_is_view_independent():
    caster = gtm.Raycaster(_sphere())
    p = np.array([[0.0, 0.0, 0.5]])  # a point on the surface
    colours = []
    for az in (-20.0, 0.0, 20.0):
        cam = orbit_camera(az, 0.0, 2.7, width=64, height=64)
        d = p[0] - cam.position
        _, _, _, rgb = caster.cast(cam.position, (d / np.linalg.norm(d))[None])
        colours.append(rgb[0])
    assert np.allclose(colours[0], colours[1], atol=1e-2) and np.allclose(colours[1], colours[2], atol=1e-2)


def test_heldout_protocol():
    cams = gtm.heldout_cameras(64)
    assert len(cams) == 16
    elevations = sorted({round(orbit_angles(c)[1], 3) for c in cams})
    assert elevations == [0.0, 30.0]


@pytest.mark.parametrize("name", OBJECT_NAMES)
def test_objects_normalised_to_the_unit_box(name):
    obj = load_object(name)
    lo, hi = obj.mesh.bounds
    assert np.max(hi - lo) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose((lo + hi) / 2, 0.0, atol=1e-6)
    assert obj.licence


def test_ground_truth_is_cached_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSE3D_RESEARCH_CACHE", str(tmp_path))
    first = gtm.ground_truth("head", 64)
    again = gtm.ground_truth("head", 64)  # from the cache
    fresh = gtm.ground_truth("head", 64, refresh=True)
    assert gtm.digest(first) == gtm.digest(again) == gtm.digest(fresh)
    assert len(first.heldout) == 16 and 0.05 < first.input.mask.mean() < 0.5
    # The head's face is on the front only: the back view differs from a mirrored front.
    back = next(v for v in first.heldout if abs(orbit_angles(v.camera)[0] - 202.5) < 1e-6)
    assert np.abs(back.rgb - first.input.rgb[:, ::-1]).mean() > 0.02


def test_coarse_splat_scored_against_ground_truth(tmp_path, monkeypatch):
    """The weight-free coarse splat of a convex object is close in shape; its back is not the truth."""
    from glimpse3d.research.coarse import Stages, evaluate_coarse

    monkeypatch.setenv("GLIMPSE3D_RESEARCH_CACHE", str(tmp_path))
    gt = gtm.ground_truth("ellipsoid", 64)
    score, grid = evaluate_coarse(gt, gtm.surface_samples(gt.obj, 4000), Stages.load())
    assert grid.shape == (128, 64 * 9, 3)
    assert score["matte_iou"] > 0.9 and score["fscore_0.1"] > 0.8
    assert 10.0 < score["psnr_mask_db"] < 40.0


def test_objects_command_writes_a_contact_sheet_and_licences(tmp_path, monkeypatch):
    import json

    from glimpse3d.research.__main__ import main

    monkeypatch.setenv("GLIMPSE3D_RESEARCH_CACHE", str(tmp_path / "cache"))
    assert main(["objects", "--objects", "torus", "nut", "--resolution", "48", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert set(summary) == {"torus", "nut"} and "MIT" in summary["nut"]["licence"]
    assert (tmp_path / "out" / "objects.png").stat().st_size > 0


def test_bad_resolution_is_one_line_and_status_2(tmp_path, capsys):
    from glimpse3d.research.__main__ import main

    assert main(["objects", "--objects", "torus", "--resolution", "8", "--out", str(tmp_path)]) == 2
    assert "resolution must be an integer in 32..2048, got 8" in capsys.readouterr().err


def test_unknown_object_is_named():
    from glimpse3d.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown benchmark object 'teapot'"):
        load_object("teapot")
