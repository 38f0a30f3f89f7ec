"""The ``triposr`` reconstruction backend: the published architecture and checkpoint layout, the
triplane -> Gaussians conversion and the frame placement on fields with known answers, TripoSR's
input preparation, and the backend on a tiny random model (the contract: tests/unit/test_contract_reconstruction.py)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.core.synthetic import render_depth_alpha, render_image, textured_object
from glimpse3d.services.reconstruction.api import make_backend
from glimpse3d.services.reconstruction.backends.triposr import checkpoint
from glimpse3d.services.reconstruction.backends.triposr.backend import TripoSRBackend
from glimpse3d.services.reconstruction.backends.triposr.convert import (
    GridOptions,
    ObjectGaussians,
    placement_for_crop,
    to_splat,
    triplane_to_gaussians,
    triposr_camera,
)
from glimpse3d.services.reconstruction.backends.triposr.model import (
    PUBLISHED_CONFIG,
    TripoSRModel,
    legacy_interpolate_pos_encoding,
    parse_config,
    published_config,
)
from glimpse3d.services.reconstruction.backends.triposr.preprocess import Crop, conditioning_image, foreground_crop
from glimpse3d.services.reconstruction.backends.triposr.source import NAME, SOURCES
from glimpse3d.services.reconstruction.backends.triposr.tiny import tiny_config_yaml, write_tiny

SIZE = 64
GRID = 24  # sampling grid for the tiny-model backend tests (kept small for CPU time)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert write_tiny(root, seed=0) == [NAME]
    return root


@pytest.fixture(scope="module")
def backend(tiny_dir):
    b = TripoSRBackend(model_dir=tiny_dir, device="cpu", grid_resolution=GRID, max_gaussians=4000)
    b.load()
    return b


@pytest.fixture(scope="module")
def scene():
    splat = textured_object(seed=0, n=1500)
    camera = orbit_camera(0.0, 0.0, 2.7, width=SIZE, height=SIZE)
    rgba = render_image(splat, camera, background=(0.9, 0.9, 0.9), rgba=True)
    depth, alpha = render_depth_alpha(splat, camera)
    return rgba[..., :3], depth, alpha, camera


# ----------------------------------------------------------------------------- published layout


def test_architecture_reproduces_the_published_checkpoint_layout():
    shapes = checkpoint.implied_shapes(published_config())
    # Facts about the published model.ckpt that do not come from this code: 549 float32 tensors in
    # a 1,677,246,742-byte pickle, transformers 4.x ViT names, and these anchor shapes.
    assert len(shapes) == 549
    anchors = {
        "image_tokenizer.model.embeddings.cls_token": (1, 1, 768),
        "image_tokenizer.model.embeddings.position_embeddings": (1, 197, 768),
        "image_tokenizer.model.embeddings.patch_embeddings.projection.weight": (768, 3, 16, 16),
        "image_tokenizer.model.encoder.layer.11.attention.attention.query.weight": (768, 768),
        "image_tokenizer.model.encoder.layer.0.attention.output.dense.weight": (768, 768),
        "image_tokenizer.model.encoder.layer.0.intermediate.dense.weight": (3072, 768),
        "image_tokenizer.model.encoder.layer.0.output.dense.weight": (768, 3072),
        "image_tokenizer.model.pooler.dense.weight": (768, 768),
        "tokenizer.embeddings": (3, 1024, 32, 32),
        "backbone.norm.weight": (1024,),
        "backbone.proj_in.weight": (1024, 1024),
        "backbone.transformer_blocks.0.attn1.to_q.weight": (1024, 1024),
        "backbone.transformer_blocks.15.attn2.to_k.weight": (1024, 768),
        "backbone.transformer_blocks.0.ff.net.0.proj.weight": (8192, 1024),
        "backbone.transformer_blocks.0.ff.net.2.weight": (1024, 4096),
        "post_processor.upsample.weight": (1024, 40, 2, 2),
        "decoder.layers.0.weight": (64, 120),
        "decoder.layers.18.weight": (4, 64),
    }
    for key, shape in anchors.items():
        assert shapes[key] == shape, key
    assert "backbone.transformer_blocks.0.attn1.to_q.bias" not in shapes  # attention_bias: false
    payload = 4 * sum(math.prod(s) for s in shapes.values())
    assert 0 < 1_677_246_742 - payload < 1_000_000  # the rest is pickle framing


def test_manifest_file_is_the_published_architecture():
    on_disk = json.loads(checkpoint.MANIFEST_PATH.read_text())
    built = checkpoint.architecture_manifest()
    assert on_disk["tensors"] == built["tensors"] and on_disk["num_tensors"] == 549
    assert checkpoint.read_manifest() == checkpoint.implied_shapes(published_config())
    expected, reference = checkpoint.expected_shapes(published_config())
    assert reference.startswith("manifest") and len(expected) == 549


def test_published_config_parses_with_its_interpolation():
    cfg = parse_config(PUBLISHED_CONFIG)
    assert PUBLISHED_CONFIG["backbone"]["in_channels"] == "${tokenizer.num_channels}"
    assert cfg.backbone.in_channels == 1024 and cfg.backbone.inner_dim == 1024 and cfg.backbone.num_layers == 16
    assert cfg.cond_image_size == 512 and cfg.triplane_size == 64 and cfg.triplane_channels == 40
    assert cfg.vit["hidden_size"] == 768 and cfg.vit["num_hidden_layers"] == 12 and cfg.vit["patch_size"] == 16
    assert cfg.renderer.radius == 0.87 and cfg.renderer.density_activation == "exp"
    assert SOURCES[0].repo_id == "stabilityai/TripoSR" and SOURCES[0].licence == "MIT"


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.update(decoder_cls="tsr.models.network_utils.OtherMLP"), "decoder_cls"),
    (lambda c: c["decoder"].update(in_channels=121), "decoder.in_channels"),
    (lambda c: c["backbone"].update(in_channels="${tokenizer.nope}"), "tokenizer.nope"),
    (lambda c: c["renderer"].update(unknown_key=1), "renderer.unknown_key"),
    (lambda c: c["image_tokenizer"].update(pretrained_model_name_or_path="facebook/other"), "image_tokenizer"),
])
def test_bad_config_is_a_failed_precondition_naming_the_key(edit, field):
    raw = json.loads(json.dumps(PUBLISHED_CONFIG))
    edit(raw)
    with pytest.raises(FailedPrecondition) as err:
        parse_config(raw)
    assert field in (err.value.field or "")


def _bicubic_ramp(n_out: int, scale: float, side: int) -> np.ndarray:
    """Independent 1-D bicubic (Keys, a = -0.75, clamped borders, half-pixel centres) of the ramp 0..side-1."""
    def keys(t: float, a: float = -0.75) -> float:
        t = abs(t)
        return (a + 2) * t**3 - (a + 3) * t**2 + 1 if t <= 1 else (a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
                                                                      if t < 2 else 0.0)
    out = []
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        x0 = math.floor(src)
        out.append(sum(keys(src - k) * min(max(k, 0), side - 1) for k in range(x0 - 1, x0 + 3)))
    return np.array(out)


def test_legacy_position_interpolation_uses_the_training_era_scale():
    side, dim = 8, 2
    cols = torch.arange(side, dtype=torch.float32).repeat(side)  # the table's value is the column index
    table = torch.cat([torch.zeros(1), cols])[None, :, None].repeat(1, 1, dim)  # [1, 1 + 64, 2]
    out = legacy_interpolate_pos_encoding(table, 128, 128, 8)  # 8 x 8 -> 16 x 16
    assert out.shape == (1, 1 + 256, dim) and out[0, 0].abs().max() == 0  # the class token is kept
    row = out[0, 1:, 0].reshape(16, 16)[5].numpy()
    legacy = _bicubic_ramp(16, (16 + 0.1) / side, side)  # transformers 4.x: scale_factor (n + 0.1) / side
    exact_size = _bicubic_ramp(16, 16 / side, side)  # newer transformers: size=(16, 16)
    assert np.abs(row - legacy).max() < 1e-4 and np.abs(row - exact_size).max() > 0.02
    assert legacy_interpolate_pos_encoding(table, 64, 64, 8) is table  # same grid: unchanged


# ----------------------------------------------------------------------------- checkpoint checks


def test_tampered_checkpoint_is_rejected_naming_the_keys(tiny_dir, tmp_path):
    root = tmp_path / NAME
    shutil.copytree(tiny_dir / NAME, root)
    state = torch.load(root / "model.ckpt", weights_only=True)
    del state["decoder.layers.0.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["tokenizer.embeddings"] = torch.zeros(3, 32, 5, 5)
    torch.save(state, root / "model.ckpt")
    with pytest.raises(checkpoint.CheckpointMismatch) as err:
        TripoSRBackend(model_dir=tmp_path, device="cpu").load()
    message = str(err.value)
    for key in ("decoder.layers.0.bias", "decoder.extra.weight", "tokenizer.embeddings [3, 32, 5, 5]"):
        assert key in message
    assert isinstance(err.value, FailedPrecondition) and err.value.field == "model.ckpt"


def test_checkpoint_manifest_round_trip(tiny_dir, tmp_path):
    ckpt = tiny_dir / NAME / "model.ckpt"
    manifest = checkpoint.checkpoint_manifest(ckpt)
    out = tmp_path / "manifest.json"
    checkpoint.write_manifest(manifest, out)
    shapes = checkpoint.read_manifest(out)
    config = parse_config(yaml.safe_load(tiny_config_yaml()))
    assert shapes == checkpoint.implied_shapes(config)
    assert any(k.startswith("image_tokenizer.model.encoder.layer.1.attention.attention.") for k in shapes)
    checkpoint.verify_state(checkpoint.read_checkpoint(ckpt), shapes, "tiny")
    with pytest.raises(checkpoint.CheckpointMismatch, match="wrong shape"):
        checkpoint.verify_state(checkpoint.read_checkpoint(ckpt), {**shapes, "decoder.layers.0.bias": (99,)}, "tiny")


# ----------------------------------------------------------------------------- conversion, known answers


def _sphere_field(center_n: tuple[float, float, float], radius_n: float, rgb_logits=(2.0, -2.0, 0.0)):
    """A model whose decoder, on a hand-made triplane, has density 25 exp(20 (R^2 - |u - c|^2)) in the
    coordinates u = p / 0.87 (so exactly the threshold 25 on the sphere) and a constant colour."""
    raw = yaml.safe_load(tiny_config_yaml())
    raw["decoder"].update(n_neurons=4, n_hidden_layers=1, activation="relu")
    torch.manual_seed(0)
    model = TripoSRModel(parse_config(raw)).eval()
    res, k = 64, 20.0
    g = -1.0 + (2.0 * torch.arange(res) + 1.0) / res  # texel centres in grid_sample coordinates
    rows, cols = torch.meshgrid(g, g, indexing="ij")  # plane[i, j] is sampled at (x = g[j], y = g[i])
    planes = torch.zeros(3, 8, res, res)
    planes[0, 0] = (cols - center_n[0]) ** 2 + (rows - center_n[1]) ** 2  # plane (x, y)
    planes[1, 1] = (rows - center_n[2]) ** 2  # plane (x, z): z along the rows
    with torch.no_grad():
        first, last = model.decoder.layers[0], model.decoder.layers[2]
        first.weight.zero_(), first.bias.zero_(), last.weight.zero_()
        first.weight[0, 0] = first.weight[0, 8 + 1] = 1.0  # hidden 0 = |u - c|^2 (concat: plane-major)
        last.weight[0, 0] = -k
        last.bias.copy_(torch.tensor([k * radius_n**2 + 1.0 + math.log(25.0), *rgb_logits]))
    return lambda p: model.query(planes, p)


def test_sphere_density_becomes_gaussians_on_the_sphere_with_its_colour():
    r, center, radius = 0.87, np.array([0.1, -0.05, 0.2]), 0.45
    query = _sphere_field(tuple(center / r), radius / r)
    res = 40
    h = 2 * r / res
    solid = triplane_to_gaussians(query, r, GridOptions(res, 25.0, 0, 0.6, False, 4096), 10**6,
                                  torch.Generator().manual_seed(0))
    dist = np.linalg.norm(solid.means - center, axis=1)
    volume_cells = 4 / 3 * math.pi * radius**3 / h**3
    assert abs(len(dist) / volume_cells - 1) < 0.05  # every cell inside, none outside
    assert dist.max() <= radius + 1e-3 and np.allclose(solid.means.mean(axis=0), center, atol=0.01)
    sig = 1 / (1 + np.exp(-np.array([2.0, -2.0, 0.0])))
    assert np.allclose(solid.colors, sig, atol=1e-5) and solid.sigma == pytest.approx(0.6 * h)
    # Opacity is a cell's alpha under TripoSR's rendering: 1 - exp(-sigma h / (2 r)).
    u = (solid.means - center) / r
    sigma = 25 * np.exp(20 * ((radius / r) ** 2 - (u**2).sum(axis=1)))
    expect = np.clip(-np.expm1(-sigma * h / (2 * r)), 1e-3, 0.999)
    assert np.abs(solid.opacities - expect).max() < 0.02

    shell = triplane_to_gaussians(query, r, GridOptions(res, 25.0, 2, 0.6, False, 4096), 10**6,
                                  torch.Generator().manual_seed(0))
    ds = np.linalg.norm(shell.means - center, axis=1)
    assert len(ds) < 0.75 * len(dist) and ds.max() <= radius + 1e-3  # the hidden core is dropped:
    assert ds.min() > radius - 2 * math.sqrt(3) * h - h and (dist < radius - 2 * math.sqrt(3) * h - h).sum() > 300
    capped = triplane_to_gaussians(query, r, GridOptions(res, 25.0, 2, 0.6, True, 4096), 500,
                                   torch.Generator().manual_seed(3))
    dc = np.linalg.norm(capped.means - center, axis=1)
    assert len(dc) == 500 and dc.min() > radius - 1.5 * math.sqrt(3) * h  # the outer layer goes first


def _blobs() -> ObjectGaussians:
    """Four coloured blobs in TripoSR's frame: front (+x) blue, right (+y) red, up (+z) green, back yellow."""
    means = np.array([[0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3], [-0.3, 0, 0]], np.float32)
    colors = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    return ObjectGaussians(means, 0.07, np.full(4, 0.99, np.float32), colors, {})


