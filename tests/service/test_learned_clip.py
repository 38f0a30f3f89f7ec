"""MVCRM's CLIP check on tiny random CLIP checkpoints written in the published layout.

The tiny models' embeddings are meaningless, but every loading, preprocessing and scoring path is
the production one, and the answers checked here do not depend on what the model learned: an image
scores exactly 1 against itself (in any dtype), the score is symmetric, and a round whose score is
below the threshold is rejected with the score and threshold in its report.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from service_harness import run_service

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import read_ply, splat_to_ply_bytes
from glimpse3d.core.images import decode_npy, encode_png
from glimpse3d.core.models import ModelMissing
from glimpse3d.core.rpc.errors import status_code_for
from glimpse3d.core.service import ServiceSettings
from glimpse3d.core.synthetic import render_image, textured_object
from glimpse3d.services.backprojection.api import DEFAULT_CLIP_THRESHOLD, DEFAULT_STEPS, RefineOptions, make_backend
from glimpse3d.services.backprojection.backends.mvcrm import MVCRMBackend
from glimpse3d.services.backprojection.clip import ClipImageScorer, clip_model_path, to_uint8
from glimpse3d.services.backprojection.tiny import write_tiny_models
from glimpse3d.services.backprojection.weights import CLIP_BASE, CLIP_LARGE, MODELS
from glimpse3d.v1 import backprojection_pb2

SIZE = 48


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert write_tiny_models(root, seed=0) == [CLIP_BASE, CLIP_LARGE]
    return root


@pytest.fixture(scope="module")
def scorer(model_dir) -> ClipImageScorer:
    s = ClipImageScorer(model_dir, CLIP_BASE, device="cpu")
    s.load()
    return s


@pytest.fixture(scope="module")
def scene():
    """(splat, camera, view [H, W, 3] float32 of the splat, unrelated image: uniform noise)."""
    splat = textured_object(seed=0, n=600)
    camera = orbit_camera(0.0, 10.0, 2.7, width=SIZE, height=SIZE)
    view = render_image(splat, camera, background=(1.0, 1.0, 1.0)).astype(np.float32) / 255.0
    noise = np.random.default_rng(3).random((SIZE, SIZE, 3)).astype(np.float32)
    return splat, camera, view, noise


def test_tiny_models_have_the_published_layout_and_load_their_own_weights(model_dir, scorer) -> None:
    for source in MODELS:
        root = clip_model_path(model_dir, source.name)
        assert sorted(p.name for p in root.iterdir()) == sorted(source.files), source.name
    # The pickle checkpoint (as openai/clip-vit-base-patch32 publishes it) was read, not a fresh random init.
    saved = torch.load(model_dir / CLIP_BASE / "pytorch_model.bin", weights_only=True)
    loaded = scorer._model.state_dict()
    assert set(saved) == set(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)
    large = ClipImageScorer(model_dir, CLIP_LARGE, device="cpu")
    large.load()
    saved = load_file(model_dir / CLIP_LARGE / "model.safetensors")
    assert all(torch.equal(saved[k], large._model.state_dict()[k]) for k in saved)
    assert large._model.config.vision_config.patch_size == 14 and large.ready


def test_float_images_are_quantised_not_rescaled_twice(scene, scorer) -> None:
    assert to_uint8(np.array([[[0.0, 0.5, 1.0]]], np.float32), "a").tolist() == [[[0, 128, 255]]]
    assert to_uint8(np.array([[[-0.2, 0.999, 1.3]]]), "a").tolist() == [[[0, 255, 255]]]
    _, _, view, noise = scene
    as_bytes = (np.rint(view * 255)).astype(np.uint8)
    # A float view and its uint8 copy are the same picture: score 1 (a float input divided by 255 by
    # the processor would be nearly black and score well below 1).
    assert scorer.score(view, as_bytes) == pytest.approx(1.0, abs=1e-5)
    assert scorer.score(view, view) == pytest.approx(1.0, abs=1e-5)
    assert scorer.score(view, noise) == pytest.approx(scorer.score(noise, view), abs=1e-6)
    assert scorer.score(view, noise) < 0.99
    embeddings = scorer.embed([view, noise, view[:, ::-1]])
    assert embeddings.shape == (3, 16) and embeddings.dtype == np.float32
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_score_is_deterministic_and_depends_on_the_weights(model_dir, scene, scorer, tmp_path) -> None:
    _, _, view, noise = scene
    assert scorer.score(view, noise) == scorer.score(view, noise)
    write_tiny_models(tmp_path, seed=1)
    other = ClipImageScorer(tmp_path, CLIP_BASE, device="cpu")
    other.load()
    assert abs(other.score(view, noise) - scorer.score(view, noise)) > 1e-4
    assert other.score(view, view) == pytest.approx(1.0, abs=1e-5)


def test_round_below_the_threshold_is_rejected_with_the_reason(model_dir, scene, scorer) -> None:
    splat, camera, view, noise = scene
    backend = MVCRMBackend(model_dir=model_dir, clip_model=CLIP_BASE, clip_threshold=0.99)
    backend.load()
    expected = scorer.score(view, noise)
    assert 0.05 < expected < 0.99
    drifted = backend.refine(splat, view, camera, reference=noise)  # options=None: the backend's defaults
    r = drifted.report
    assert r.rejected and r.steps == 0 and drifted.splat is splat and r.clip_score == pytest.approx(expected, abs=1e-6)
    assert f"{expected:.3f}" in r.clip_note and "threshold 0.990" in r.clip_note and CLIP_BASE in r.clip_note
    assert "reference photo" in r.clip_note and "below the threshold" in r.clip_note
    assert np.array_equal(drifted.confidence, np.zeros(splat.num_gaussians, np.float32))
    low = backend.refine(splat, view, camera, options=RefineOptions(steps=2, clip_threshold=0.05), reference=noise)
    assert not low.report.rejected and low.report.steps == 2 and "passes the threshold 0.050" in low.report.clip_note
    assert low.report.clip_score == pytest.approx(expected, abs=1e-6) and low.confidence.max() > 0
    same = backend.refine(splat, view, camera, options=RefineOptions(steps=2, clip_threshold=0.99), reference=view)
    assert not same.report.rejected and same.report.clip_score == pytest.approx(1.0, abs=1e-5)
    # Without a reference the view is compared with the render of the splat it came from.
    own = backend.refine(splat, view, camera, options=RefineOptions(steps=2, clip_threshold=0.9))
    assert "rendered view" in own.report.clip_note and own.report.clip_score > 0.99


def test_clip_check_option_and_proto_defaults(model_dir, scene) -> None:
    splat, camera, view, noise = scene
    off = MVCRMBackend(model_dir=model_dir, clip_model=CLIP_BASE, clip_check=False, clip_threshold=0.5)
    off.load()
    # clip_check is optional in the proto: unset = the service's default, set = the caller's choice.
    unset = RefineOptions.from_proto(backprojection_pb2.RefineOptions(steps=2), off.defaults)
    skipped = off.refine(splat, view, camera, options=unset, reference=noise)
    assert skipped.report.clip_score is None and "clip_check is off" in skipped.report.clip_note
    assert not skipped.report.rejected and skipped.report.steps == 2
    bare = RefineOptions.from_proto(backprojection_pb2.RefineOptions(seed=4), off.defaults)
    assert (bare.clip_check, bare.clip_threshold, bare.seed, bare.steps) == (False, 0.5, 4, DEFAULT_STEPS)
    message = backprojection_pb2.RefineOptions(clip_check=True, clip_threshold=0.25)
    asked = RefineOptions.from_proto(message, off.defaults)
    assert (asked.clip_check, asked.clip_threshold) == (True, 0.25)
    on = MVCRMBackend(model_dir=model_dir, clip_model=CLIP_BASE)
    assert RefineOptions.from_proto(backprojection_pb2.RefineOptions(), on.defaults).clip_check is True
    assert on.defaults.clip_threshold == DEFAULT_CLIP_THRESHOLD
    # An explicit false turns the check off on a service that checks by default.
    declined = RefineOptions.from_proto(backprojection_pb2.RefineOptions(clip_check=False), on.defaults)
    assert declined.clip_check is False
    # Without backend defaults the bare proto means what it says: no check.
    assert RefineOptions.from_proto(backprojection_pb2.RefineOptions()).clip_check is False


def test_a_model_without_weights_names_the_weight_file(model_dir, tmp_path) -> None:
    partial = tmp_path / CLIP_BASE
    partial.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        (partial / name).write_bytes((model_dir / CLIP_BASE / name).read_bytes())
    with pytest.raises(ModelMissing) as info:
        ClipImageScorer(tmp_path, CLIP_BASE, device="cpu").load()
    assert "pytorch_model.bin" in info.value.message and "make models" in info.value.message


@pytest.mark.parametrize(("name", "weights"), [(CLIP_BASE, "pytorch_model.bin"), (CLIP_LARGE, "model.safetensors")])
def test_truncated_weights_are_model_missing(model_dir, tmp_path, name, weights) -> None:
    broken = tmp_path / name / weights
    broken.parent.mkdir(parents=True)
    for config in ("config.json", "preprocessor_config.json"):
        (broken.parent / config).write_bytes((model_dir / name / config).read_bytes())
    broken.write_bytes((model_dir / name / weights).read_bytes()[:1000])  # a truncated download
    with pytest.raises(ModelMissing) as info:
        ClipImageScorer(tmp_path, name, device="cpu").load()
    assert "cannot be read" in info.value.message and "make models" in info.value.message


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"clip_threshold": 1.5}, "clip_threshold"),
        ({"clip_threshold": "high"}, "clip_threshold"),
        ({"clip_threshold": True}, "clip_threshold"),
        ({"clip_check": "yes"}, "clip_check"),
        ({"clip_model": "clip-vit-base-patch32"}, "clip_model"),
        ({"clip_model": "clip/../x"}, "clip_model"),
        ({"clip_model": 3}, "clip_model"),
        ({"clip_model": CLIP_BASE, "clip_dtype": "float64"}, "clip_dtype"),
        ({"clip_model": CLIP_BASE, "device": "tpu"}, "device"),
        ({"clip_model": CLIP_BASE, "clip": ClipImageScorer()}, "clip_model"),
    ],
)
def test_bad_options_are_invalid_input(options, field) -> None:
    with pytest.raises(InvalidInput) as info:
        make_backend("mvcrm", **options)
    assert info.value.field == field, info.value.message


def _put(store: FileArtifactStore, data: bytes, media: str):
    return convert.artifact_to_proto(store.put(data, media))


def test_grpc_service_with_backend_options(model_dir, scene, tmp_path) -> None:
    splat, camera, view, noise = scene
    store = FileArtifactStore(tmp_path / "artifacts")
    splat_ref = _put(store, splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply")
    view_ref = _put(store, encode_png(view), "image/png")
    noise_ref = _put(store, encode_png(noise), "image/png")
    cam = convert.camera_to_proto(camera)

    def request(reference, **options) -> backprojection_pb2.RefineRequest:
        return backprojection_pb2.RefineRequest(splat=splat_ref, view=view_ref, camera=cam, reference=reference,
                                                options=backprojection_pb2.RefineOptions(steps=2, **options))

    async def checked(stub) -> None:
        # clip_check left unset: this service checks every round, at its own threshold 0.99.
        drift = (await stub.Refine(request(noise_ref))).report
        assert drift.rejected and drift.HasField("clip_score") and drift.clip_score < 0.99
        assert "0.990" in drift.clip_note and f"{drift.clip_score:.3f}" in drift.clip_note and drift.steps == 0
        low = (await stub.Refine(request(noise_ref, clip_threshold=0.05))).report
        assert not low.rejected and low.steps == 2 and low.clip_score == pytest.approx(drift.clip_score, abs=1e-6)
        declined = (await stub.Refine(request(noise_ref, clip_check=False))).report
        assert not declined.rejected and not declined.HasField("clip_score") and declined.steps == 2
        same = await stub.Refine(request(view_ref))
        assert not same.report.rejected and same.report.clip_score == pytest.approx(1.0, abs=1e-4)
        refined = read_ply(store.get(convert.artifact_from_proto(same.splat)))
        assert refined.num_gaussians == splat.num_gaussians
        conf = decode_npy(store.get(convert.artifact_from_proto(same.confidence)), field="confidence")
        assert conf.shape == (splat.num_gaussians,) and conf.max() > 0

    options = {"clip_model": CLIP_BASE, "clip_threshold": 0.99}
    settings = ServiceSettings(backend="mvcrm", model_dir=model_dir, device="cpu", backend_options=json.dumps(options))
    run_service("backprojection", store, checked, settings=settings)

    async def opt_in(stub) -> None:
        unset = (await stub.Refine(request(noise_ref))).report
        assert not unset.HasField("clip_score") and "clip_check is off" in unset.clip_note and not unset.rejected
        asked = (await stub.Refine(request(noise_ref, clip_check=True))).report
        assert asked.HasField("clip_score") and asked.rejected and "0.990" in asked.clip_note

    options["clip_check"] = False
    settings = ServiceSettings(backend="mvcrm", model_dir=model_dir, device="cpu", backend_options=json.dumps(options))
    run_service("backprojection", store, opt_in, settings=settings)


def test_grpc_service_without_weights_fails_at_startup(tmp_path) -> None:
    settings = ServiceSettings(backend="mvcrm", model_dir=tmp_path, device="cpu",
                               backend_options=json.dumps({"clip_model": CLIP_BASE}))

    async def never(stub) -> None:  # pragma: no cover - the service must not start
        raise AssertionError("service started without its CLIP model")

    with pytest.raises(ModelMissing) as info:
        run_service("backprojection", FileArtifactStore(tmp_path / "a"), never, settings=settings)
    assert "make models" in info.value.message and status_code_for(info.value) == grpc.StatusCode.FAILED_PRECONDITION
