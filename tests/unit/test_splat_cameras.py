"""The splat data model (glimpse3d.core.splat) and pinhole cameras (glimpse3d.core.cameras)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from glimpse3d.core import splat as splat_module
from glimpse3d.core.cameras import (
    MAX_IMAGE_SIDE,
    Camera,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    orbit_angles,
    orbit_camera,
    orbit_cameras,
    turned_about_up,
)
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import (
    SH_C0,
    Splat,
    rgb_to_sh0,
    sh0_to_rgb,
    sh_coeffs_for_degree,
    sh_degree_for_coeffs,
)

NAN = float("nan")


def fields(n: int = 5, k: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "log_scales": rng.uniform(-4, 0, size=(n, 3)).astype(np.float32),
        "opacity_logits": rng.normal(size=n).astype(np.float32),
        "sh": rng.normal(size=(n, k, 3)).astype(np.float32),
    }


@contextmanager
def invalid(match: str, field: str) -> Iterator[None]:
    """``pytest.raises(InvalidInput, match=...)`` that also checks the error names ``field``."""
    with pytest.raises(InvalidInput, match=match) as info:
        yield
    assert info.value.field == field


# -------------------------------------------------------------------------------------------- Splat


def test_splat_accepts_valid_fields_and_stores_contiguous_float32() -> None:
    f = fields()
    f["means"] = f["means"].astype(np.float64)
    f["sh"] = np.asfortranarray(f["sh"])
    s = Splat(**f)
    assert len(s) == s.num_gaussians == 5 and s.sh_degree == 1
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        arr = getattr(s, name)
        assert arr.dtype == np.float32 and arr.flags.c_contiguous, name
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.means = f["means"]  # type: ignore[misc]


def test_empty_splat_is_valid() -> None:
    assert Splat(**fields(n=0, k=16)).num_gaussians == 0


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("means", np.zeros((5, 2), np.float32), r"means must have shape \[N, 3\], got \[5, 2\]"),
        ("means", np.zeros(15, np.float32), r"means must have shape \[N, 3\]"),
        ("quats", np.ones((5, 3), np.float32), r"quats must have shape \[N, 4\]"),
        ("log_scales", np.zeros((5, 3, 1), np.float32), r"log_scales must have shape \[N, 3\]"),
        ("opacity_logits", np.zeros((5, 1), np.float32), r"opacity_logits must have shape \[N\]"),
        ("sh", np.zeros((5, 4), np.float32), r"sh must have shape \[N, K, 3\], got \[5, 4\]"),
        ("sh", np.zeros((5, 4, 2), np.float32), r"sh must have shape \[N, K, 3\]"),
        ("sh", [[[0.0] * 3]] * 5, "sh must have shape .* got list"),
        ("means", [[0.0] * 3] * 5, "means must be a numpy array, got list"),
        ("quats", np.ones((5, 4), np.int32), "quats must be floating point"),
    ],
)
def test_splat_rejects_wrong_shapes_and_types_naming_the_field(name: str, value: object, match: str) -> None:
    f: dict[str, object] = dict(fields())
    f[name] = value
    with invalid(match, field=name):
        Splat(**f)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["means", "quats", "log_scales", "opacity_logits", "sh"])
@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
def test_splat_rejects_non_finite_values_naming_field_and_gaussian(name: str, bad: float) -> None:
    f = fields()
    f[name].reshape(5, -1)[3, -1] = bad
    with invalid(f"{name} has a non-finite value at Gaussian 3", field=name):
        Splat(**f)


def test_splat_rejects_float64_values_that_overflow_float32() -> None:
    f = fields()
    means = f["means"].astype(np.float64)
    means[1, 0] = 1e300
    f["means"] = means
    with np.errstate(over="ignore"), invalid("means has a non-finite value at Gaussian 1", field="means"):
        Splat(**f)


@pytest.mark.parametrize("name", ["quats", "log_scales", "opacity_logits", "sh"])
def test_splat_rejects_mismatched_row_counts(name: str) -> None:
    f = fields()
    f[name] = f[name][:4]
    with invalid(f"{name} has 4 rows but means has 5", field=name):
        Splat(**f)


def test_splat_rejects_a_zero_quaternion_naming_the_gaussian() -> None:
    f = fields()
    f["quats"][2] = 0
    with invalid("zero quaternion at Gaussian 2", field="quats"):
        Splat(**f)


@pytest.mark.parametrize("k", [0, 2, 3, 5, 25])
def test_splat_rejects_sh_coefficient_counts_other_than_1_4_9_16(k: int) -> None:
    with invalid("1, 4, 9 or 16 coefficients", field="sh"):
        Splat(**fields(k=k))


def test_splat_rejects_more_than_max_gaussians(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splat_module, "MAX_GAUSSIANS", 4)
    with invalid("5 Gaussians, more than the limit 4", field="means"):
        Splat(**fields())
    assert Splat(**fields(n=4)).num_gaussians == 4


def test_derived_quantities() -> None:
    f = fields()
    f["quats"][0] = [3e30, 0, 0, 0]  # squares overflow float32; the unit quaternion must not
    s = Splat(**f)
    np.testing.assert_allclose(np.linalg.norm(s.unit_quats, axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(s.unit_quats[0], [1, 0, 0, 0])
    assert s.unit_quats.dtype == np.float32
    np.testing.assert_allclose(s.scales, np.exp(f["log_scales"]), rtol=1e-6)
    np.testing.assert_allclose(s.opacities, 1 / (1 + np.exp(-f["opacity_logits"].astype(np.float64))), rtol=1e-6)
    assert ((s.base_colors >= 0) & (s.base_colors <= 1)).all()


def test_subset_and_allclose() -> None:
    s = Splat(**fields())
    sub = s.subset(np.array([4, 0]))
    assert sub.num_gaussians == 2
    np.testing.assert_array_equal(sub.means, s.means[[4, 0]])
    assert s.allclose(Splat(**fields()))
    assert not s.allclose(sub)
    assert not s.allclose(Splat(**fields(seed=1)))


def test_from_colors_round_trips_linear_quantities() -> None:
    rng = np.random.default_rng(7)
    means = rng.normal(size=(20, 3))
    colors = rng.uniform(0, 1, size=(20, 3))
    scales = rng.uniform(1e-3, 2, size=(20, 3))
    opacities = rng.uniform(0.01, 0.99, size=20)
    s = Splat.from_colors(means, colors, scales, opacities, sh_degree=2)
    assert s.sh_degree == 2 and not s.sh[:, 1:].any()
    np.testing.assert_allclose(s.base_colors, colors, atol=1e-6)
    np.testing.assert_allclose(s.scales, scales, rtol=1e-6)
    np.testing.assert_allclose(s.opacities, opacities, rtol=1e-5)
    np.testing.assert_array_equal(s.quats, np.tile([1, 0, 0, 0], (20, 1)))
    np.testing.assert_allclose(s.sh[:, 0], (colors - 0.5) / SH_C0, rtol=1e-5, atol=1e-6)


def test_from_colors_broadcasts_scalars() -> None:
    s = Splat.from_colors(np.zeros((3, 3)), 0.25, 0.1, 0.5, quats=np.tile([0.0, 0, 1, 0], (3, 1)))
    np.testing.assert_allclose(s.base_colors, 0.25, atol=1e-6)
    np.testing.assert_allclose(s.scales, 0.1, rtol=1e-6)
    np.testing.assert_allclose(s.opacity_logits, 0, atol=1e-6)
    np.testing.assert_array_equal(s.quats[:, 2], 1)


@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        ({"scales": 0.0}, "scales", "positive"),
        ({"scales": -1.0}, "scales", "positive"),
        ({"scales": NAN}, "scales", "positive and finite"),
        ({"scales": math.inf}, "scales", "positive and finite"),
        ({"scales": np.ones((4, 3))}, "scales", r"broadcast to shape \[3, 3\], got \[4, 3\]"),
        ({"opacities": 0.0}, "opacities", r"open interval \(0, 1\)"),
        ({"opacities": 1.0}, "opacities", r"open interval"),
        ({"opacities": NAN}, "opacities", r"open interval"),
        ({"colors": np.ones((2, 3))}, "colors", "broadcast"),
        ({"sh_degree": 4}, "sh_degree", r"sh degree must be in 0..3"),
    ],
)
def test_from_colors_rejects_invalid_inputs(kwargs: dict, field: str, match: str) -> None:
    args = {"means": np.zeros((3, 3)), "colors": 0.5, "scales": 0.1, "opacities": 0.5} | kwargs
    with invalid(match, field=field):
        Splat.from_colors(**args)


def test_sh_helpers() -> None:
    assert [sh_coeffs_for_degree(d) for d in range(4)] == [1, 4, 9, 16]
    assert [sh_degree_for_coeffs(k) for k in (1, 4, 9, 16)] == [0, 1, 2, 3]
    with invalid("sh degree", field="sh_degree"):
        sh_coeffs_for_degree(-1)
    rgb = np.float32([[0, 0.5, 1]])
    np.testing.assert_allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)
    assert rgb_to_sh0(np.float32([0.5]))[0] == 0


# ------------------------------------------------------------------------------------------ Cameras


def random_look_at(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Camera]:
    eye = rng.normal(size=3) * 3
    target = rng.normal(size=3)
    return eye, target, Camera(300, 320, 128.5, 100.25, 256, 200, look_at(eye, target))


def assert_rigid(m: np.ndarray) -> None:
    r = m[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_array_equal(m[3], [0, 0, 0, 1])


def test_look_at_puts_the_target_on_the_optical_axis() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        eye, target, cam = random_look_at(rng)
        assert_rigid(cam.world_to_camera)
        uv, depth = cam.project(target[None])
        np.testing.assert_allclose(uv[0], [cam.cx, cam.cy], atol=1e-9)
        assert depth[0] == pytest.approx(np.linalg.norm(target - eye))
        np.testing.assert_allclose(cam.position, eye, atol=1e-12)


def test_look_at_axes_are_right_down_forward() -> None:
    cam = Camera(100, 100, 50, 50, 100, 100, look_at([0, 0, 5], [0, 0, 0]))
    (u_right, v_right), (u_up, v_up) = cam.project(np.array([[1.0, 0, 0], [0, 1.0, 0]]))[0]
    assert u_right > 50 and v_right == pytest.approx(50)  # world +x appears on the right
    assert v_up < 50 and u_up == pytest.approx(50)  # world +y (up) appears at the top (image y is down)


def test_look_at_straight_down_the_up_axis_is_still_a_rotation() -> None:
    m = look_at([0, 5, 0], [0, 0, 0])
    assert_rigid(m)
    cam = Camera(100, 100, 50, 50, 100, 100, m)
    np.testing.assert_allclose(cam.project(np.zeros((1, 3)))[0][0], [50, 50], atol=1e-9)


def test_look_at_rejects_degenerate_and_non_finite_input() -> None:
    with invalid("eye and target to differ", field="eye"):
        look_at([1, 2, 3], [1, 2, 3])
    with invalid("finite", field="eye"):
        look_at([NAN, 0, 1], [0, 0, 0])
    with invalid("finite", field="eye"):
        look_at([0, 0, 1], [0, 0, 0], up=[0, math.inf, 0])


@pytest.mark.parametrize(
    ("azimuth", "elevation", "expected"),
    [(0, 0, [0, 0, 2]), (90, 0, [2, 0, 0]), (180, 0, [0, 0, -2]), (-90, 0, [-2, 0, 0]), (0, 30, [0, 1, math.sqrt(3)])],
)
def test_orbit_camera_position(azimuth: float, elevation: float, expected: list[float]) -> None:
    cam = orbit_camera(azimuth, elevation, 2.0)
    np.testing.assert_allclose(cam.position, expected, atol=1e-12)
    np.testing.assert_allclose(cam.project(np.zeros((1, 3)))[0][0], [cam.cx, cam.cy], atol=1e-9)
    assert_rigid(cam.world_to_camera)


def test_orbit_camera_above_target_and_with_offset_target() -> None:
    target = np.array([1.0, -2.0, 0.5])
    cam = orbit_camera(45, 20, 3.0, target=target, width=320, height=240, fov_y_deg=60)
    assert cam.position[1] > target[1]
    assert np.linalg.norm(cam.position - target) == pytest.approx(3.0)
    assert (cam.width, cam.height, cam.cx, cam.cy) == (320, 240, 160, 120)
    assert cam.fy == pytest.approx(120 / math.tan(math.radians(30)))
    uv, depth = cam.project(target[None])
    np.testing.assert_allclose(uv[0], [160, 120], atol=1e-9)
    assert depth[0] == pytest.approx(3.0)


def test_orbit_cameras_turntable() -> None:
    cams = orbit_cameras(4, 0.0, 1.0, start_azimuth_deg=0.0)
    expected = [[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0]]
    np.testing.assert_allclose([c.position for c in cams], expected, atol=1e-12)
    with invalid("at least one", field="n"):
        orbit_cameras(0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((NAN, 0, 1), "camera.azimuth_deg"),
        ((0, math.inf, 1), "camera.elevation_deg"),
        ((0, 90, 1), "elevation_deg"),
        ((0, -95, 1), "elevation_deg"),
        ((0, 0, 0), "radius"),
        ((0, 0, -1), "radius"),
        ((0, 0, NAN), "camera.radius"),
    ],
)
def test_orbit_camera_rejects_invalid_input(args: tuple[float, float, float], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        orbit_camera(*args)
    assert info.value.field == field


def test_project_unproject_are_inverse() -> None:
    rng = np.random.default_rng(1)
    _, target, cam = random_look_at(rng)
    points = target + rng.normal(size=(50, 3)) * 0.5
    uv, depth = cam.project(points)
    assert (depth > 0).all()
    np.testing.assert_allclose(cam.unproject(uv, depth), points, atol=1e-9)
    pixels = rng.uniform(0, [cam.width, cam.height], size=(30, 2))
    depths = rng.uniform(0.5, 4, size=30)
    uv2, depth2 = cam.project(cam.unproject(pixels, depths))
    np.testing.assert_allclose(uv2, pixels, atol=1e-9)
    np.testing.assert_allclose(depth2, depths, atol=1e-12)


def test_pixel_rays_pass_through_pixel_centres() -> None:
    cam = Camera(80, 90, 20.5, 14.0, 40, 30)
    rays = cam.pixel_rays()
    assert rays.shape == (30, 40, 3)
    np.testing.assert_array_equal(rays[..., 2], 1)
    i, j = 7, 33
    np.testing.assert_allclose(cam.project(rays[i, j][None])[0][0], [j + 0.5, i + 0.5], atol=1e-12)


def test_with_size_scales_intrinsics_and_keeps_the_view() -> None:
    cam = orbit_camera(30, 10, 2.5, width=256, height=192)
    big = cam.with_size(512, 96)
    assert (big.width, big.height) == (512, 96)
    assert (big.fx, big.fy, big.cx, big.cy) == (cam.fx * 2, cam.fy / 2, cam.cx * 2, cam.cy / 2)
    np.testing.assert_array_equal(big.world_to_camera, cam.world_to_camera)
    points = np.random.default_rng(2).normal(size=(10, 3)) * 0.3
    (uv, z), (uv_big, z_big) = cam.project(points), big.project(points)
    np.testing.assert_allclose(uv_big, uv * [2, 0.5], atol=1e-9)
    np.testing.assert_array_equal(z, z_big)
    with invalid("width", field="camera.width"):
        cam.with_size(MAX_IMAGE_SIDE + 1, 10)


def test_intrinsics_and_rigid_inverse() -> None:
    fx, fy, cx, cy = intrinsics_from_fov(90.0, 200, 100)
    assert (fx, fy, cx, cy) == (pytest.approx(50.0), pytest.approx(50.0), 100.0, 50.0)
    cam = Camera(fx, fy, cx, cy, 200, 100, look_at([1, 2, 3], [0, 0, 0]))
    np.testing.assert_array_equal(cam.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    np.testing.assert_allclose(cam.camera_to_world @ cam.world_to_camera, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(invert_rigid(cam.camera_to_world), cam.world_to_camera, atol=1e-12)
    np.testing.assert_allclose(cam.camera_to_world[:3, 3], cam.position, atol=1e-12)
    for fov in (0.5, 171.0, NAN):
        with pytest.raises(InvalidInput):
            intrinsics_from_fov(fov, 10, 10)


def _rotation_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fx": NAN}, "camera.fx"),
        ({"cy": math.inf}, "camera.cy"),
        ({"fx": 0.0}, "camera.fx"),
        ({"fy": -1.0}, "camera.fx"),
        ({"fx": None}, "camera.fx"),
        ({"cx": "left"}, "camera.cx"),
        ({"width": 0}, "camera.width"),
        ({"width": 10.5}, "camera.width"),
        ({"width": NAN}, "camera.width"),
        ({"height": math.inf}, "camera.height"),
        ({"height": MAX_IMAGE_SIDE + 1}, "camera.height"),
        ({"world_to_camera": np.eye(3)}, "camera.world_to_camera"),
        ({"world_to_camera": np.full((4, 4), NAN)}, "camera.world_to_camera"),
        ({"world_to_camera": np.diag([2.0, 1, 1, 1])}, "camera.world_to_camera"),  # scaled, not rigid
        ({"world_to_camera": np.diag([1.0, 1, -1, 1])}, "camera.world_to_camera"),  # a mirror, det -1
        (
            {"world_to_camera": _rotation_z(30) + np.array([[0, 0, 0, 0]] * 3 + [[0, 0, 1, 0]])},
            "camera.world_to_camera",
        ),
    ],
)
def test_camera_rejects_invalid_parameters(kwargs: dict, field: str) -> None:
    args = {"fx": 100.0, "fy": 100.0, "cx": 50.0, "cy": 50.0, "width": 100, "height": 100} | kwargs
    with pytest.raises(InvalidInput) as info:
        Camera(**args)
    assert info.value.field == field


def test_camera_accepts_rigid_transforms_and_whole_float_sizes() -> None:
    m = _rotation_z(30)
    m[:3, 3] = [1, 2, 3]
    cam = Camera(100, 100, 50, 50, 128.0, 64, m)
    assert cam.width == 128 and isinstance(cam.width, int)
    np.testing.assert_allclose(cam.position, -m[:3, :3].T @ m[:3, 3])


@pytest.mark.parametrize(("az", "el", "r"), [(0.0, 0.0, 2.7), (90.0, 10.0, 3.0), (250.0, -35.0, 1.5), (359.0, 80.0, 4)])
def test_orbit_angles_invert_orbit_camera_and_turning_adds_azimuth(az, el, r):
    cam = orbit_camera(az, el, r, width=32, height=32)
    assert orbit_angles(cam) == pytest.approx((az, el, r), abs=1e-9)
    turned = orbit_angles(turned_about_up(cam, 100.0))
    assert turned == pytest.approx(((az + 100.0) % 360.0, el, r), abs=1e-9)