def test_placement_turns_triposr_axes_into_the_project_frame():
    camera = orbit_camera(0.0, 0.0, 2.7, width=96, height=96)
    crop = Crop(8, 8, 80)
    placement = placement_for_crop(camera, crop, 2.7)
    # TripoSR front (+x) -> towards the az-0 camera (+z); right (+y) -> +x; up (+z) -> +y.
    assert np.allclose(placement.rotation, [[0, 1, 0], [0, 0, 1], [1, 0, 0]], atol=1e-9)
    assert np.allclose(placement.translation, 0.0, atol=1e-9)
    focal_t = 0.5 / math.tan(math.radians(20))
    assert placement.scale == pytest.approx(80 * focal_t * 2.7 / (1.9 * camera.fx))
    splat = to_splat(_blobs(), placement)
    rgb = rasterize(splat, camera, background=(1, 1, 1)).rgb.numpy()

    def centroid(colour):
        hit = np.linalg.norm(rgb - np.array(colour), axis=-1) < 0.35
        assert hit.sum() > 10, colour
        rows, cols = np.nonzero(hit)
        return rows.mean(), cols.mean()

    red, green, blue = centroid([1, 0, 0]), centroid([0, 1, 0]), centroid([0, 0, 1])
    assert red[1] > 60 and abs(red[0] - 48) < 3  # right of the centre
    assert green[0] < 36 and abs(green[1] - 48) < 3  # above it
    assert abs(blue[0] - 48) < 3 and abs(blue[1] - 48) < 3  # in front, hiding the yellow back blob
    assert (np.linalg.norm(rgb - [1, 1, 0], axis=-1) < 0.35).sum() == 0
    # The photo's crop shows what TripoSR's own canonical camera sees of the same object.
    object_splat = Splat.from_colors(_blobs().means, _blobs().colors, 0.07, 0.99)
    seen = rasterize(object_splat, triposr_camera(80), background=(1, 1, 1))
    photo = rasterize(splat, camera, background=(1, 1, 1))
    a, b = seen.alpha.numpy() > 0.5, photo.alpha.numpy()[8:88, 8:88] > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.9
    assert np.abs(seen.rgb.numpy() - photo.rgb.numpy()[8:88, 8:88]).mean() < 0.03


