"""The learned ``zero123`` multiview backend on tiny random weights written in the published layout.

Geometry and conditioning are checked on cases whose answer is known (relative poses of orbit
cameras, the Blender-frame formula Zero-1-to-3 was trained with, the framing round trip, the
classifier-free-guidance layout); the model path is checked for seeds, batching, both published
projection layouts and its own option and input errors. The backend contract (lifecycle, missing
weights, generic bad inputs, gRPC) is in test_contract_multiview.py.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from glimpse3d.core import synthetic
from glimpse3d.core.cameras import Camera, look_at, orbit_camera
from glimpse3d.core.cancel import cancel_scope
from glimpse3d.core.errors import Cancelled, FailedPrecondition, InvalidInput
from glimpse3d.core.models import ModelMissing
from glimpse3d.services.multiview.api import REGISTRY, GeneratedView, make_backend
from glimpse3d.services.multiview.backends.zero123 import Zero123Backend
from glimpse3d.services.multiview.backends.zero123.geometry import (
    frame_input,
    generated_matte,
    object_centre,
    place_view,
    placement,
    relative_pose,
)
from glimpse3d.services.multiview.tiny import write_tiny_models
from glimpse3d.services.multiview.weights import MODELS, ZERO123_XL, ZERO123_XL_FILES

SIZE = 48
RADIUS = 2.7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert write_tiny_models(root, seed=0) == [ZERO123_XL]
    return root


@pytest.fixture(scope="module")
def backend(model_dir) -> Zero123Backend:
    b = REGISTRY.create("zero123", context={"model_dir": model_dir, "device": "cpu"}, steps=2)
    b.load()
    return b


@pytest.fixture(scope="module")
def photo() -> dict:
    cam = synthetic.default_input_camera(SIZE)
    rgba = synthetic.render_image(synthetic.textured_object(seed=1, n=1500), cam, background=(0.9, 0.9, 0.9),
                                  rgba=True)
    return {"camera": cam, "image": rgba[..., :3], "mask": rgba[..., 3].astype(np.float32) / 255.0}


def _targets() -> list[Camera]:
    return [orbit_camera(a, 15.0, RADIUS, width=40, height=32) for a in (90.0, 180.0, 270.0)]


def _generate(b: Zero123Backend, photo: dict, cameras: list[Camera], seed: int = 0, steps: int = 0):
    return b.generate(photo["image"], photo["mask"], photo["camera"], None, cameras, seed=seed, steps=steps)


# --- poses: known answers ----------------------------------------------------------------------


def test_relative_pose_of_orbit_cameras() -> None:
    front = orbit_camera(0.0, 0.0, RADIUS)
    np.testing.assert_allclose(relative_pose(front, orbit_camera(90.0, 0.0, RADIUS)), [0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(relative_pose(front, orbit_camera(-90.0, 0.0, RADIUS)), [0, -1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(relative_pose(front, orbit_camera(180.0, 0.0, RADIUS)), [0, 0, -1, 0], atol=1e-6)
    # raising the camera lowers the polar angle: the first entry is minus the elevation change
    np.testing.assert_allclose(relative_pose(front, orbit_camera(0.0, 30.0, RADIUS)),
                               [-math.pi / 6, 0, 1, 0], atol=1e-6)
    # relative to the input, not to azimuth 0: 45 -> 135 is a quarter turn
    np.testing.assert_allclose(relative_pose(orbit_camera(45.0, 20.0, RADIUS), orbit_camera(135.0, 20.0, RADIUS)),
                               [0, 1, 0, 0], atol=1e-6)
    # distances are relative to the input camera's, in Zero-1-to-3 units
    np.testing.assert_allclose(relative_pose(front, orbit_camera(0.0, 0.0, 2 * RADIUS), reference_radius=1.5),
                               [0, 0, 1, 1.5], atol=1e-6)
    np.testing.assert_allclose(relative_pose(front, front), [0, 0, 1, 0], atol=1e-6)


def _blender_get_t(target_position: np.ndarray, cond_position: np.ndarray) -> np.ndarray:
    """Zero-1-to-3's training-time pose, computed in Blender's +z-up frame from camera centres."""
    def spherical(p):
        polar = np.arctan2(np.hypot(p[0], p[1]), p[2])
        return polar, np.arctan2(p[1], p[0]), np.linalg.norm(p)

    (pt, at, rt), (pc, ac, rc) = spherical(target_position), spherical(cond_position)
    d_az = (at - ac) % (2 * np.pi)
    return np.array([pt - pc, np.sin(d_az), np.cos(d_az), rt - rc])


def test_relative_pose_matches_the_blender_formula_for_arbitrary_cameras() -> None:
    rng = np.random.default_rng(3)
    to_blender = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # (x, y, z) -> (z, x, y), a rotation
    assert np.isclose(np.linalg.det(to_blender), 1.0)
    for _ in range(20):
        eyes = rng.normal(size=(2, 3)) * rng.uniform(1.0, 4.0, size=(2, 1))
        cams = [Camera(100, 100, 64, 64, 128, 128, look_at(eye, rng.normal(size=3) * 0.05)) for eye in eyes]
        expected = _blender_get_t(to_blender @ cams[1].position, to_blender @ cams[0].position)
        got = relative_pose(cams[0], cams[1], reference_radius=np.linalg.norm(cams[0].position))
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_camera_at_the_object_centre_is_invalid() -> None:
    with pytest.raises(InvalidInput) as exc:
        relative_pose(orbit_camera(0.0, 0.0, RADIUS), Camera(50, 50, 32, 32, 64, 64), field="views[2]")
    assert exc.value.field == "views[2]"


# --- framing and masks: known answers ----------------------------------------------------------


def _rect_photo(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 0.3, np.float32)  # grey background
    mask = np.zeros((h, w), np.float32)
    mask[20:60, 90:150] = 1.0  # 40 x 60 object off centre
    image[mask > 0] = (0.8, 0.1, 0.1)
    return image, mask


def test_framing_centres_the_object_and_scales_it_to_the_ratio() -> None:
    image, mask = _rect_photo()
    model_in, framing = frame_input(image, mask, ratio=0.75, resolution=64)
    assert model_in.shape == (64, 64, 3) and model_in.dtype == np.uint8
    red = (model_in[..., 0] > 150) & (model_in[..., 1] < 100)
    rows, cols = np.nonzero(red)
    assert abs(cols.max() - cols.min() + 1 - 48) <= 1  # longer side 60 px -> 0.75 * 64 = 48
    assert abs(rows.max() - rows.min() + 1 - 32) <= 1  # 40 px scaled by the same factor
    assert abs((cols.min() + cols.max() + 1) / 2 - 32) <= 0.5 and abs((rows.min() + rows.max() + 1) / 2 - 32) <= 0.5
    assert (model_in[:8] == 255).all()  # the grey photo background became white
    assert framing.scale == pytest.approx(0.8) and framing.centre == (120.0, 40.0)


def test_placement_round_trips_to_the_input_camera_and_follows_the_focal_length() -> None:
    image, mask = _rect_photo()
    cam = Camera(150, 150, 80, 60, 160, 120, look_at((0, 0, 3.0), (0, 0, 0)))
    model_in, framing = frame_input(image, mask, ratio=0.8, resolution=64)
    centre = object_centre(cam, framing)
    matte = generated_matte(model_in.astype(np.float32) / 255.0, threshold=0.1)
    back = place_view(model_in.astype(np.float32) / 255.0, matte, placement(framing, cam, cam, centre, "views[0]"),
                      cam, np.zeros(3, np.float32))
    iou = ((back.mask > 0.5) & (mask > 0.5)).sum() / ((back.mask > 0.5) | (mask > 0.5)).sum()
    assert iou > 0.95  # the view from the input camera puts the object where the photo has it
    zoomed = Camera(300, 300, 160, 120, 320, 240, cam.world_to_camera)  # same pose, twice the focal and size
    big = place_view(model_in.astype(np.float32) / 255.0, matte,
                     placement(framing, cam, zoomed, centre, "views[0]"), zoomed, np.zeros(3, np.float32))
    assert (big.mask > 0.5).sum() == pytest.approx(4 * (back.mask > 0.5).sum(), rel=0.05)


def test_generated_matte_is_the_non_white_object_with_holes_filled() -> None:
    rgb = np.ones((64, 64, 3), np.float32)
    yy, xx = np.mgrid[:64, :64]
    ring = (np.hypot(yy - 32, xx - 32) < 20) & (np.hypot(yy - 32, xx - 32) > 8)
    rgb[ring] = (0.2, 0.5, 0.9)
    rgb += np.random.default_rng(0).uniform(-0.02, 0.0, rgb.shape).astype(np.float32)  # off-white noise
    matte = generated_matte(np.clip(rgb, 0, 1), threshold=0.1)
    disc = np.hypot(yy - 32, xx - 32) < 20
    assert ((matte > 0.5) == disc).mean() > 0.99  # the white hole inside the ring belongs to the object


# --- layout and loading --------------------------------------------------------------------------


def test_models_list_the_published_layout(model_dir) -> None:
    (source,) = MODELS
    assert source.name == ZERO123_XL and source.repo_id == "bennyguo/zero123-xl-diffusers"
    for rel in ZERO123_XL_FILES:  # the tiny model has every file production fetches
        assert (model_dir / ZERO123_XL / rel).is_file(), rel
    config = json.loads((model_dir / ZERO123_XL / "clip_camera_projection" / "config.json").read_text())
    assert config["_class_name"] == "CLIPCameraProjection" and config["additional_embeddings"] == 4


@pytest.fixture(scope="module")
def components(model_dir):
    from glimpse3d.services.multiview.backends.zero123 import pipeline as zp

    return zp.load_components(model_dir / ZERO123_XL, torch.device("cpu"), torch.float32)


def test_components_have_zero123_shapes(components) -> None:
    assert components.unet.config.in_channels == 8 and components.resolution == 32
    assert components.projection.in_features == components.projection.out_features + 4
    assert components.unet.dtype == torch.float32  # fp16 files upcast on the CPU


def test_conditioning_layout_matches_classifier_free_guidance(components) -> None:
    from glimpse3d.services.multiview.backends.zero123 import pipeline as zp

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    poses = torch.tensor([[0.1, 1.0, 0.0, 0.0], [-0.3, 0.0, -1.0, 0.2]])
    with torch.inference_mode():
        emb, lat = zp.encode_input(components, image)
        tokens, latents = zp.conditioning(components, emb, lat, poses, guided=True)
        plain, plain_latents = zp.conditioning(components, emb, lat, poses, guided=False)
    assert tokens.shape == (4, 1, 32) and latents.shape == (4, 4, 16, 16)
    assert (tokens[:2] == 0).all() and (latents[:2] == 0).all()  # unconditional: zero token, zero latents
    assert torch.equal(tokens[2:], plain) and torch.equal(latents[2:], plain_latents)
    w, b = components.projection.weight, components.projection.bias
    expected = torch.cat([emb.expand(2, -1), poses], dim=-1) @ w.T + b  # [CLIP embedding, pose] -> D
    torch.testing.assert_close(plain[:, 0], expected)
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        mode = components.vae.encode(x).latent_dist.mean  # unscaled posterior mode, as in Zero-1-to-3
    torch.testing.assert_close(plain_latents[1], mode[0])


def test_other_published_layouts_load_the_same_weights(model_dir, tmp_path, photo) -> None:
    """Weight files without a variant suffix (``ashawkey/zero123-xl-diffusers``) and the older
    ``cc_projection`` folder (tensors ``projection.*`` in a pickled .bin, ``kxic/zero123-*``) give
    the same views as the fp16-variant ``clip_camera_projection`` layout."""
    from safetensors.torch import load_file

    root = tmp_path / ZERO123_XL
    shutil.copytree(model_dir / ZERO123_XL, root)
    for path in root.glob("*/*.fp16.safetensors"):
        path.rename(path.with_name(path.name.replace(".fp16", "")))
    old = root / "clip_camera_projection"
    state = load_file(str(old / "diffusion_pytorch_model.safetensors"))
    shutil.rmtree(old)
    (root / "cc_projection").mkdir()
    (root / "cc_projection" / "config.json").write_text(json.dumps({"in_channel": 36, "out_channel": 32}))
    torch.save({"projection.weight": state["proj.weight"], "projection.bias": state["proj.bias"]},
               root / "cc_projection" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelMissing, match="fp16"):
        make_backend("zero123", model_dir=tmp_path, device="cpu", variant="fp16").load()
    other = make_backend("zero123", model_dir=tmp_path, device="cpu", steps=2)
    other.load()
    ref = make_backend("zero123", model_dir=model_dir, device="cpu", steps=2)
    ref.load()
    cams = _targets()[:1]
    assert np.array_equal(_generate(other, photo, cams, seed=4)[0].rgb, _generate(ref, photo, cams, seed=4)[0].rgb)


# --- generation ----------------------------------------------------------------------------------


def test_views_are_deterministic_per_seed_and_sized_per_camera(backend: Zero123Backend, photo) -> None:
    cams = _targets()
    a = _generate(backend, photo, cams, seed=11)
    b = _generate(backend, photo, cams, seed=11)
    c = _generate(backend, photo, cams, seed=12)
    assert len(a) == 3 and all(isinstance(v, GeneratedView) for v in a)
    for va, vb, vc, cam in zip(a, b, c, cams, strict=True):
        assert va.rgb.shape == (cam.height, cam.width, 3) and va.rgb.dtype == np.uint8
        assert va.mask.shape == (cam.height, cam.width) and va.mask.dtype == np.float32
        assert 0.0 <= va.mask.min() and va.mask.max() <= 1.0
        assert np.array_equal(va.rgb, vb.rgb) and np.array_equal(va.mask, vb.mask)
        assert np.abs(va.rgb.astype(int) - vc.rgb).mean() > 1.0  # another seed, another sample
    assert not np.array_equal(a[0].rgb, a[1].rgb)  # different poses, different views


def test_a_view_does_not_depend_on_batching_or_on_the_other_views(model_dir, backend, photo) -> None:
    cams = _targets()
    together = _generate(backend, photo, cams, seed=5)
    one_by_one = make_backend("zero123", model_dir=model_dir, device="cpu", steps=2, batch_size=1)
    one_by_one.load()
    alone = _generate(one_by_one, photo, cams, seed=5)
    for x, y in zip(together, alone, strict=True):
        assert np.abs(x.rgb.astype(int) - y.rgb).max() <= 1
    first = _generate(backend, photo, cams[:1], seed=5)[0]
    assert np.abs(first.rgb.astype(int) - together[0].rgb).max() <= 1


def test_request_steps_and_guidance_change_the_sample(model_dir, backend, photo) -> None:
    cams = _targets()[:1]
    two = _generate(backend, photo, cams, seed=2)[0].rgb
    assert not np.array_equal(_generate(backend, photo, cams, seed=2, steps=3)[0].rgb, two)
    unguided = make_backend("zero123", model_dir=model_dir, device="cpu", steps=2, guidance_scale=1.0)
    unguided.load()
    assert not np.array_equal(_generate(unguided, photo, cams, seed=2)[0].rgb, two)


def test_photo_without_mask_is_matted_from_its_border(backend, photo) -> None:
    views = backend.generate(photo["image"], None, photo["camera"], None, _targets()[:1], seed=1)
    assert views[0].rgb.shape == (32, 40, 3)


def test_cancellation_stops_the_denoising_loop(backend, photo) -> None:
    with cancel_scope() as event:
        event.set()
        with pytest.raises(Cancelled):
            _generate(backend, photo, _targets()[:1])


def test_cpu_offload_hooks_give_the_same_views(model_dir, photo) -> None:
    from glimpse3d.services.multiview.backends.zero123 import pipeline as zp

    settings = zp.SamplerSettings(steps=2, guidance_scale=3.0, eta=1.0)
    image = np.full((32, 32, 3), 200, np.uint8)
    image[8:24, 10:22] = (30, 90, 160)
    poses = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
    outs = []
    for offload in (False, True):
        comps = zp.load_components(model_dir / ZERO123_XL, torch.device("cpu"), torch.float32)
        hooks = zp.place(comps, attention_slicing=offload, cpu_offload=offload)
        assert len(hooks) == (4 if offload else 0)
        with torch.inference_mode():
            outs.append(zp.sample_views(comps, image, poses, 3, settings, batch_size=1))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)


# --- errors --------------------------------------------------------------------------------------


def test_missing_weight_files_are_reported(model_dir, tmp_path) -> None:
    root = tmp_path / ZERO123_XL
    shutil.copytree(model_dir / ZERO123_XL, root)
    (root / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(ModelMissing) as exc:
        make_backend("zero123", model_dir=tmp_path, device="cpu").load()
    assert "make models" in exc.value.message
    shutil.rmtree(root / "clip_camera_projection")
    with pytest.raises(FailedPrecondition, match="camera projection"):
        make_backend("zero123", model_dir=tmp_path, device="cpu").load()


@pytest.mark.parametrize(("options", "field"), [
    ({"steps": 0}, "steps"), ({"batch_size": 17}, "batch_size"), ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"eta": 2.0}, "eta"), ({"foreground_ratio": 0.1}, "foreground_ratio"), ({"variant": "int8"}, "variant"),
    ({"dtype": "float64"}, "dtype"), ({"cpu_offload": "yes"}, "cpu_offload"),
])
def test_bad_options_are_invalid_input_naming_the_option(options, field) -> None:
    with pytest.raises(InvalidInput) as exc:
        make_backend("zero123", **options)
    assert exc.value.field == field


def test_bad_requests_are_invalid_input(backend, photo) -> None:
    with pytest.raises(InvalidInput) as exc:
        backend.generate(photo["image"], np.zeros((SIZE, SIZE), np.float32), photo["camera"], None, _targets())
    assert exc.value.field == "mask"
    with pytest.raises(InvalidInput) as exc:
        _generate(backend, photo, [_targets()[0], Camera(40, 40, 20, 16, 40, 32)])
    assert exc.value.field == "views[1]"
