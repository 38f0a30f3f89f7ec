"""Learned matting (SAM 2 through transformers) for the depth service, on the tiny random SAM 2 that
glimpse3d.services.depth.tiny writes in the published layout.

The tiny network's masks are meaningless; what is checked is the production path around it: the
prompts built from the weight-free matte and the user's points (on an image whose object is known),
the choice of the candidate mask, loading from the model directory, the matte's shape, range and
determinism, the alpha pass-through, the errors, and that the backends and the depth server use it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from service_harness import run_service

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.images import decode_npy, encode_png
from glimpse3d.core.modelfetch import collect_models
from glimpse3d.core.models import ModelMissing
from glimpse3d.core.service import ServiceSettings
from glimpse3d.services.depth.api import REGISTRY
from glimpse3d.services.depth.common import estimate_mask
from glimpse3d.services.depth.matting import (
    BOX_MARGIN,
    KEEP,
    REMOVE,
    Prompts,
    Sam2Matting,
    build_prompts,
    select_mask,
)
from glimpse3d.services.depth.weights import DA_V2_SMALL, MATTING_FILES, MATTING_MODELS, SAM2_TINY
from glimpse3d.v1 import common_pb2, depth_pb2

W, H = 120, 96  # not square, and not the tiny processor's 128 x 128
CX, CY, R = 70, 44, 26  # the disc


def disc_photo(cx: int = CX, cy: int = CY, r: int = R) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 [H, W, 3] of an orange disc on a plain grey background, and the disc (bool [H, W])."""
    yy, xx = np.mgrid[0:H, 0:W]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    img = np.full((H, W, 3), (200, 200, 196), np.uint8)
    img[disc] = (220, 110, 40)
    return img, disc


@pytest.fixture(scope="module")
def matting(tiny_model_dir) -> Sam2Matting:
    m = Sam2Matting(tiny_model_dir, device="cpu")
    m.load()
    return m


# --------------------------------------------------------------------------------------------- #
# Prompts and mask selection
# --------------------------------------------------------------------------------------------- #


def test_prompts_box_and_point_come_from_the_object() -> None:
    img, disc = disc_photo()
    coarse = estimate_mask(img)
    assert ((coarse >= 0.5) == disc).mean() > 0.98  # the weight-free matte finds the disc
    prompts = build_prompts(coarse)
    x0, y0, x1, y1 = prompts.box
    # The disc's extent, grown by 5 % of the width (x) and height (y), give or take a pixel of matting.
    mx, my = BOX_MARGIN * W, BOX_MARGIN * H
    assert x0 == pytest.approx(CX - R - mx, abs=1.5) and x1 == pytest.approx(CX + R + mx, abs=1.5)
    assert y0 == pytest.approx(CY - R - my, abs=1.5) and y1 == pytest.approx(CY + R + my, abs=1.5)
    ys, xs = np.nonzero(disc)
    assert x0 < xs.min() and y0 < ys.min() and x1 > xs.max() and y1 > ys.max()  # the box holds the disc
    assert prompts.labels == (KEEP,) and len(prompts.points) == 1
    px, py = prompts.points[0]
    assert disc[int(py), int(px)] and np.hypot(px - CX, py - CY) <= 2.0  # inside: the disc's centre


def test_prompts_box_is_clipped_and_user_points_are_labelled_at_their_pixels() -> None:
    _, disc = disc_photo(cx=10, cy=85, r=20)  # cut by the left and bottom edges
    coarse = np.where(disc, 0.9, 0.1).astype(np.float32)  # the weight-free matte, given
    points = [(0.25, 0.5, True), (0.9, 0.1, False), (1.0, 0.0, False)]
    prompts = build_prompts(coarse, points)
    x0, y0, x1, y1 = prompts.box
    assert (x0, y1) == (0.0, H - 1.0) and x1 == pytest.approx(30 + BOX_MARGIN * W, abs=1.5)
    assert y0 == pytest.approx(65 - BOX_MARGIN * H, abs=1.5)
    assert prompts.labels == (KEEP, KEEP, REMOVE, REMOVE)
    assert prompts.points[1:] == ((0.25 * (W - 1), 0.5 * (H - 1)), (0.9 * (W - 1), 0.1 * (H - 1)), (W - 1.0, 0.0))
    px, py = prompts.points[0]
    assert disc[int(py), int(px)] and px > 2 and py < H - 3  # the frame counts as edge: not on it


def test_prompts_for_an_empty_matte_are_the_whole_image_and_the_user_points() -> None:
    prompts = build_prompts(np.zeros((H, W), np.float32), [(0.5, 0.5, True)])
    assert prompts == Prompts(box=(0.0, 0.0, W - 1.0, H - 1.0), points=((0.5 * (W - 1), 0.5 * (H - 1)),),
                              labels=(KEEP,))
    assert build_prompts(np.zeros((H, W), np.float32)).points == ()