def test_placement_reprojects_off_centre_crops_for_any_camera():
    camera = orbit_camera(35.0, 20.0, 3.1, width=200, height=150, fov_y_deg=50.0)
    crop = Crop(top=10, left=110, size=60)  # right of the principal point, partly above it
    placement = placement_for_crop(camera, crop, float(camera.translation[2]))
    rng = np.random.default_rng(0)
    pts = np.concatenate([np.zeros((40, 1)), rng.uniform(-0.4, 0.4, (40, 2))], axis=1)  # TripoSR centre plane
    uv_t, _ = triposr_camera(crop.size).project(pts)
    expected = uv_t + np.array([crop.left, crop.top])  # crop pixels -> photo pixels
    uv, z = camera.project(placement.apply(pts))
    err = np.linalg.norm(uv - expected, axis=1)
    near = np.abs(pts).max(axis=1) < 0.15
    # ~18 degrees off axis: exact at the centre, a few percent (second order) at the object's edges.
    assert (z > 0).all() and err.max() < 0.05 * crop.size and err[near].max() < 0.01 * crop.size
    centre_uv, _ = camera.project(placement.apply(np.zeros((1, 3))))
    assert np.allclose(centre_uv[0], crop.center_uv, atol=1e-6)


def test_foreground_crop_and_grey_conditioning_image():
    image = np.zeros((64, 80, 3), np.float32)
    image[10:30, 40:50] = (0.2, 0.4, 0.6)
    mask = np.zeros((64, 80), np.float32)
    mask[10:30, 40:50] = 1.0
    crop = foreground_crop(mask, 0.85)
    assert crop == Crop(top=9, left=34, size=23)  # 20 px tall -> int(20 / 0.85), centred on the box
    cond = conditioning_image(image, mask, crop, 23)
    assert np.allclose(cond[1:21, 6:16], (0.2, 0.4, 0.6)) and np.allclose(cond[0], 0.5)
    assert np.allclose(cond[:, :6], 0.5) and np.allclose(cond[:, 16:], 0.5)
    edge = foreground_crop(mask[:, 35:], 0.5)  # the square leaves the photo: grey padding
    assert edge.left < 0 and np.allclose(conditioning_image(image[:, 35:], mask[:, 35:], edge, 40)[:, :3], 0.5)
    assert conditioning_image(image, mask, crop, 64).shape == (64, 64, 3)
    with pytest.raises(InvalidInput):
        foreground_crop(np.zeros((8, 8), np.float32))


