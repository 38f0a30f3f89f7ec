"""Depth service logic: the weight-free silhouette backend against synthetic scenes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.services.depth.api import DepthResult, make_backend
from glimpse3d.services.depth.backends.silhouette.backend import DEFAULT_SHADING_WEIGHT, estimate_depth
from glimpse3d.services.depth.common import estimate_mask, object_distance

SIZE = 192


def _camera(radius: float = 2.7, size: int = SIZE) -> Camera:
    return orbit_camera(0.0, 0.0, radius, width=size, height=size)


def _sphere(camera: Camera, r: float, centre=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Ray-traced sphere: (hit mask bool [H, W], camera-space z of the front surface [H, W], 0 off it)."""
    rays = camera.pixel_rays()  # [H, W, 3], z = 1
    c_cam = camera.rotation @ np.asarray(centre, float) + camera.translation
    a = (rays**2).sum(-1)
    b = -2.0 * rays @ c_cam
    c = c_cam @ c_cam - r * r
    disc = b * b - 4 * a * c
    hit = disc >= 0
    z = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a), 0.0)
    return hit, z


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _disk_scene(background: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image of a coloured disk (and its true mask) on a plain or mildly textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    truth = (xx - 100) ** 2 + ((yy - 90) / 0.85) ** 2 <= 60**2  # slightly elliptical, off centre
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = (0.88, 0.87, 0.84)
    if background == "textured":
        img += rng.normal(0.0, 0.03, (SIZE, SIZE, 1)) + 0.05 * np.sin(xx / 9.0)[:, :, None]
    shade = 0.75 + 0.25 * (1 - ((xx - 80) ** 2 + (yy - 70) ** 2) / 120.0**2)  # soft lighting on the object
    img[truth] = (np.array([0.75, 0.22, 0.18]) * shade[truth][:, None])
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), truth


# --------------------------------------------------------------------------------------------- #
# Matting
# --------------------------------------------------------------------------------------------- #


def test_alpha_channel_is_the_matte():
    cam = _camera()
    hit, _ = _sphere(cam, 0.6)
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = 150
    rgba[..., 3] = hit * 255
    mask = estimate_mask(rgba)
    assert mask.dtype == np.float32 and mask.shape == (SIZE, SIZE)
    assert _iou(mask >= 0.5, hit) > 0.98
    np.testing.assert_array_equal(mask, rgba[..., 3] / np.float32(255))


@pytest.mark.parametrize("background", ["plain", "textured"])
def test_grabcut_segments_a_disk(background):
    img, truth = _disk_scene(background)
    mask = estimate_mask(img)
    assert mask.shape == truth.shape and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    assert _iou(mask >= 0.5, truth) > 0.9


def test_opaque_alpha_falls_back_to_segmentation():
    img, truth = _disk_scene("plain")
    rgba = np.concatenate([img, np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=-1)
    assert _iou(estimate_mask(rgba) >= 0.5, truth) > 0.9


def test_mask_is_deterministic():
    img, _ = _disk_scene("textured", seed=3)
    np.testing.assert_array_equal(estimate_mask(img), estimate_mask(img))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64, 3), np.uint8),  # uniform: nothing to find
        np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8),  # noise
        np.full((5, 7, 3), 200, np.uint8),  # tiny
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((64, 64, 4), np.uint8),  # fully transparent
    ],
)
def test_degenerate_images_never_crash(image):
    mask = estimate_mask(image)
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    assert np.isfinite(mask).all() and mask.min() >= 0.0 and mask.max() <= 1.0


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 2), np.uint8), np.zeros((0, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int32),
    np.full((8, 8, 3), np.nan, np.float32), [[1, 2, 3]],
])
def test_mask_rejects_bad_images(bad):
    with pytest.raises(InvalidInput) as info:
        estimate_mask(bad)  # type: ignore[arg-type]
    assert info.value.field == "image"


# --------------------------------------------------------------------------------------------- #
# Depth
# --------------------------------------------------------------------------------------------- #