def test_the_candidate_with_the_highest_predicted_iou_is_chosen() -> None:
    masks = torch.arange(3, dtype=torch.float32)[None, None, :, None, None].expand(2, 1, 3, 4, 5).clone()
    masks[1] += 10.0  # [2, 1, 3, 4, 5]: image b's candidate k is filled with 10 b + k
    iou = torch.tensor([[[0.2, 0.9, 0.5]], [[0.7, 0.1, 0.3]]])  # [2, 1, 3]
    best = select_mask(masks, iou)
    assert best.shape == (2, 1, 1, 4, 5)
    assert (best[0] == 1.0).all() and (best[1] == 10.0).all()


# --------------------------------------------------------------------------------------------- #
# The tiny model
# --------------------------------------------------------------------------------------------- #


def test_tiny_model_loads_from_the_published_layout_and_mattes(tmp_path, tiny_model_dir, matting) -> None:
    root = tiny_model_dir / SAM2_TINY
    assert sorted(p.name for p in root.iterdir()) == sorted(MATTING_FILES)
    assert json.loads((root / "config.json").read_text())["architectures"] == ["Sam2Model"]
    assert json.loads((root / "preprocessor_config.json").read_text())["image_processor_type"] == "Sam2ImageProcessor"
    # Saving the loaded network again gives the file's tensors exactly: nothing was left at a fresh init.
    matting._network.save_pretrained(tmp_path)
    saved, again = load_file(root / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(again) and all(torch.equal(saved[k], again[k]) for k in saved)
    assert type(matting._network).__name__ == "Sam2Model"
    fresh = Sam2Matting(tiny_model_dir, "cpu", model="sam2.1-hiera-tiny")
    img, _ = disc_photo()
    with pytest.raises(NotReady):
        fresh.matte(img)
    fresh.load()
    fresh.load()  # idempotent
    assert fresh.ready and fresh.model == SAM2_TINY
    out = matting.matte(img)
    assert out.shape == (H, W) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 1e-4  # a matte, not a constant
    np.testing.assert_array_equal(out, matting.matte(img))  # deterministic
    np.testing.assert_array_equal(out, fresh.matte(img))  # and the same after another load
    rgba = np.dstack([img, np.full((H, W), 255, np.uint8)])  # all opaque: not a matte
    np.testing.assert_array_equal(out, matting.matte(rgba))
    float_rgb = img.astype(np.float32) / 255.0
    np.testing.assert_allclose(matting.matte(float_rgb), out, atol=1e-6)


def test_user_points_reach_the_model(matting) -> None:
    img, _ = disc_photo()
    plain = matting.matte(img)
    removed = matting.matte(img, [(0.2, 0.8, False)])  # on the background: the weight-free matte is unchanged
    np.testing.assert_array_equal(estimate_mask(img, points=[(0.2, 0.8, False)]) >= 0.5, estimate_mask(img) >= 0.5)
    assert np.abs(removed - plain).max() > 1e-4  # so only the extra point prompt changed the matte


def test_alpha_channel_is_returned_as_the_matte(matting) -> None:
    img, _ = disc_photo()
    alpha = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))
    out = matting.matte(np.dstack([img, alpha]), [(0.5, 0.5, False)])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, alpha.astype(np.float32) / np.float32(255.0))


@pytest.mark.parametrize(("args", "field"), [
    ((np.zeros((H, W, 2), np.uint8),), "image"), (([[1, 2]],), "image"), ((np.zeros((H, W, 3), np.int32),), "image"),
    ((disc_photo()[0], [(0.5, 1.5, True)]), "matte_points"), ((disc_photo()[0], [(0.5, 0.5)]), "matte_points"),
])
def test_inputs_are_validated(matting, args, field) -> None:
    with pytest.raises(InvalidInput) as info:
        matting.matte(*args)
    assert info.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"model": "matting/sam-vit-huge"}, "model"), ({"model": DA_V2_SMALL}, "model"), ({"device": "tpu"}, "device"),
    ({"work_side": 8}, "work_side"),
])
def test_options_are_validated(tiny_model_dir, kwargs, field) -> None:
    with pytest.raises(InvalidInput) as info:
        Sam2Matting(tiny_model_dir, **kwargs)
    assert info.value.field == field


