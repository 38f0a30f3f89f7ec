"""Every learned backend served by a real tritonserver (deploy/triton, CPU instances, tiny random
weights), called through the services' ``triton`` backends.

What the tests prove:
- each model in the repository loads and is ready, and each service registers a ``triton`` backend;
- the repository holds one bootstrap (``deploy/triton/model.py``) and each config names its handler;
  a config without the ``handler`` parameter fails to load, naming the model and the parameter;
- through Triton each model gives the same answer as the same backend in-process (same weights,
  same inputs, same seed), so the tensor contracts lose nothing;
- project errors raised inside Triton come back as the same error class (and so the same gRPC
  status); an unknown model or an unreachable server is UNAVAILABLE, quickly and by name;
- the whole pipeline runs with every service on its ``triton`` backend and the artifacts in a real
  S3 server, and Triton's own metrics count the calls each model received.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from minio import Minio
from PIL import Image
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (registers the s3_server fixture)
from triton_server import REPOSITORY, TEST_OPTIONS, require_triton, triton_for_tests

from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import FailedPrecondition, InvalidInput, Unavailable
from glimpse3d.core.formats import read_ply
from glimpse3d.core.triton.client import TritonModel, TritonOptions
from glimpse3d.core.triton.python_model import HANDLER_PARAMETER, Handler, TritonPythonModel, handler_class
from glimpse3d.core.triton.server import BOOTSTRAP, LocalTriton, free_port, prepare_repository
from glimpse3d.gateway import demo
from glimpse3d.gateway.stack import start_stack

MODELS = {  # Triton model -> (service, in-process backend)
    "depth_dpt": ("depth", "dpt"),
    "depth_matting": ("depth", "silhouette"),
    "reconstruction_triposr": ("reconstruction", "triposr"),
    "reconstruction_lgm": ("reconstruction", "lgm"),
    "multiview_zero123": ("multiview", "zero123"),
    "diffusion_sdxl": ("diffusion", "sdxl"),
    "backprojection_clip": ("backprojection", "mvcrm"),
}


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def triton(tmp_path_factory, tiny_models):
    with triton_for_tests(tmp_path_factory.mktemp("triton"), tiny_models) as server:
        yield server


def backend_registry(service: str) -> BackendRegistry:
    """The service's backends (its ``glimpse3d.backends.<service>`` entry points)."""
    return BackendRegistry(service)


def in_process(service: str, backend: str, model_dir: Path, **options):
    registry = backend_registry(service)
    made = registry.create(backend, context={"model_dir": model_dir, "device": "cpu"}, **options)
    made.load()
    return made


def via_triton(service: str, server, model: str, **options):
    made = backend_registry(service).create(
        "triton", url=server.url, model=model, ready_timeout_s=30.0, **options)
    made.load()
    return made


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, Camera]:
    img = np.asarray(Image.open(demo.SAMPLE).convert("RGB").resize((64, 64), Image.BILINEAR))
    return img, orbit_camera(0.0, 0.0, 2.5, width=64, height=64)


def test_repository_has_one_ready_model_per_learned_backend(triton):
    index = TritonModel("depth_dpt", TritonOptions(triton.url)).client.get_model_repository_index(as_json=True)
    states = {m["name"]: m.get("state") for m in index.get("models", [])}
    assert states == {name: "READY" for name in MODELS}
    for model, (service, _) in MODELS.items():
        source = (REPOSITORY / model / "config.pbtxt").read_text()
        assert "kind: KIND_GPU" in source and "backend_options" in source, model
        assert (triton.repository / model / "1" / BOOTSTRAP).read_bytes() == (REPOSITORY / BOOTSTRAP).read_bytes()
        assert "triton" in backend_registry(service).names(), service


_HANDLER_RE = re.compile(r'key:\s*"handler"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')
_HANDLER_PARAM_RE = re.compile(r'^parameters \{ key: "handler".*\n', re.M)


def test_repository_holds_one_bootstrap_and_each_config_names_its_handler():
    assert sorted(p.relative_to(REPOSITORY).as_posix() for p in REPOSITORY.rglob("*.py")) == [BOOTSTRAP]
    assert not list(REPOSITORY.glob("*/*/model.py")), "version directories hold no model.py: prepare_repository adds it"
    for model, (service, _) in MODELS.items():
        found = _HANDLER_RE.findall((REPOSITORY / model / "config.pbtxt").read_text())
        assert len(found) == 1, model
        assert found[0].startswith(f"glimpse3d.services.{service}."), (model, found)
        assert issubclass(handler_class(model, {HANDLER_PARAMETER: found[0]}), Handler)