def _sphere_rgba(cam: Camera, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hit, z = _sphere(cam, r)
    rgba = np.zeros((cam.height, cam.width, 4), np.uint8)
    rgba[..., :3] = 160
    rgba[..., 3] = hit * 255
    return rgba, hit, z


@pytest.mark.parametrize("r", [0.4, 0.6, 0.9])
def test_inflated_disk_matches_a_true_sphere(r):
    cam = _camera()
    rgba, hit, z_true = _sphere_rgba(cam, r)
    depth = estimate_depth(rgba, hit.astype(np.float32), cam, shading_weight=0.0)
    assert depth.dtype == np.float32 and depth.shape == hit.shape
    rel = np.abs(depth - z_true)[hit] / z_true[hit]
    assert rel.max() < 0.03 and rel.mean() < 0.02
    assert np.abs(depth - z_true)[hit].mean() < 0.06 * r  # shape error, relative to the radius
    # The centre is the closest point; depth grows monotonically towards the rim in every direction.
    i, j = np.unravel_index(np.argmin(np.where(hit, depth, np.inf)), depth.shape)
    assert abs(i - SIZE / 2) <= 1.5 and abs(j - SIZE / 2) <= 1.5
    c = SIZE // 2
    for ray in (depth[c, c:], depth[c, c::-1], depth[c:, c], depth[c::-1, c]):
        inside = ray[ray > 0]
        assert (np.diff(inside) >= -1e-6).all()


def test_depth_is_zero_outside_the_mask_and_positive_inside():
    img, _ = _disk_scene("textured")
    mask = estimate_mask(img)
    depth = estimate_depth(img, mask, _camera())
    inside = mask >= 0.5
    assert (depth[~inside] == 0).all()
    assert (depth[inside] > 0).all() and np.isfinite(depth).all()
    # The rim sits just in front of the object-centre depth (2.7), where the rays graze the surface.
    assert 2.4 < float(depth[inside].max()) < 2.7


def test_object_distance_comes_from_the_camera():
    cam = _camera(radius=4.0)
    assert object_distance(cam) == pytest.approx(4.0)
    rgba, hit, z_true = _sphere_rgba(cam, 0.6)
    depth = estimate_depth(rgba, hit.astype(np.float32), cam, shading_weight=0.0)
    assert np.abs(depth - z_true)[hit].max() / 4.0 < 0.03
    origin = Camera(200.0, 200.0, 96.0, 96.0, SIZE, SIZE)  # camera at the world origin: default 2.7
    assert object_distance(origin) == pytest.approx(2.7)


def test_shading_term_is_bounded_and_brighter_is_closer():
    cam = _camera()
    rgba, hit, _ = _sphere_rgba(cam, 0.6)
    rng = np.random.default_rng(5)
    rgba[..., :3] = rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)  # wild texture
    rgba[:, : SIZE // 2, :3] //= 4  # left half much darker
    mask = hit.astype(np.float32)
    flat = estimate_depth(rgba, mask, cam, shading_weight=0.0)
    shaded = estimate_depth(rgba, mask, cam)
    radius_world = float(flat.max() - flat[hit].min())  # the inflation's own radius + rim offset
    diff = shaded - flat
    assert np.abs(diff).max() <= DEFAULT_SHADING_WEIGHT * radius_world + 1e-5
    assert np.abs(diff).max() > 0.2 * DEFAULT_SHADING_WEIGHT * radius_world  # it does something
    left, right = hit.copy(), hit.copy()
    left[:, SIZE // 2 :] = False
    right[:, : SIZE // 2] = False
    assert diff[right].mean() < 0 < diff[left].mean()  # bright half closer, dark half further


_IMG = np.zeros((SIZE, SIZE, 3), np.uint8)
_OK = np.ones((SIZE, SIZE), np.float32)


@pytest.mark.parametrize(("args", "kwargs", "field"), [
    ((_IMG, np.ones((10, 10), np.float32), _camera()), {}, "mask"),
    ((_IMG, _OK * 2.0, _camera()), {}, "mask"),
    ((_IMG, _OK, _camera(size=64)), {}, "camera"),
    ((_IMG, _OK, "camera"), {}, "camera"),
    ((_IMG[..., :2], _OK, _camera()), {}, "image"),
    ((_IMG, _OK, _camera()), {"shading_weight": 0.9}, "shading_weight"),
    ((_IMG, _OK, _camera()), {"z0": -1.0}, "z0"),
])
def test_depth_validates_its_inputs(args, kwargs, field):
    with pytest.raises(InvalidInput) as info:
        estimate_depth(*args, **kwargs)
    assert info.value.field == field, (field, info.value.message)


def test_empty_mask_gives_zero_depth():
    depth = estimate_depth(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.float32), _camera(size=32))
    assert (depth == 0).all()


# --------------------------------------------------------------------------------------------- #
# Backend
# --------------------------------------------------------------------------------------------- #


def test_silhouette_backend_mattes_the_disk_and_inflates_it():
    backend = make_backend("silhouette")
    backend.load()
    img, truth = _disk_scene("plain")
    result = backend.estimate(img, _camera())
    assert isinstance(result, DepthResult)
    assert _iou(result.mask >= 0.5, truth) > 0.9
    assert (result.depth[result.mask < 0.5] == 0).all()


def test_make_backend_rejects_unknown_names():
    with pytest.raises(InvalidInput) as info:
        make_backend("midas")
    assert info.value.field == "backend" and "silhouette" in info.value.message


@pytest.mark.parametrize(("option", "value"), [
    ("shading_weight", math.inf), ("shading_weight", 0.9), ("grabcut_iterations", 0), ("work_side", 8.5),
    ("object_distance", -1.0), ("object_distance", math.nan), ("matting", "u2net"), ("device", "tpu"),
])
def test_silhouette_options_are_checked(option, value):
    with pytest.raises(InvalidInput) as info:
        make_backend("silhouette", **{option: value})
    assert info.value.field == option, info.value.message
