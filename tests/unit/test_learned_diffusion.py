"""The learned ``sdxl`` diffusion backend on tiny random models (diffusers' dummy-component sizes).

Known-answer tests cover what the project adds around the diffusers pipeline: the depth -> control
image conversion (disparity, near = bright, background black), the working canvas (scale, pad,
restore the exact size) and the compositing. The backend tests load the tiny models through the real
loading code and check determinism per seed, what each request parameter and option does, the
strength-0 shortcut, per-step cancellation, missing models and bad options. Lifecycle, option refusal
and serving over gRPC: tests/unit/test_contract_diffusion.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from glimpse3d.core.cancel import cancel_scope
from glimpse3d.core.errors import Cancelled, FailedPrecondition, InvalidInput
from glimpse3d.core.models import ModelMissing
from glimpse3d.services.diffusion.api import REGISTRY
from glimpse3d.services.diffusion.backends.sdxl import SDXLDiffusionBackend
from glimpse3d.services.diffusion.backends.sdxl import conditioning as cond
from glimpse3d.services.diffusion.backends.sdxl.backend import DEFAULT_PROMPT
from glimpse3d.services.diffusion.tiny import write_tiny_models
from glimpse3d.services.diffusion.weights import CONTROLNET_DEPTH, MODELS, SDXL_BASE, VAE_FP16_FIX

RES = 64  # working resolution for the tiny models (canvas multiple 4: VAE factor 2 x one UNet downsampling)
KW = dict(strength=0.6, steps=4, guidance=5.0, seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert write_tiny_models(root) == [SDXL_BASE, CONTROLNET_DEPTH, VAE_FP16_FIX]
    return root


@pytest.fixture(scope="module")
def backend(model_dir):
    b = SDXLDiffusionBackend(model_dir, "cpu", resolution=RES)
    b.load()
    return b


@pytest.fixture(scope="module")
def scene():
    """A 45 x 61 view (odd sizes: the canvas must pad and restore them) of a slanted box, near at the
    left, on a plain background; depth 0 and alpha 0 off the box."""
    h, w = 45, 61
    rng = np.random.default_rng(0)
    view = np.full((h, w, 3), 200, np.uint8)
    box = (slice(8, 38), slice(10, 52))
    view[box] = rng.integers(40, 160, (30, 42, 3), dtype=np.uint8)
    depth = np.zeros((h, w), np.float32)
    depth[box] = np.linspace(2.0, 3.0, 42, dtype=np.float32)[None, :]
    alpha = (depth > 0).astype(np.float32)
    return view, depth, alpha


def enhance(b, scene, **overrides):
    view, depth, alpha = scene
    args = {"depth": depth, "alpha": alpha, **KW, **overrides}
    return b.enhance(view, **args)


# --------------------------------------------------------------------------------------------- #
# Depth -> control image, canvas, compositing (known answers)
# --------------------------------------------------------------------------------------------- #


def test_control_is_normalised_disparity_near_bright_background_black():
    depth = np.zeros((20, 30), np.float32)
    depth[:, 0:10], depth[:, 10:20] = 2.0, 3.0  # near plane, middle plane; columns 20..29 background
    control = cond.depth_to_control(depth)
    assert control.dtype == np.float32 and control.shape == depth.shape
    np.testing.assert_allclose(control[:, 0:10], 1.0)  # nearest -> 1
    np.testing.assert_allclose(control[:, 20:], 0.0)  # background -> 0
    assert cond.FAR_LEVEL == pytest.approx(0.25)
    depth[:, 20:] = 4.0  # a far plane: the middle one now sits between in *inverse* depth
    control = cond.depth_to_control(depth)
    np.testing.assert_allclose(control[:, 20:], cond.FAR_LEVEL)
    # 1/3 lies a third of the way from 1/4 to 1/2, so z = 3 maps to 0.25 + 0.75 / 3 = 0.5, not to the
    # 0.625 that a map linear in depth would give.
    np.testing.assert_allclose(control[:, 10:20], 0.5, atol=1e-6)
    rgb = cond.control_rgb(control)
    assert rgb.shape == (20, 30, 3) and (rgb == control[:, :, None]).all()


def test_control_uses_coverage_and_ignores_stray_points():
    depth = np.full((40, 40), 2.0, np.float32)
    depth[:, 20:] = 2.5
    alpha = np.ones((40, 40), np.float32)
    alpha[0, :] = 0.5  # soft silhouette edge: half as bright
    alpha[1, :] = 0.0  # depth without coverage is background
    depth[39, 39] = 0.2  # one stray splat far in front of the object
    control = cond.depth_to_control(depth, alpha)
    np.testing.assert_allclose(control[5:, 0:20][:-1], 1.0)  # the stray point does not set the scale
    np.testing.assert_allclose(control[5:, 20:39], cond.FAR_LEVEL)
    assert control[39, 39] == 1.0  # clipped, not extrapolated
    np.testing.assert_allclose(control[0, 0:20], 0.5)
    assert (control[1] == 0).all()
    flat = cond.depth_to_control(np.full((8, 8), 3.0, np.float32))
    assert (flat == 1.0).all()  # one disparity: the whole object is "near"
    assert (cond.depth_to_control(np.zeros((8, 8), np.float32)) == 0).all()


@pytest.mark.parametrize(("hw", "resolution", "multiple", "scaled", "padded"), [
    ((480, 640), 1024, 32, (768, 1024), (768, 1024)),
    ((100, 50), 1024, 32, (1024, 512), (1024, 512)),
    ((333, 500), 1024, 32, (682, 1024), (704, 1024)),
    ((45, 61), 64, 4, (47, 64), (48, 64)),
    ((512, 512), 1024, 32, (1024, 1024), (1024, 1024)),
])
def test_working_geometry(hw, resolution, multiple, scaled, padded):
    g = cond.working_geometry(*hw, resolution, multiple)
    assert (g.height, g.width) == hw
    assert (g.scaled_height, g.scaled_width) == scaled
    assert (g.padded_height, g.padded_width) == padded
    assert g.padded_height % multiple == 0 and g.padded_width % multiple == 0


def test_canvas_pads_view_with_edges_and_control_with_black_and_restores_the_size(scene):
    view, depth, alpha = scene
    canvas = cond.prepare_canvas(view, depth, alpha, resolution=RES, multiple=4)
    g = canvas.geometry
    assert canvas.image.shape == (48, 64, 3) and canvas.image.dtype == np.uint8
    assert canvas.control.shape == (48, 64, 3) and canvas.control.dtype == np.float32
    assert (canvas.control[g.scaled_height:] == 0).all()  # padding rows are background
    assert (canvas.image[g.scaled_height:] == canvas.image[g.scaled_height - 1]).all()  # edge-replicated
    near = canvas.control[20, 14, 0]  # left of the box (z = 2) is brighter than the right (z = 3)
    assert near > 0.85 and 0.2 < canvas.control[20, 50, 0] < 0.35
    back = cond.from_working(canvas.image, g)
    assert back.shape == view.shape
    assert np.abs(back.astype(int) - view).mean() < 20  # a 45 -> 47 -> 45 px resample of a random texture
    identity = cond.working_geometry(48, 64, 64, 4)  # no scaling, no padding: exact round trip
    img = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert (cond.from_working(cond.to_working(img, identity, pad_edge=True), identity) == img).all()


def test_composite_keeps_background_exactly():
    view = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    enhanced = np.full((10, 12, 3), 0.5, np.float32)
    cover = np.zeros((10, 12), np.float32)
    cover[2:8, 3:9] = 1.0
    cover[2, 3] = 0.5
    out = cond.composite(view, enhanced, cover)
    assert (out[cover == 0] == view[cover == 0]).all()
    assert (out[3:8, 4:9] == 128).all()
    assert np.allclose(out[2, 3], (view[2, 3] + 127.5) / 2, atol=0.51)


# --------------------------------------------------------------------------------------------- #
# Tiny models and loading
# --------------------------------------------------------------------------------------------- #


def test_tiny_models_have_the_published_layout(model_dir):
    for source in MODELS:
        root = model_dir / source.name
        written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert written == sorted(source.files), source.name
    index = json.loads((model_dir / SDXL_BASE / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and "image_encoder" not in index


def test_loaded_pipeline_is_the_depth_controlnet_img2img_pipeline(backend):
    pipe = backend._pipe
    assert type(pipe).__name__ == "StableDiffusionXLControlNetImg2ImgPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert not pipe.vae.config.force_upcast  # already float32: nothing to upcast
    assert pipe.tokenizer("a photo of the object").input_ids[1:5] != pipe.tokenizer("zzz").input_ids[1:5]
    assert str(pipe.unet.dtype) == "torch.float32"  # fp16 files upcast on the CPU


def test_missing_models_are_named(tmp_path, model_dir):
    with pytest.raises(ModelMissing) as exc:
        SDXLDiffusionBackend(tmp_path, "cpu").load()
    assert isinstance(exc.value, FailedPrecondition) and SDXL_BASE in exc.value.message
    (tmp_path / "diffusion").mkdir()
    for name in (SDXL_BASE, CONTROLNET_DEPTH):  # no fp16-fix VAE, and the option asks for it
        (tmp_path / name).symlink_to(model_dir / name, target_is_directory=True)
    with pytest.raises(ModelMissing, match="sdxl-vae-fp16-fix"):
        SDXLDiffusionBackend(tmp_path, "cpu", vae="fp16-fix").load()


def test_corrupt_weights_fail_precondition(tmp_path, model_dir):
    shutil.copytree(model_dir / SDXL_BASE, tmp_path / SDXL_BASE)
    (tmp_path / CONTROLNET_DEPTH).symlink_to(model_dir / CONTROLNET_DEPTH, target_is_directory=True)
    weights = tmp_path / SDXL_BASE / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted download
    with pytest.raises(FailedPrecondition, match="make models") as exc:
        SDXLDiffusionBackend(tmp_path, "cpu").load()
    assert exc.value.field == "model_dir"


@pytest.mark.parametrize(("options", "field"), [
    ({"resolution": 100}, "resolution"),
    ({"resolution": 32}, "resolution"),
    ({"resolution": True}, "resolution"),
    ({"controlnet_scale": -0.5}, "controlnet_scale"),
    ({"controlnet_scale": float("nan")}, "controlnet_scale"),
    ({"vae": "tiny"}, "vae"),
    ({"dtype": "int8"}, "dtype"),
    ({"device": "tpu"}, "device"),
    ({"attention_slicing": "yes"}, "attention_slicing"),
    ({"cpu_offload": 1}, "cpu_offload"),
    ({"colour_transfer": None}, "colour_transfer"),
    ({"negative_prompt": 3}, "negative_prompt"),
    ({"default_prompt": "x" * 1001}, "default_prompt"),
])
def test_bad_options_are_invalid_input(options, field, model_dir):
    with pytest.raises(InvalidInput) as exc:
        REGISTRY.create("sdxl", context={"model_dir": model_dir, "device": "cpu"}, **options)
    assert exc.value.field == field


def test_cuda_requested_without_cuda_fails_precondition(model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(FailedPrecondition, match="CUDA"):
        SDXLDiffusionBackend(model_dir, "cuda").load()


# --------------------------------------------------------------------------------------------- #
# Enhancement
# --------------------------------------------------------------------------------------------- #


def test_output_size_dtype_determinism_and_seed(backend, scene):
    view, _, alpha = scene
    a = enhance(backend, scene)
    assert a.shape == view.shape and a.dtype == np.uint8
    assert (a == enhance(backend, scene)).all()  # same seed -> identical bytes
    b = enhance(backend, scene, seed=4)
    box = alpha > 0
    assert np.abs(a.astype(int) - b)[box].mean() > 2.0  # another seed, another result
    assert (a[~box] == view[~box]).all() and (b[~box] == view[~box]).all()  # background as given
    assert np.abs(a.astype(int) - view)[box].mean() > 5.0  # the object was actually regenerated
    big_seed = enhance(backend, scene, seed=2**64 - 1)
    assert big_seed.shape == view.shape


def count_steps(backend, monkeypatch) -> list[int]:
    """Record the scheduler steps the pipeline takes (the real step still runs)."""
    scheduler = backend._pipe.scheduler
    real_step, calls = scheduler.step, []

    def step(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(scheduler, "step", step)
    return calls


@pytest.mark.parametrize(("strength", "steps", "denoised"), [
    (0.0, 4, 0), (0.2, 4, 0), (0.25, 4, 1), (0.6, 4, 2), (0.5, 10, 5), (1.0, 3, 3),
])
def test_strength_sets_the_denoising_steps(backend, scene, monkeypatch, strength, steps, denoised):
    calls = count_steps(backend, monkeypatch)
    out = enhance(backend, scene, strength=strength, steps=steps)
    assert len(calls) == denoised  # int(steps * strength), as diffusers' img2img
    assert (out == scene[0]).all() == (denoised == 0)  # below one step: the view, bit for bit


def test_parameters_reach_the_pipeline(backend, scene):
    base = enhance(backend, scene)
    box = scene[2] > 0

    def moved(other):
        return np.abs(base.astype(int) - other)[box].mean()

    assert moved(enhance(backend, scene, steps=8)) > 1.0
    assert moved(enhance(backend, scene, guidance=1.0)) > 1.0  # classifier-free guidance off
    assert moved(enhance(backend, scene, prompt="a blurry render")) > 1.0
    assert (enhance(backend, scene, prompt=DEFAULT_PROMPT) == base).all()  # empty prompt = the default
    assert (enhance(backend, scene, prompt="   ") == base).all()
    view, depth, alpha = scene
    flipped = enhance(backend, (view, depth[:, ::-1].copy() * alpha, alpha))  # far side now on the left
    assert moved(flipped) > 0.2  # the depth condition reaches the UNet through the ControlNet
    no_depth = backend.enhance(view, depth=None, alpha=alpha, **KW)  # ControlNet off: plain img2img
    assert no_depth.shape == view.shape and moved(no_depth) > 0.2
    assert (no_depth[~box] == view[~box]).all()


def test_without_alpha_the_depth_is_the_coverage(backend, scene):
    view, depth, _ = scene
    out = backend.enhance(view, depth=depth, alpha=None, **KW)
    assert (out[depth == 0] == view[depth == 0]).all()
    assert (out == enhance(backend, scene)).all()  # alpha equal to depth > 0 changes nothing
    empty = backend.enhance(view, depth=np.zeros_like(depth), alpha=None, **KW)
    assert (empty == view).all()  # nothing covered, nothing to enhance


def test_each_step_checks_for_cancellation(backend, scene, monkeypatch):
    scheduler = backend._pipe.scheduler
    real_step = scheduler.step
    calls = []
    with cancel_scope() as event:

        def step(*args, **kwargs):
            calls.append(1)
            event.set()  # the client goes away during the first step
            return real_step(*args, **kwargs)

        monkeypatch.setattr(scheduler, "step", step)
        with pytest.raises(Cancelled):
            enhance(backend, scene, steps=8, strength=1.0)
    monkeypatch.undo()
    assert len(calls) == 1  # stopped right after the step in which it was cancelled
    assert enhance(backend, scene).shape == scene[0].shape  # and the backend still works


def test_reference_photo_guides_the_colour(backend, model_dir, scene):
    view, depth, alpha = scene
    photo = np.zeros((80, 80, 4), np.uint8)
    photo[:] = (230, 230, 230, 0)
    photo[15:65, 15:65] = (200, 40, 30, 255)  # a red object, its alpha saying where it is
    # (Without alpha, a random render whose colours are nowhere near the photo's is left as it is:
    # only view-to-photo colour pairs within the capture distance are trusted; see colour.py.)
    box = alpha > 0
    guided = backend.enhance(view, depth=depth, alpha=alpha, reference=photo, **KW)
    plain = SDXLDiffusionBackend(model_dir, "cpu", resolution=RES, colour_transfer=False)
    plain.load()
    unguided = plain.enhance(view, depth=depth, alpha=alpha, reference=photo, **KW)
    assert (unguided == enhance(backend, scene)).all()  # without the transfer the photo is unused

    def redness(img):
        return float(img[box][:, 0].astype(float).mean() - img[box][:, 1:].astype(float).mean())

    assert redness(guided) > redness(unguided) + 20
    assert (guided[~box] == view[~box]).all()


def test_memory_options_and_fp16_fix_vae_run_on_cpu(model_dir, backend, scene):
    base = enhance(backend, scene)
    sliced = SDXLDiffusionBackend(model_dir, "cpu", resolution=RES, attention_slicing=True, cpu_offload=True)
    sliced.load()  # cpu_offload is ignored on the CPU
    assert np.abs(enhance(sliced, scene).astype(int) - base).max() <= 1  # slicing does not change the maths
    fixed = SDXLDiffusionBackend(model_dir, "cpu", resolution=RES, vae="fp16-fix", vae_tiling=True)
    fixed.load()
    assert fixed._pipe.vae.use_tiling
    fix_weights, base_weights = (next(p.vae.parameters()) for p in (fixed._pipe, backend._pipe))
    assert fix_weights.shape == base_weights.shape and not (fix_weights == base_weights).all()  # the other VAE
    out = enhance(fixed, scene)
    assert out.shape == base.shape and np.abs(out.astype(int) - base)[scene[2] > 0].mean() > 1.0  # another VAE