# ----------------------------------------------------------------------------- the backend


def test_backend_is_deterministic_per_seed(backend, scene):
    image, depth, alpha, camera = scene
    a = backend.reconstruct(image, depth, alpha, camera, seed=0)
    b = backend.reconstruct(image, depth, alpha, camera, seed=0)
    c = backend.reconstruct(image, depth, alpha, camera, seed=1)
    assert a.splat.allclose(b.splat, atol=0)
    assert a.splat.num_gaussians != c.splat.num_gaussians or not a.splat.allclose(c.splat, atol=1e-3)
    s = a.splat
    assert 0 < s.num_gaussians <= 4000 and s.means.dtype == np.float32 and s.sh.shape == (s.num_gaussians, 1, 3)
    assert ((s.opacities > 0) & (s.opacities < 1)).all() and ((s.base_colors >= 0) & (s.base_colors <= 1)).all()
    assert np.abs(s.means).max() < 1.6  # the 0.87 cube scaled to the photo's object size, at the origin
    assert math.isfinite(a.metrics["input_view_psnr_db"]) and a.metrics["grid_resolution"] == GRID
    small = backend.reconstruct(image, depth, alpha, camera, max_gaussians=300, fit_steps=3)
    assert small.splat.num_gaussians == 300 and small.metrics["fit_steps"] == 3
    views = backend.render(small.splat, [orbit_camera(90.0, 10.0, 2.7, width=40, height=32)], (1, 1, 1))
    assert views[0].rgb.shape == (32, 40, 3) and views[0].alpha.max() > 0.1