def test_prepare_repository_puts_the_bootstrap_in_every_version(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "config.pbtxt").write_text('name: "a"\n')
    (src / "b" / "2").mkdir(parents=True)
    (src / "b" / "config.pbtxt").write_text('name: "b"\n')
    with pytest.raises(FailedPrecondition, match=BOOTSTRAP):
        prepare_repository(tmp_path / "dst", src=src)
    (src / BOOTSTRAP).write_text("# bootstrap\n")
    dst = prepare_repository(tmp_path / "dst", src=src)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.py")) == ["a/1/model.py", "b/2/model.py"]
    assert (dst / "a" / "1" / BOOTSTRAP).read_text() == "# bootstrap\n"
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "glimpse3d.core.triton.server", "--repository", str(REPOSITORY),
                    "--prepare", str(out)], check=True, capture_output=True, timeout=120)
    assert sorted(p.parent.parent.name for p in out.glob(f"*/1/{BOOTSTRAP}")) == sorted(MODELS)


@pytest.mark.parametrize("handler, message", [
    (None, "model depth_dpt: config.pbtxt has no 'handler' parameter"),
    ("", "model depth_dpt: config.pbtxt has no 'handler' parameter"),
    ("glimpse3d.services.depth.backends.triton.DepthHandler", "model depth_dpt: parameter 'handler' must be"),
    ("glimpse3d.services.no_such:Handler", "model depth_dpt: parameter 'handler' names .* cannot be imported"),
    ("glimpse3d.services.depth.backends.triton:NoSuchHandler", "model depth_dpt: parameter 'handler' names .* cannot"),
    ("glimpse3d.core.triton.python_model:require", "model depth_dpt: parameter 'handler' names .* not a .*Handler"),
])
def test_a_missing_or_bad_handler_parameter_names_the_model_and_the_parameter(handler, message):
    parameters = {"backend_options": {"string_value": "{}"}}
    if handler is not None:
        parameters[HANDLER_PARAMETER] = {"string_value": handler}
    config = {"name": "depth_dpt", "max_batch_size": 0, "parameters": parameters}
    with pytest.raises(InvalidInput, match=message) as err:
        TritonPythonModel().initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU"})
    assert err.value.field == HANDLER_PARAMETER


def test_triton_refuses_a_model_whose_config_names_no_handler(tmp_path, tiny_models):
    """End to end: the real Python backend loads the shared bootstrap and the model fails with the message."""
    require_triton(tmp_path)
    repo = prepare_repository(tmp_path / "repository", src=REPOSITORY, models=["depth_dpt"], cpu=True)
    config = repo / "depth_dpt" / "config.pbtxt"
    config.write_text(_HANDLER_PARAM_RE.sub("", config.read_text()))
    assert not _HANDLER_RE.search(config.read_text())
    server = LocalTriton(repo, tmp_path, tiny_models)
    try:
        with pytest.raises(Unavailable):
            server.start(120.0)
    finally:
        server.stop()
    assert "model depth_dpt: config.pbtxt has no 'handler' parameter" in server.log_path.read_text(errors="replace")