def test_a_missing_model_names_the_files(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(ModelMissing) as info:
        Sam2Matting(tmp_path, device="cpu").load()
    assert SAM2_TINY in info.value.message and "make models" in info.value.message
    shutil.copytree(tiny_model_dir / SAM2_TINY, tmp_path / SAM2_TINY)
    (tmp_path / SAM2_TINY / "model.safetensors").unlink()
    (tmp_path / SAM2_TINY / "preprocessor_config.json").unlink()
    matting = Sam2Matting(tmp_path, device="cpu")
    with pytest.raises(ModelMissing) as info:
        matting.load()
    assert "model.safetensors" in info.value.message and "preprocessor_config.json" in info.value.message
    assert "config.json," not in info.value.message.replace("preprocessor_config.json", "")
    assert not matting.ready


def test_the_model_source_is_collected_by_make_models() -> None:
    (source,) = MATTING_MODELS
    assert source.name == SAM2_TINY and source.repo_id == "facebook/sam2.1-hiera-tiny"
    assert source.files == ("config.json", "preprocessor_config.json", "model.safetensors")
    assert source.licence == "Apache-2.0" and source.used_by == ("depth/silhouette", "depth/dpt")
    assert "38.9M" in source.gpu_memory
    assert [m for m in collect_models(("depth",)) if m.name == SAM2_TINY] == [source]


# --------------------------------------------------------------------------------------------- #
# Backends and the depth server
# --------------------------------------------------------------------------------------------- #


CONTEXT_POINTS = [(0.5, 0.5, True)]


@pytest.mark.parametrize(("name", "options"), [("silhouette", {}), ("dpt", {"model": DA_V2_SMALL})])
def test_backends_with_matting_use_it(tiny_model_dir, matting, name, options) -> None:
    img, _ = disc_photo()
    camera = orbit_camera(0.0, 0.0, 2.7, width=W, height=H)
    context = {"model_dir": tiny_model_dir, "device": "cpu"}  # as the service passes them
    backend = REGISTRY.create(name, context=context, matting=SAM2_TINY, **options)
    backend.load()
    np.testing.assert_array_equal(backend.matte(img), matting.matte(img))
    np.testing.assert_array_equal(backend.matte(img, points=CONTEXT_POINTS), matting.matte(img, CONTEXT_POINTS))
    result = backend.estimate(img, camera)
    np.testing.assert_array_equal(result.mask, matting.matte(img))
    inside = result.mask >= 0.5
    assert (result.depth[~inside] == 0).all() and (result.depth[inside] > 0).all()


def test_silhouette_without_matting_uses_the_weight_free_matte(tiny_model_dir) -> None:
    img, _ = disc_photo()
    camera = orbit_camera(0.0, 0.0, 2.7, width=W, height=H)
    plain = REGISTRY.create("silhouette", context={"model_dir": tiny_model_dir, "device": "cpu"})
    plain.load()
    np.testing.assert_array_equal(plain.matte(img, points=CONTEXT_POINTS), estimate_mask(img, points=CONTEXT_POINTS))
    np.testing.assert_array_equal(plain.estimate(img, camera).mask, estimate_mask(img))


def test_silhouette_backend_without_matting_imports_no_torch() -> None:
    code = ("import sys; from glimpse3d.services.depth.api import make_backend; "
            "b = make_backend('silhouette', matting=''); b.load(); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_depth_server_mattes_with_the_backend(tmp_path, tiny_model_dir, matting) -> None:
    img, _ = disc_photo()
    store = FileArtifactStore(tmp_path / "artifacts")
    image = convert.artifact_to_proto(store.put(encode_png(img), "image/png"))
    settings = ServiceSettings(backend="silhouette", model_dir=tiny_model_dir, device="cpu",
                               backend_options=json.dumps({"matting": SAM2_TINY}))
    points = [(0.25, 0.75, True), (0.5, 0.125, False)]  # exact in the protocol's float32
    proto_points = [common_pb2.MattePoint(x=x, y=y, keep=k) for x, y, k in points]
    expected = matting.matte(img, points)

    async def scenario(stub) -> None:
        resp = await stub.Matte(depth_pb2.MatteRequest(image=image, matte_points=proto_points))
        mask = decode_npy(store.get(convert.artifact_from_proto(resp.mask)), field="mask")
        np.testing.assert_allclose(mask, expected, atol=1e-6)
        assert np.abs(mask - estimate_mask(img, points=points)).max() > 0.1  # not the weight-free matte
        resp = await stub.Estimate(depth_pb2.EstimateDepthRequest(image=image, matte_points=proto_points))
        mask = decode_npy(store.get(convert.artifact_from_proto(resp.mask)), field="mask")
        np.testing.assert_allclose(mask, np.round(expected * 255.0) / 255.0, atol=1e-6)  # handed over as alpha

    run_service("depth", store, scenario, settings=settings)