def test_registry_makes_an_unloaded_backend(tiny_dir):
    made = make_backend("triposr", model_dir=tiny_dir, device="cpu", grid_resolution=16)
    assert isinstance(made, TripoSRBackend) and not made.ready


@pytest.mark.parametrize(("bad", "field"), [
    ({"grid_resolution": 4}, "grid_resolution"), ({"density_threshold": -1.0}, "density_threshold"),
    ({"dtype": "float64"}, "dtype"), ({"jitter": 1}, "jitter"), ({"device": "tpu"}, "device"),
    ({"foreground_ratio": 2.0}, "foreground_ratio"),
])
def test_bad_options_name_the_field(tiny_dir, bad, field):
    with pytest.raises(InvalidInput) as err:
        TripoSRBackend(model_dir=tiny_dir, **bad)
    assert err.value.field == field


def test_camera_at_the_origin_uses_the_depth_for_the_object_distance(backend, scene):
    image, depth, alpha, _ = scene
    orbit = orbit_camera(0, 0, 2.7, width=SIZE, height=SIZE)
    camera = Camera(orbit.fx, orbit.fy, orbit.cx, orbit.cy, SIZE, SIZE)  # identity extrinsics
    result = backend.reconstruct(image, depth, alpha, camera, max_gaussians=500)
    centre = result.splat.means.mean(axis=0)
    inside = depth[alpha > 0.5]
    assert abs(centre[2] - np.median(inside)) < 0.5  # identity extrinsics: the object sits at the photo's depth