def test_depth_through_triton_equals_in_process(triton, tiny_models, photo):
    img, cam = photo
    remote = via_triton("depth", triton, "depth_dpt").estimate(img, cam)
    local = in_process("depth", "dpt", tiny_models).estimate(img, cam)
    np.testing.assert_allclose(remote.depth, local.depth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(remote.mask, local.mask, atol=1e-6)
    assert remote.depth.shape == (64, 64) and remote.depth.dtype == np.float32


def test_learned_matte_through_triton_equals_in_process(triton, tiny_models, photo):
    """depth_matting runs SAM 2 (tiny) with the user's points; the triton depth backend with matting_model
    hands that matte to depth_dpt, so its mask is the learned one."""
    img, cam = photo
    points = [(0.5, 0.5, True), (0.05, 0.05, False)]
    remote = via_triton("depth", triton, "depth_dpt", matting_model="depth_matting")
    local = in_process("depth", "silhouette", tiny_models, matting="matting/sam2.1-hiera-tiny")
    for pts in ((), points):
        np.testing.assert_allclose(remote.matte(img, pts), local.matte(img, pts), atol=1e-5)
    result = remote.estimate(img, cam)
    expected = np.round(np.clip(local.matte(img), 0, 1) * 255) / 255
    np.testing.assert_allclose(result.mask, expected, atol=1e-6)
    assert result.depth.shape == (64, 64) and (result.depth[result.mask >= 0.5] > 0).all()


def test_reconstruction_through_triton_equals_in_process(triton, tiny_models, photo):
    img, cam = photo
    depth = in_process("depth", "dpt", tiny_models).estimate(img, cam)
    remote = via_triton("reconstruction", triton, "reconstruction_triposr").reconstruct(
        img, depth.depth, depth.mask, cam, seed=7)
    local = in_process("reconstruction", "triposr", tiny_models,
                       **TEST_OPTIONS["reconstruction_triposr"]).reconstruct(img, depth.depth, depth.mask, cam, seed=7)
    assert remote.splat.num_gaussians == local.splat.num_gaussians > 0
    for attr in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_allclose(getattr(remote.splat, attr), getattr(local.splat, attr), rtol=1e-4, atol=1e-4)
    assert set(remote.metrics) == set(local.metrics) and "input_view_psnr_db" in remote.metrics


def test_multiview_through_triton_equals_in_process(triton, tiny_models, photo):
    img, cam = photo
    cameras = [orbit_camera(a, 10.0, 2.5, width=64, height=64) for a in (90.0, 180.0)]
    remote = via_triton("multiview", triton, "multiview_zero123").generate(img, None, cam, None, cameras, seed=3)
    local = in_process("multiview", "zero123", tiny_models, **TEST_OPTIONS["multiview_zero123"]).generate(
        img, None, cam, None, cameras, seed=3)
    assert len(remote) == len(local) == 2
    for r, loc in zip(remote, local, strict=True):
        assert r.rgb.dtype == np.uint8
        assert np.abs(r.rgb.astype(int) - loc.rgb.astype(int)).max() <= 1
        np.testing.assert_allclose(r.mask, loc.mask, atol=1e-4)


def test_diffusion_through_triton_equals_in_process(triton, tiny_models, photo):
    img, _ = photo
    depth = np.where(np.ones((64, 64), bool), 2.5, 0.0).astype(np.float32)
    kwargs = dict(depth=depth, alpha=None, reference=img, prompt="a toy", strength=0.6, steps=2, guidance=5.0,
                  seed=11)
    remote = via_triton("diffusion", triton, "diffusion_sdxl").enhance(img, **kwargs)
    local = in_process("diffusion", "sdxl", tiny_models, **TEST_OPTIONS["diffusion_sdxl"]).enhance(img, **kwargs)
    assert remote.shape == (64, 64, 3) and remote.dtype == np.uint8
    assert np.abs(remote.astype(int) - local.astype(int)).max() <= 1


def test_clip_check_through_triton_equals_in_process_also_under_concurrency(triton, tiny_models, photo):
    img, _ = photo
    other = np.ascontiguousarray(img[::-1, ::-1])
    backend = via_triton("backprojection", triton, "backprojection_clip")
    local = in_process("backprojection", "mvcrm", tiny_models, clip_model="clip/clip-vit-base-patch32").clip
    expected = local.score(img, other)
    assert backend.clip.score(img, other) == pytest.approx(expected, abs=1e-4)
    with ThreadPoolExecutor(8) as pool:  # concurrent checks: the dynamic batcher may gather them
        scores = list(pool.map(lambda _: backend.clip.score(img, other), range(16)))
    assert scores == pytest.approx([expected] * 16, abs=1e-4)
    assert backend.clip.score(img, img) == pytest.approx(1.0, abs=1e-4)


def test_clip_handler_batches_and_isolates_bad_requests(tiny_models, photo):
    """The server side of the dynamic batch: all valid pairs embedded together; a bad request fails
    alone."""
    from glimpse3d.services.backprojection.backends.triton import ClipHandler

    img, _ = photo
    handler = ClipHandler(tiny_models, "cpu", {})
    handler.load()
    out = handler.run_batch([{"IMAGE_A": img, "IMAGE_B": img}, {"IMAGE_A": img[..., :2], "IMAGE_B": img},
                             {"IMAGE_A": img, "IMAGE_B": img[::-1]}])
    assert isinstance(out[1], InvalidInput) and "IMAGE_A" in out[1].message
    assert out[0]["SCORE"][0] == pytest.approx(1.0, abs=1e-4)
    assert out[2]["SCORE"][0] == pytest.approx(handler.backend.score(img, img[::-1]), abs=1e-4)


def test_errors_cross_triton_with_their_class(triton, photo):
    img, cam = photo
    depth = via_triton("depth", triton, "depth_dpt")
    with pytest.raises(InvalidInput, match="64x64 but the image is 64x10"):
        depth.estimate(img[:10], cam)
    with pytest.raises(InvalidInput, match="CAMERA"):
        depth.triton.infer({"IMAGE": img, "CAMERA": np.zeros(22)[:5]}, ["DEPTH"])
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no_such_model"):
        TritonModel("no_such_model", TritonOptions(triton.url, retry_s=0.5, ready_timeout_s=1.0)).wait_ready()
    assert time.monotonic() - started < 10


def test_unreachable_server_is_unavailable_by_name():
    url = f"127.0.0.1:{free_port()}"
    backend = backend_registry("depth").create("triton", url=url, ready_timeout_s=0.5)
    assert backend.ready is False
    with pytest.raises(Unavailable, match=f"depth_dpt.*{url}"):
        backend.load()
    assert backend.ready is False
    model = TritonModel("depth_dpt", TritonOptions(url, retry_s=0.3))
    model.max_batch_size = 0  # as if it had been ready once
    with pytest.raises(Unavailable, match=url):
        model.infer({"IMAGE": np.zeros((4, 4, 3), np.uint8)}, ["DEPTH"])


@pytest.mark.parametrize("bad", [{"url": "no-port"}, {"url": "http://host:8001"}, {"timeout_s": 0},
                                 {"retry_s": -1}, {"model": "../x"}])
def test_bad_triton_options_name_the_field(bad):
    with pytest.raises(InvalidInput) as err:
        backend_registry("depth").create("triton", **bad)
    assert err.value.field == next(iter(bad))


def _metric_counts(server) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("nv_inference_count{"):
            model = line.split('model="', 1)[1].split('"', 1)[0]
            counts[model] = float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.parametrize("reconstruction", ["triposr", "lgm"])
def test_pipeline_with_every_service_on_triton_and_artifacts_in_s3(triton, tiny_models, s3_server: S3Server,
                                                                   tmp_path, reconstruction):
    def backend(model: str, **options: object) -> dict[str, str]:
        return {"GLIMPSE3D_BACKEND": "triton",
                "GLIMPSE3D_BACKEND_OPTIONS": json.dumps({"url": triton.url, "model": model, **options})}

    bucket = f"triton-{reconstruction}"
    env = {"GLIMPSE3D_ARTIFACTS_URL": f"s3://{bucket}/glimpse3d", "GLIMPSE3D_S3_ENDPOINT": s3_server.url,
           "GLIMPSE3D_S3_ACCESS_KEY": s3_server.access_key, "GLIMPSE3D_S3_SECRET_KEY": s3_server.secret_key,
           "GLIMPSE3D_MODEL_DIR": str(tmp_path / "no-models-here"), "GLIMPSE3D_DEVICE": "cpu",
           "GLIMPSE3D_RECONSTRUCTION_VIEWS": "3" if reconstruction == "lgm" else "0"}
    service_env = {
        "depth": backend("depth_dpt", matting_model="depth_matting"),
        "reconstruction": backend(f"reconstruction_{reconstruction}"),
        "multiview": backend("multiview_zero123"),
        "diffusion": backend("diffusion_sdxl"),
        # Tiny random CLIP scores are arbitrary; threshold 0 keeps the round from depending on them.
        "backprojection": backend("backprojection_clip", clip_threshold=0.0),
    }
    before = _metric_counts(triton)
    with start_stack(tmp_path / "stack", env=env, service_env=service_env, timeout_s=300.0) as stack:
        gen = subprocess.run([sys.executable, "-m", "glimpse3d.gateway.cli", "--addr", stack.gateway_addr, "--quiet",
                              "generate", str(demo.SAMPLE), "--views", "1", "--enhance", "1", "--resolution", "64",
                              "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                             check=False)
        logs = {n: (tmp_path / "stack" / f"{n}.log").read_text(errors="replace")[-2000:]
                for n in ("depth", "reconstruction", "multiview", "diffusion", "backprojection")}
        assert gen.returncode == 0, gen.stderr + "".join(f"\n--- {k}\n{v}" for k, v in logs.items())
    splat = read_ply(tmp_path / "out" / "model.ply")
    assert splat.num_gaussians > 0
    after = _metric_counts(triton)
    called = {m for m in MODELS if after.get(m, 0) > before.get(m, 0)}
    other = {"triposr": "reconstruction_lgm", "lgm": "reconstruction_triposr"}[reconstruction]
    assert called == set(MODELS) - {other}, (before, after)
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    stored = [o.object_name for o in client.list_objects(bucket, prefix="glimpse3d/", recursive=True)]
    assert len(stored) >= 5  # photo, depth, splats, rendered and enhanced views live in S3
