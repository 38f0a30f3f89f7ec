"""The learned ``dpt`` depth backend on tiny random DPT / Depth Anything checkpoints written in the
published layout, and its disparity -> metric depth conversion on data whose answer is known.

The tiny networks' disparities are meaningless, but every loading, preprocessing, resizing and
conversion path is the production one. The conversion is checked on exact synthetic disparities:
a ray-traced sphere comes back as the sphere, a tilted plane as a plane, and the result does not
depend on the disparity's unknown scale and shift.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from service_harness import run_service

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.backend import parse_options
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.images import decode_npy, encode_png
from glimpse3d.core.models import ModelMissing
from glimpse3d.core.rpc.errors import error_from_rpc, status_code_for
from glimpse3d.core.service import ServiceSettings
from glimpse3d.core.synthetic import render_image, textured_object
from glimpse3d.services.depth.api import REGISTRY, DepthBackend, make_backend
from glimpse3d.services.depth.backends.dpt.backend import DptDepthBackend, model_input, pad_to_aspect
from glimpse3d.services.depth.backends.dpt.metric import (
    DepthScale,
    depth_range,
    disparity_to_depth,
    silhouette_radius,
)
from glimpse3d.services.depth.tiny import write_tiny_models
from glimpse3d.services.depth.weights import (
    DA_V2_BASE,
    DA_V2_LARGE,
    DA_V2_SMALL,
    DEPTH_MODELS,
    DPT_HYBRID,
    DPT_LARGE,
    MATTING_MODELS,
    MODEL_NAMES,
    MODELS,
    SAM2_TINY,
)
from glimpse3d.v1 import depth_pb2

WIDTH, HEIGHT = 48, 40  # not square, and not the processors' sizes
ALL_MODELS = [DPT_HYBRID, DPT_LARGE, DA_V2_SMALL, DA_V2_BASE, DA_V2_LARGE]


# --------------------------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert write_tiny_models(root, seed=0) == [*ALL_MODELS, SAM2_TINY]  # and the matting model
    return root


@pytest.fixture(scope="module")
def model_dir_seed1(tmp_path_factory):
    root = tmp_path_factory.mktemp("models1")
    write_tiny_models(root, seed=1)
    return root


@pytest.fixture(scope="module")
def backends(model_dir) -> dict[str, DptDepthBackend]:
    out = {}
    for name in ALL_MODELS:
        b = make_backend("dpt", model_dir=model_dir, device="cpu", model=name)
        b.load()
        out[name] = b
    return out


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, Camera]:
    """RGBA [HEIGHT, WIDTH, 4] render of the synthetic object (alpha = its matte) and its camera."""
    camera = orbit_camera(0.0, 0.0, 2.7, width=WIDTH, height=HEIGHT)
    rgba = render_image(textured_object(seed=0, n=1200), camera, background=(0.9, 0.9, 0.9), rgba=True)
    return rgba, camera


def ray_traced_sphere(size: int, radius: float = 0.6, distance: float = 2.7, azimuth: float = 0.0):
    """(camera, true z [size, size] (0 off the sphere), hit mask) of a sphere at the world origin."""
    cam = orbit_camera(azimuth, 0.0, distance, width=size, height=size)
    rays = cam.pixel_rays()  # [H, W, 3], z = 1
    centre = cam.translation  # the origin in camera space
    a = (rays**2).sum(-1)
    b = -2.0 * rays @ centre
    c = centre @ centre - radius**2
    disc = b * b - 4 * a * c
    hit = disc >= 0
    z = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a), 0.0)  # ray parameter = z (rays have z 1)
    return cam, z, hit


# --------------------------------------------------------------------------------------------- #
# Conversion: relative disparity -> metric z, on known answers
# --------------------------------------------------------------------------------------------- #


def test_sphere_disparity_comes_back_as_the_sphere() -> None:
    cam, z_true, hit = ray_traced_sphere(128)
    disparity = np.where(hit, 3.7 / np.where(hit, z_true, 1.0) - 0.2, -5.0)  # exact up to scale and shift
    exact = disparity_to_depth(disparity, hit.astype(np.float32), cam, DepthScale(percentile=0.0))
    rel = np.abs(exact[hit] - z_true[hit]) / z_true[hit]
    # Left: the inscribed radius of the pixelated disk (~1 px low of 40 px) sets the size.
    assert rel.max() < 0.012 and np.median(rel) < 0.01, (rel.max(), np.median(rel))
    assert (exact[~hit] == 0).all()
    # Default percentile 1: the outer 1 % of the disparity range is flattened, a bias of ~1 % of z.
    default = disparity_to_depth(disparity, hit.astype(np.float32), cam)
    rel = np.abs(default[hit] - z_true[hit]) / z_true[hit]
    assert rel.max() < 0.03 and np.median(rel) < 0.015, (rel.max(), np.median(rel))
    # The nearest point is the sphere's front, 0.6 in front of the centre (2.1); the rim is r^2/z0 in front.
    assert abs(exact[hit].min() - 2.1) < 0.02 and abs(exact[hit].max() - (2.7 - 0.36 / 2.7)) < 0.02


def test_sphere_error_shrinks_with_resolution() -> None:
    errors = []
    for size in (64, 256):
        cam, z_true, hit = ray_traced_sphere(size, azimuth=35.0)
        disparity = 1.0 / np.where(hit, z_true, 1.0)
        out = disparity_to_depth(disparity, hit.astype(np.float32), cam, DepthScale(percentile=0.0))
        errors.append(float(np.median(np.abs(out[hit] - z_true[hit]) / z_true[hit])))
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.006, errors


def test_tilted_plane_comes_back_as_a_plane() -> None:
    cam = orbit_camera(0.0, 0.0, 2.7, width=96, height=80)
    rays = cam.pixel_rays()
    normal = np.array([0.3, math.sin(0.6), -math.cos(0.6)])
    z_true = (normal @ np.array([0.0, 0.0, 2.7])) / (rays @ normal)  # the plane through the object centre
    j, i = np.meshgrid(np.arange(96), np.arange(80))
    inside = (j - 48) ** 2 + (i - 40) ** 2 < 30**2
    disparity = 0.8 / z_true + 1.5
    z = disparity_to_depth(disparity, inside.astype(np.float32), cam, DepthScale(percentile=0.0))
    # 1/z is affine in 1/z_true (exactly: the mapping is an affine map of the disparity)...
    design = np.stack([1.0 / z_true[inside], np.ones(inside.sum())], axis=1)
    coef, *_ = np.linalg.lstsq(design, 1.0 / z[inside], rcond=None)
    assert np.abs(design @ coef - 1.0 / z[inside]).max() < 1e-6 and coef[0] > 0
    # ... so the unprojected points are coplanar (a plane stays a plane; a map linear in z would bend it).
    pts = cam.unproject(np.stack([j[inside] + 0.5, i[inside] + 0.5], 1), z[inside].astype(np.float64))
    centred = pts - pts.mean(0)
    assert np.linalg.svd(centred, compute_uv=False)[-1] / np.sqrt(len(pts)) < 1e-5
    # The ends of its range are the constrained near / far depths.
    z_near, z_far = depth_range(silhouette_radius(inside, cam, 2.7), 2.7, 1.0)
    assert z[inside].min() == pytest.approx(z_near, rel=1e-5) and z[inside].max() == pytest.approx(z_far, rel=1e-5)


def test_conversion_ignores_scale_and_shift_and_is_monotone() -> None:
    cam = orbit_camera(0.0, 0.0, 2.7, width=64, height=64)
    rng = np.random.default_rng(0)
    disparity = cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 3.0)
    mask = np.zeros((64, 64), np.float32)
    cv2.circle(mask, (32, 30), 22, 1.0, -1)
    mask[20:24, 10:50] = 0.4  # soft values below 0.5 are outside
    z = disparity_to_depth(disparity, mask, cam)
    z2 = disparity_to_depth(7.5 * disparity - 3.0, mask, cam)
    np.testing.assert_allclose(z, z2, rtol=1e-5)
    inside = mask >= 0.5
    assert (z[~inside] == 0).all() and (z[inside] > 0).all() and z.dtype == np.float32
    order = np.argsort(disparity[inside], kind="stable")  # far to near
    assert (np.diff(z[inside][order]) <= 1e-6).all()  # larger disparity -> smaller z, never the reverse
    z_near, z_far = depth_range(silhouette_radius(inside, cam, 2.7), 2.7, 1.0)
    assert z[inside].min() == pytest.approx(z_near, rel=1e-5) and z[inside].max() == pytest.approx(z_far, rel=1e-5)


def test_conversion_options_and_degenerate_input() -> None:
    cam, z_true, hit = ray_traced_sphere(96)
    mask = hit.astype(np.float32)
    disparity = 1.0 / np.where(hit, z_true, 1.0)
    r = silhouette_radius(hit, cam, 2.7)
    shallow = disparity_to_depth(disparity, mask, cam, DepthScale(depth_extent=0.5, percentile=0.0))
    assert shallow[hit].min() == pytest.approx(2.7 - 0.5 * r, rel=1e-5)
    assert shallow[hit].max() == pytest.approx(2.7 - (0.5 * r) ** 2 / 2.7, rel=1e-5)
    deep = disparity_to_depth(disparity, mask, cam, DepthScale(depth_extent=2.0, percentile=0.0))
    assert deep[hit].min() == pytest.approx(2.7 - 2.0 * r, rel=1e-5)
    _, big_z, big = ray_traced_sphere(96, radius=1.2)  # 4 r > z0: the semi-axis is capped at 0.95 z0
    big_depth = disparity_to_depth(1.0 / np.where(big, big_z, 1.0), big.astype(np.float32), cam,
                                   DepthScale(depth_extent=4.0, percentile=0.0))
    assert big_depth[big].min() == pytest.approx(0.05 * 2.7, rel=1e-4) and big_depth[big].max() > 0
    far = disparity_to_depth(disparity, mask, cam, DepthScale(object_distance=5.0, percentile=0.0))
    r5 = silhouette_radius(hit, cam, 5.0)
    assert far[hit].min() == pytest.approx(5.0 - r5, rel=1e-5) and r5 == pytest.approx(r * 5.0 / 2.7)
    # The camera's own distance to the origin is the default object distance.
    cam4 = orbit_camera(0.0, 0.0, 4.0, width=96, height=96)
    assert disparity_to_depth(disparity, mask, cam4)[hit].max() < 4.0 < disparity_to_depth(
        disparity, mask, cam4)[hit].max() + 0.2
    flat = disparity_to_depth(np.full((96, 96), 0.3, np.float32), mask, cam)
    assert np.unique(flat[hit]).size == 1 and flat[hit][0] == pytest.approx(depth_range(r, 2.7, 1.0)[1], rel=1e-6)
    assert not disparity_to_depth(disparity, np.zeros_like(mask), cam).any()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"depth_extent": 0.0}, "depth_extent"), ({"depth_extent": float("nan")}, "depth_extent"),
    ({"percentile": 50.0}, "percentile"), ({"percentile": -1.0}, "percentile"),
    ({"object_distance": 0.0}, "object_distance"), ({"depth_extent": "deep"}, "depth_extent"),
])
def test_depth_scale_rejects_bad_values(kwargs, field) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_options(DepthScale, kwargs, "depth scale")
    assert info.value.field == field


_NAN_DISPARITY = np.ones((32, 32), np.float32)
_NAN_DISPARITY[3, 3] = np.nan


@pytest.mark.parametrize(("disparity", "mask", "size", "field"), [
    (_NAN_DISPARITY, np.ones((32, 32)), 32, "disparity"), (np.ones((32, 32)), np.ones((8, 8)), 32, "mask"),
    (np.ones(32), np.ones((32, 32)), 32, "disparity"), (np.ones((32, 32)), np.ones((32, 32)), 16, "camera"),
])
def test_conversion_rejects_bad_input(disparity, mask, size, field) -> None:
    cam = orbit_camera(0.0, 0.0, 2.7, width=size, height=size)
    with pytest.raises(InvalidInput) as info:
        disparity_to_depth(disparity, mask, cam)
    assert info.value.field == field


# --------------------------------------------------------------------------------------------- #
# Models, tiny checkpoints and loading
# --------------------------------------------------------------------------------------------- #


def test_sources_list_every_model_and_need_no_torch() -> None:
    assert list(MODEL_NAMES) == ALL_MODELS and len({m.repo_id for m in MODELS}) == len(MODELS)
    by_name = {m.name: m for m in MODELS}
    assert by_name[DPT_HYBRID].repo_id == "Intel/dpt-hybrid-midas" and by_name[DPT_LARGE].repo_id == "Intel/dpt-large"
    assert by_name[DA_V2_SMALL].repo_id == "depth-anything/Depth-Anything-V2-Small-hf"
    assert all("CC-BY-NC" in by_name[n].licence for n in (DA_V2_BASE, DA_V2_LARGE))
    assert all(m.used_by == ("depth/dpt",) and m.gpu_memory for m in DEPTH_MODELS)
    assert MODELS == (*DEPTH_MODELS, *MATTING_MODELS)  # make models fetches both
    code = "import sys, glimpse3d.services.depth.weights; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_models_have_the_published_layout_and_load_their_own_weights(tmp_path, model_dir, backends) -> None:
    for source in DEPTH_MODELS:  # the matting model: tests/unit/test_matting.py
        root = model_dir / source.name
        assert sorted(p.name for p in root.iterdir()) == sorted(source.files), source.name
        # transformers renames some keys on load (DINOv2 attention) and back on save, so saving the
        # loaded network again must give the file's tensors exactly: nothing was left at a fresh init.
        backends[source.name]._network.save_pretrained(tmp_path / source.name)
        saved, again = load_file(root / "model.safetensors"), load_file(tmp_path / source.name / "model.safetensors")
        assert set(saved) == set(again) and all(torch.equal(saved[k], again[k]) for k in saved), source.name
    hybrid = backends[DPT_HYBRID]._network
    assert type(hybrid).__name__ == "DPTForDepthEstimation" and hybrid.config.is_hybrid
    assert type(hybrid.dpt.embeddings).__name__ == "DPTViTHybridEmbeddings"  # the BiT stem, as in DPT-Hybrid
    assert type(hybrid.dpt.embeddings.backbone).__name__ == "BitBackbone"
    large = backends[DPT_LARGE]._network
    assert type(large).__name__ == "DPTForDepthEstimation" and not large.config.is_hybrid
    assert type(backends[DA_V2_SMALL]._network).__name__ == "DepthAnythingForDepthEstimation"
    preprocessor = json.loads((model_dir / DPT_HYBRID / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "DPTFeatureExtractor"  # the older style still loads


@pytest.mark.parametrize("name", ALL_MODELS)
def test_estimate_gives_metric_depth_in_the_object_range(backends, photo, name) -> None:
    rgba, camera = photo
    backend = backends[name]
    assert isinstance(backend, DepthBackend) and backend.ready and backend.name == "dpt"
    result = backend.estimate(rgba, camera)
    assert result.depth.shape == result.mask.shape == (HEIGHT, WIDTH)
    assert result.depth.dtype == result.mask.dtype == np.float32
    np.testing.assert_array_equal(result.mask, rgba[..., 3] / np.float32(255.0))  # the alpha is the matte
    inside = result.mask >= 0.5
    z_near, z_far = depth_range(silhouette_radius(inside, camera, 2.7), 2.7, 1.0)
    assert (result.depth[~inside] == 0).all()
    assert result.depth[inside].min() == pytest.approx(z_near, rel=1e-5)
    assert result.depth[inside].max() == pytest.approx(z_far, rel=1e-5)
    again = backend.estimate(rgba, camera)
    np.testing.assert_array_equal(result.depth, again.depth)  # deterministic: no sampling


def test_depth_follows_the_network_disparity(backends, photo) -> None:
    rgba, camera = photo
    backend = backends[DPT_HYBRID]
    disparity = backend.predict_disparity(rgba)
    depth = backend.estimate(rgba, camera).depth
    inside = rgba[..., 3] >= 128
    assert disparity.shape == (HEIGHT, WIDTH) and np.ptp(disparity[inside]) > 1e-3 * np.abs(disparity).max()
    order = np.argsort(disparity[inside], kind="stable")
    assert (np.diff(depth[inside][order]) <= 1e-6).all()
    assert np.corrcoef(disparity[inside], 1.0 / depth[inside])[0, 1] > 0.99


def test_other_weights_give_other_depth(model_dir_seed1, backends, photo) -> None:
    rgba, camera = photo
    other = make_backend("dpt", model_dir=model_dir_seed1, device="cpu")
    other.load()
    a, b = backends[DPT_HYBRID].estimate(rgba, camera), other.estimate(rgba, camera)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert np.abs(a.depth - b.depth).max() > 1e-3


def test_prediction_is_resized_back_for_any_size(backends) -> None:
    rng = np.random.default_rng(1)
    for name in (DPT_HYBRID, DA_V2_SMALL):
        for h, w in [(1, 1), (1, 200), (200, 3), (37, 53), (3, 5)]:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            disparity = backends[name].predict_disparity(image)
            assert disparity.shape == (h, w) and disparity.dtype == np.float32 and np.isfinite(disparity).all()
    # At the processor's own size the resize back is the identity: the network's output, unchanged.
    backend = backends[DPT_HYBRID]
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        raw = backend._network(pixel_values=backend._pixel_values(image)).predicted_depth[0].numpy()
    np.testing.assert_allclose(backend.predict_disparity(image), raw, rtol=1e-5, atol=1e-6)
    # A strip longer than 2:1 is centred on a grey canvas of aspect 2 and the prediction cropped back.
    strip = rng.integers(0, 256, (10, 90, 3), dtype=np.uint8)
    canvas, (top, left) = pad_to_aspect(strip, 2.0, 0.5)
    assert canvas.shape == (45, 90, 3) and (top, left) == (17, 0) and (canvas[:17] == 128).all()
    np.testing.assert_array_equal(canvas[17:27], strip)
    for name in (DPT_HYBRID, DA_V2_SMALL):
        np.testing.assert_array_equal(backends[name].predict_disparity(strip),
                                      backends[name].predict_disparity(canvas)[17:27])
    assert pad_to_aspect(strip.transpose(1, 0, 2), 2.0, 0.5)[0].shape == (90, 45, 3)
    assert pad_to_aspect(image, 2.0, 0.5)[0] is image
    odd = make_backend("dpt", model_dir=backend.model_dir, device="cpu", interpolation="bilinear")
    odd.load()
    small = rng.integers(0, 256, (30, 70, 3), dtype=np.uint8)
    assert not np.array_equal(odd.predict_disparity(small), backend.predict_disparity(small))


def test_transparent_pixels_are_composited_over_the_background() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [200, 10, 90]
    rgba[..., 3] = [[255, 0], [128, 255]]
    out = model_input(rgba, 0.5)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [200, 10, 90])
    np.testing.assert_array_equal(out[0, 1], [128, 128, 128])  # 0.5 * 255 rounded
    np.testing.assert_array_equal(out[1, 0], np.rint(np.array([200, 10, 90]) * 128 / 255 + 127.5 * 127 / 255))
    opaque = rgba.copy()
    opaque[..., 3] = 255
    np.testing.assert_array_equal(model_input(opaque, 0.5), opaque[..., :3])


def test_bfloat16_runs_on_the_cpu_close_to_float32(model_dir, backends, photo) -> None:
    rgba, _ = photo
    half = make_backend("dpt", model_dir=model_dir, device="cpu", dtype="bfloat16")
    half.load()
    assert half._network.dtype == torch.bfloat16
    ref = backends[DPT_HYBRID].predict_disparity(rgba)
    out = half.predict_disparity(rgba)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


# --------------------------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------------------------- #


def test_missing_model_is_a_failed_precondition_naming_make_models(tmp_path, model_dir) -> None:
    backend = make_backend("dpt", model_dir=tmp_path, device="cpu")
    with pytest.raises(ModelMissing) as info:
        backend.load()
    assert "make models" in info.value.message and DPT_HYBRID in info.value.message and not backend.ready
    assert status_code_for(info.value) == grpc.StatusCode.FAILED_PRECONDITION
    partial = tmp_path / DPT_HYBRID
    partial.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(model_dir / DPT_HYBRID / name, partial / name)
    with pytest.raises(ModelMissing) as info:
        backend.load()
    assert "model.safetensors" in info.value.message and "make models" in info.value.message


def test_metric_depth_checkpoint_is_refused(tmp_path, model_dir) -> None:
    root = tmp_path / DA_V2_SMALL
    shutil.copytree(model_dir / DA_V2_SMALL, root)
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "depth_estimation_type": "metric", "max_depth": 20}))
    backend = make_backend("dpt", model_dir=tmp_path, device="cpu", model=DA_V2_SMALL)
    with pytest.raises(FailedPrecondition) as info:
        backend.load()
    assert "metric" in info.value.message and not backend.ready


def test_corrupt_weights_are_a_failed_precondition(tmp_path, model_dir) -> None:
    root = tmp_path / DPT_LARGE
    shutil.copytree(model_dir / DPT_LARGE, root)
    (root / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FailedPrecondition) as info:
        make_backend("dpt", model_dir=tmp_path, device="cpu", model="dpt-large").load()
    assert "make models" in info.value.message and DPT_LARGE in info.value.message


@pytest.mark.parametrize(("options", "field"), [
    ({"model": "depth/midas-v9"}, "model"), ({"model": 3}, "model"), ({"depth_extent": -1.0}, "depth_extent"),
    ({"percentile": 60}, "percentile"), ({"dtype": "int8"}, "dtype"), ({"device": "tpu"}, "device"),
    ({"interpolation": "nearest"}, "interpolation"), ({"background": 2.0}, "background"),
    ({"grabcut_iterations": 0}, "grabcut_iterations"), ({"work_side": 8.5}, "work_side"),
    ({"object_distance": -2.0}, "object_distance"), ({"matting": "u2net"}, "matting"),
])
def test_bad_options_are_named(model_dir, options, field) -> None:
    with pytest.raises(InvalidInput) as info:
        REGISTRY.create("dpt", context={"model_dir": model_dir, "device": "cpu"}, **options)
    assert info.value.field == field, options


def test_short_model_names_and_an_absent_device(model_dir) -> None:
    backend = make_backend("dpt", model_dir=model_dir, device="cpu", model="depth-anything-v2-small")
    assert backend.model == DA_V2_SMALL and not backend.ready
    if not torch.cuda.is_available():
        with pytest.raises(FailedPrecondition) as info:
            make_backend("dpt", model_dir=model_dir, device="cuda").load()
        assert info.value.field == "device"


@pytest.mark.parametrize(("image", "field"), [
    (np.zeros((HEIGHT, WIDTH, 2), np.uint8), "image"), ([[1, 2]], "image"),
    (np.zeros((HEIGHT + 1, WIDTH, 3), np.uint8), "camera"),
])
def test_estimate_rejects_bad_images(backends, photo, image, field) -> None:
    with pytest.raises(InvalidInput) as info:
        backends[DPT_HYBRID].estimate(image, photo[1])
    assert info.value.field == field


# --------------------------------------------------------------------------------------------- #
# Through the depth service
# --------------------------------------------------------------------------------------------- #


def test_grpc_depth_service_serves_the_dpt_backend(tmp_path, model_dir, photo) -> None:
    rgba, camera = photo
    store = FileArtifactStore(tmp_path / "artifacts")
    image = convert.artifact_to_proto(store.put(encode_png(rgba), "image/png"))
    settings = ServiceSettings(backend="dpt", model_dir=model_dir, device="cpu",
                               backend_options=json.dumps({"model": DA_V2_SMALL, "depth_extent": 0.8}))

    async def scenario(stub) -> None:
        resp = await stub.Estimate(depth_pb2.EstimateDepthRequest(image=image, camera=convert.camera_to_proto(camera)))
        assert resp.backend == "dpt"
        depth = decode_npy(store.get(convert.artifact_from_proto(resp.depth)), field="depth")
        mask = decode_npy(store.get(convert.artifact_from_proto(resp.mask)), field="mask")
        assert depth.shape == mask.shape == (HEIGHT, WIDTH) and depth.dtype == np.float32
        inside = mask >= 0.5
        assert ((mask > 0.5) == (rgba[..., 3] > 127)).mean() > 0.99 and (depth[~inside] == 0).all()
        z_near, z_far = depth_range(silhouette_radius(inside, camera, 2.7), 2.7, 0.8)
        assert depth[inside].min() == pytest.approx(z_near, rel=1e-5)
        assert depth[inside].max() == pytest.approx(z_far, rel=1e-5)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Estimate(depth_pb2.EstimateDepthRequest(
                image=convert.artifact_to_proto(store.put(b"not an image", "image/png"))))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "image" in (error_from_rpc(exc.value).field or "")
        assert (await stub.Estimate(depth_pb2.EstimateDepthRequest(image=image))).backend == "dpt"

    run_service("depth", store, scenario, settings=settings)


def test_grpc_depth_service_without_weights_fails_at_startup(tmp_path) -> None:
    settings = ServiceSettings(backend="dpt", model_dir=tmp_path, device="cpu")

    async def never(stub) -> None:  # pragma: no cover - the service must not start
        raise AssertionError("service started without its depth model")

    with pytest.raises(ModelMissing) as info:
        run_service("depth", FileArtifactStore(tmp_path / "a"), never, settings=settings)
    assert "make models" in info.value.message and status_code_for(info.value) == grpc.StatusCode.FAILED_PRECONDITION
