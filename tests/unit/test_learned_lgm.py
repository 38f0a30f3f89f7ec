"""The learned ``lgm`` reconstruction backend on a tiny random LGM (same structure and file layout as
the published one): the architecture against the published checkpoint's layout, checkpoint checks,
the camera / ray / frame geometry on cases with known answers, the backend end to end, and one call
through the real reconstruction gRPC service."""

from __future__ import annotations

import json
import math

import grpc
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from service_harness import run_service

from glimpse3d.core import convert, synthetic
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.images import decode_image, encode_npy, encode_png
from glimpse3d.core.models import ModelMissing
from glimpse3d.core.render import quat_to_rotmat
from glimpse3d.core.rpc import error_from_rpc
from glimpse3d.core.service import ServiceSettings
from glimpse3d.core.splat import SH_C0
from glimpse3d.services.reconstruction.api import ExtraView, ReconstructionBackend, make_backend
from glimpse3d.services.reconstruction.backends.lgm import checkpoint, rays
from glimpse3d.services.reconstruction.backends.lgm.backend import LGMBackend
from glimpse3d.services.reconstruction.backends.lgm.gaussians import lgm_to_splat
from glimpse3d.services.reconstruction.backends.lgm.source import CHECKPOINT_FILE, CHECKPOINT_SIZE, MODEL_NAME, SOURCES
from glimpse3d.services.reconstruction.backends.lgm.tiny import TINY, write_tiny
from glimpse3d.services.reconstruction.backends.lgm.unet import BIG, LGMConfig, LGMNet
from glimpse3d.v1 import common_pb2, reconstruction_pb2

SIZE = 64  # photo and view size
RADIUS = 2.7


def ry(deg: float) -> np.ndarray:
    """Rotation about +y turning +z towards +x (the project's azimuth direction)."""
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def rz(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert write_tiny(root, seed=0) == [MODEL_NAME]
    return root


@pytest.fixture(scope="module")
def backend(model_dir) -> LGMBackend:
    b = make_backend("lgm", model_dir=model_dir, device="cpu")
    b.load()
    return b


@pytest.fixture(scope="module")
def scene() -> dict:
    """The synthetic object photographed from the default camera, plus its three rig views."""
    obj = synthetic.textured_object(seed=1, n=2000)
    photo = orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE)
    rgba = synthetic.render_image(obj, photo, rgba=True)
    depth, alpha = synthetic.render_depth_alpha(obj, photo)
    views = [ExtraView(c, synthetic.render_image(obj, c)) for c in
             (rays.turned_about_up(photo, a) for a in (90.0, 180.0, 270.0))]
    return {"obj": obj, "camera": photo, "image": rgba[..., :3], "depth": depth, "mask": alpha, "views": views}


def _reconstruct(backend: LGMBackend, scene: dict, views=None, **kw):
    return backend.reconstruct(scene["image"], scene["depth"], scene["mask"], scene["camera"],
                               scene["views"] if views is None else views, **kw)


# ----------------------------------------------------------------------------- architecture and checkpoint


def test_manifest_is_the_architecture_and_predicts_the_published_file_size():
    manifest = checkpoint.read_manifest()
    shapes = checkpoint.expected_shapes(BIG)
    assert {k: list(v) for k, v in shapes.items()} == manifest["tensors"]
    assert manifest["num_tensors"] == 376 and manifest["num_parameters"] == 415_042_848
    # Known answer: the Hub publishes 830,126,160 bytes for model_fp16_fixrot.safetensors; the safetensors
    # layout of these key names and shapes in fp16 gives exactly that (one character or value off breaks it).
    assert checkpoint.predicted_file_size(shapes) == CHECKPOINT_SIZE == manifest["predicted_file_size"]
    assert "unet.down_blocks.3.attns.0.attn.qkv.weight" in shapes
    assert "unet.down_blocks.3.attns.0.attn.qkv.bias" not in shapes  # bias-free qkv
    assert shapes["unet.mid_block.attns.0.attn.qkv.weight"] == (3072, 1024)
    assert shapes["unet.up_blocks.4.nets.2.conv1.weight"] == (128, 192, 3, 3)  # 128 + the 64-channel skip
    assert shapes["conv.weight"] == (14, 14, 1, 1) and shapes["unet.conv_in.weight"] == (64, 9, 3, 3)
    assert not any(".attns." in k for k in shapes if k.startswith(("unet.down_blocks.0.", "unet.up_blocks.4.")))


def test_big_config_maps_4x256_views_to_4x128x128_gaussians():
    assert BIG.splat_size == 128 and BIG.num_gaussians == 65_536
    with torch.device("meta"):
        out = LGMNet(BIG)(torch.empty(1, 4, 9, 256, 256))
    assert out.shape == (1, 65_536, 14)
    with pytest.raises(ValueError, match="mirror"):
        LGMConfig(up_channels=(1024, 512, 256), up_attention=(True, True, False))
    with pytest.raises(ValueError, match="norm_groups"):
        LGMConfig(norm_groups=48)


def test_sources_and_tiny_layout(model_dir):
    (source,) = SOURCES
    assert source.name == MODEL_NAME and source.repo_id == "ashawkey/LGM" and source.files == (CHECKPOINT_FILE,)
    assert "MIT" in source.licence and source.gpu_memory
    path = model_dir / MODEL_NAME / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        assert LGMConfig.from_mapping(json.loads(f.metadata()[checkpoint.CONFIG_METADATA_KEY])) == TINY
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
        assert set(f.keys()) == set(checkpoint.expected_shapes(TINY)) == set(checkpoint.read_manifest()["tensors"])
    net = checkpoint.load_checkpoint(path)
    stored = load_file(str(path))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.state_dict()["unet.conv_in.weight"], stored["unet.conv_in.weight"].float())
    assert checkpoint.verify_file(path, checkpoint.build_manifest(checkpoint.expected_shapes(TINY), "tiny")) == {
        "missing": [], "unexpected": [], "mismatched": [], "dtype": []}


def test_tampered_checkpoint_names_the_keys(model_dir, tmp_path):
    src = model_dir / MODEL_NAME / CHECKPOINT_FILE
    state = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    state.pop("unet.mid_block.attns.0.attn.proj.bias")
    state["unet.extra.weight"] = torch.zeros(3, dtype=torch.float16)
    state["conv.weight"] = torch.zeros(14, 13, 1, 1, dtype=torch.float16)
    bad_dir = tmp_path / "models"
    (bad_dir / MODEL_NAME).mkdir(parents=True)
    save_file(state, str(bad_dir / MODEL_NAME / CHECKPOINT_FILE), metadata=meta)
    with pytest.raises(checkpoint.CheckpointMismatch) as exc:
        LGMBackend(model_dir=bad_dir, device="cpu").load()
    msg = exc.value.message
    assert isinstance(exc.value, FailedPrecondition) and exc.value.field == "model_dir"
    assert "1 missing (unet.mid_block.attns.0.attn.proj.bias)" in msg
    assert "1 unexpected (unet.extra.weight)" in msg
    assert "1 mismatched (conv.weight: [14, 13, 1, 1] vs [14, 14, 1, 1])" in msg
    # Without the tiny config the same file is checked against the published big architecture.
    save_file(load_file(str(src)), str(bad_dir / MODEL_NAME / CHECKPOINT_FILE))
    with pytest.raises(checkpoint.CheckpointMismatch, match=r": 373 mismatched \(unet.conv_in.bias: \[8\] vs \[64\];"):
        checkpoint.load_checkpoint(bad_dir / MODEL_NAME / CHECKPOINT_FILE)
    (bad_dir / MODEL_NAME / CHECKPOINT_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(checkpoint.CheckpointMismatch, match="not a readable safetensors file"):
        checkpoint.load_checkpoint(bad_dir / MODEL_NAME / CHECKPOINT_FILE)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"min_opacity": 1.5}, "min_opacity"), ({"min_opacity": float("nan")}, "min_opacity"),
    ({"view_tolerance_deg": 0}, "view_tolerance_deg"), ({"device": "tpu"}, "device"), ({"dtype": "int8"}, "dtype"),
])
def test_bad_options_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(InvalidInput) as bad:
        LGMBackend(model_dir=tmp_path, **kwargs)
    assert bad.value.field == field


# ----------------------------------------------------------------------------- geometry with known answers


def _gl_rays(azimuth_deg: float, size: int) -> np.ndarray:
    """LGM's own formulation, written independently: OpenGL look-at pose at radius 1.5 (camera looks
    down -z, y up), pixel directions ((x + 0.5 - c) / f, -(y + 0.5 - c) / f, -1), Plücker (o x d, d)."""
    a = math.radians(azimuth_deg)
    eye = 1.5 * np.array([math.sin(a), 0.0, math.cos(a)])
    back = eye / np.linalg.norm(eye)  # +z of an OpenGL camera points away from the target
    right = np.cross([0.0, 1.0, 0.0], back)
    up = np.cross(back, right)
    pose = np.stack([right, up, back], axis=1)
    f = 0.5 * size / math.tan(math.radians(49.1) / 2)
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="xy")
    dirs = np.stack([(x + 0.5 - size / 2) / f, -(y + 0.5 - size / 2) / f, -np.ones_like(x, float)], -1) @ pose.T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return np.concatenate([np.cross(np.broadcast_to(eye, dirs.shape), dirs), dirs], -1).transpose(2, 0, 1)


def test_plucker_rays_known_geometry():
    size = 65  # odd: the centre pixel's ray is the optical axis
    for az in rays.LGM_AZIMUTHS_DEG:
        pose = rays.lgm_default_pose(az)
        r = rays.plucker_rays(pose, size).astype(np.float64)
        m, d = r[:3], r[3:]
        centre = pose[:3, 3]
        assert np.allclose(centre, 1.5 * np.array([math.sin(math.radians(az)), 0, math.cos(math.radians(az))]))
        assert np.allclose(d[:, 32, 32], -centre / 1.5, atol=1e-6)  # points at the origin...
        assert np.allclose(m[:, 32, 32], 0.0, atol=1e-6)  # ...so its line passes through it: zero moment
        assert np.allclose(np.linalg.norm(d, axis=0), 1.0, atol=1e-6)
        assert np.allclose((m * d).sum(axis=0), 0.0, atol=1e-6)  # moment orthogonal to direction
        assert np.allclose(m, np.cross(centre[:, None, None], d, axis=0), atol=1e-6)  # m = o x d
        assert np.allclose(r, _gl_rays(az, size), atol=1e-5)  # the same rays as LGM's OpenGL formulation
    # Pixel (0, 0) (top-left) looks up and to the left of the front camera: -x, +y in the world.
    d00 = rays.plucker_rays(rays.lgm_default_pose(0.0), size)[3:, 0, 0]
    assert d00[0] < 0 and d00[1] > 0 and d00[2] < 0


def test_photo_rig_maps_onto_lgm_default_rig():
    """A photo at azimuth 40 (distance 3, 40 degree lens) and its turned copies land exactly on LGM's
    default cameras at azimuths 0, 90, 180, 270 and radius 1.5; the frame is 2 x a 40 degree turn."""
    photo = orbit_camera(40.0, 0.0, 3.0, width=SIZE, height=SIZE)
    frame = rays.lgm_frame(photo)
    assert frame.scale == pytest.approx(2.0)
    assert np.allclose(frame.rotation, ry(40.0)) and np.allclose(frame.translation, 0.0, atol=1e-12)
    for az in rays.LGM_AZIMUTHS_DEG:
        cam = rays.turned_about_up(photo, az)
        assert np.allclose(cam.world_to_camera, orbit_camera(40.0 + az, 0.0, 3.0).world_to_camera, atol=1e-12)
        assert np.allclose(frame.pose_to_lgm(cam.camera_to_world), rays.lgm_default_pose(az), atol=1e-9)


def test_frame_projects_like_the_photo_for_any_camera():
    """For an elevated, off-centre photo camera, an LGM point seen by LGM's front camera lands on the
    pixel where the photo's camera sees its world image (after the resampling map to LGM's intrinsics)."""
    base = orbit_camera(30.0, 20.0, 2.5, width=80, height=60, fov_y_deg=35.0)
    photo = Camera(base.fx, base.fy * 1.02, 43.0, 27.5, 80, 60, base.world_to_camera)
    frame = rays.lgm_frame(photo)
    assert np.allclose(frame.pose_to_lgm(photo.camera_to_world), rays.lgm_default_pose(0.0), atol=1e-9)
    f, c = rays.lgm_intrinsics(SIZE)
    pts = np.random.default_rng(0).uniform(-0.8, 0.8, (50, 3))
    uv_lgm, z_lgm = rays.lgm_camera(rays.lgm_default_pose(0.0), SIZE).project(pts)
    uv, z = photo.project(frame.points(pts))
    mapped = np.stack([f / photo.fx * (uv[:, 0] - photo.cx) + c, f / photo.fy * (uv[:, 1] - photo.cy) + c], 1)
    assert np.allclose(mapped, uv_lgm, atol=1e-9) and np.allclose(z, frame.scale * z_lgm)


def test_lgm_gaussians_to_world_splat_known_values():
    """Hand-computed: photo at azimuth 90, distance 3 -> world = 2 * Ry(90) * lgm. The Gaussian at LGM
    (0.3, 0.1, -0.2) goes to (-0.4, 0.2, -0.6); its 30-degree turn about LGM's z becomes Ry(90) Rz(30);
    scales double; opacity, colour and clamping follow LGM's activations."""
    frame = rays.lgm_frame(orbit_camera(90.0, 0.0, 3.0, width=SIZE, height=SIZE))
    scales = np.array([0.05, 0.01, 0.02])
    rgb = np.array([0.9, 0.2, 0.5])
    half = math.radians(15.0)
    raw = torch.tensor([
        [0.3, 0.1, -0.2, 0.0, *np.log(np.expm1(scales / 0.1)), 3 * math.cos(half), 0, 0, 3 * math.sin(half),
         *np.arctanh(2 * rgb - 1)],
        [2.0, -5.0, 0.5, -2.0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # clamped position, faint
        [0.0, 0.0, 0.0, -9.0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # opacity 1.2e-4: dropped
    ], dtype=torch.float32)
    splat = lgm_to_splat(raw, frame, min_opacity=0.005)
    assert splat.num_gaussians == 2
    assert np.allclose(splat.means, [[-0.4, 0.2, -0.6], [1.0, -2.0, -2.0]], atol=1e-6)  # 2 Ry(90) (1, -1, 0.5)
    assert np.allclose(np.exp(splat.log_scales[0]), 2 * scales, rtol=1e-5)
    rot = quat_to_rotmat(torch.from_numpy(splat.quats[:1])).numpy()[0]
    assert np.allclose(rot, ry(90.0) @ rz(30.0), atol=1e-6)
    assert np.allclose(splat.opacity_logits, [0.0, -2.0])
    assert np.allclose(splat.sh[0, 0] * SH_C0 + 0.5, rgb, atol=1e-5) and splat.sh.shape == (2, 1, 3)
    assert lgm_to_splat(raw, frame, min_opacity=0.0, max_gaussians=1).means.tolist() == splat.means[:1].tolist()


def test_resample_view_matches_a_direct_render_with_lgm_intrinsics():
    """Resampling a 40 / 60 degree photo to LGM's 49.1 degree camera gives what that camera sees:
    the silhouette's centroid agrees to 0.1 px, colours to within bilinear blur (a 1 px shift is 3x worse)."""
    obj = synthetic.textured_object(seed=1, n=3000)
    f, c = rays.lgm_intrinsics(SIZE)
    for src, fov in ((64, 40.0), (96, 60.0), (128, 40.0)):
        cam = orbit_camera(30.0, 10.0, 2.7, width=src, height=src, fov_y_deg=fov)
        photo = synthetic.render_image(obj, cam, background=(1, 1, 1)).astype(np.float32) / 255
        out = rays.resample_view(photo, None, cam, SIZE)
        direct = synthetic.render_image(obj, Camera(f, f, c, c, SIZE, SIZE, cam.world_to_camera), background=(1, 1, 1),
                                        rgba=True).astype(np.float32) / 255
        a, b = out.mean(-1) < 0.98, direct[..., 3] > 0.5
        assert np.abs(np.argwhere(a).mean(0) - np.argwhere(b).mean(0)).max() < 0.1
        assert (a & b).sum() / (a | b).sum() > 0.94
        if src <= 96:
            assert np.abs(out - direct[..., :3]).mean() < 0.01 < np.abs(np.roll(out, 1, 1) - direct[..., :3]).mean()


def test_select_views_picks_the_rig_and_names_what_is_missing(scene):
    photo, views = scene["camera"], scene["views"]
    shuffled = [views[2].camera, views[0].camera, views[1].camera]  # 270, 90, 180
    assert rays.select_views(photo, shuffled, 5.0) == [1, 2, 0]
    nudged = rays.turned_about_up(orbit_camera(0.0, 2.0, RADIUS * 1.02, width=SIZE, height=SIZE), 180.0)
    assert rays.select_views(photo, [views[0].camera, nudged, views[2].camera], 5.0) == [0, 1, 2]
    high = orbit_camera(180.0, 30.0, RADIUS, width=SIZE, height=SIZE)
    for cams, missing in (([], "+90, +180, +270"), ([views[0].camera, views[2].camera], "+180"),
                          ([views[0].camera, high, views[2].camera], "+180")):
        with pytest.raises(InvalidInput) as exc:
            rays.select_views(photo, cams, 5.0)
        assert exc.value.field == "views"
        assert "azimuths 90.0, 180.0, 270.0" in exc.value.message
        assert f"missing the ones at {missing}." in exc.value.message


# ----------------------------------------------------------------------------- the backend


def test_reconstruct_tiny(backend: LGMBackend, scene):
    assert isinstance(backend, ReconstructionBackend) and backend.ready and backend.name == "lgm"
    first = _reconstruct(backend, scene, seed=0)
    again = _reconstruct(backend, scene, seed=0)
    other_seed = _reconstruct(backend, scene, seed=7)
    splat = first.splat
    assert 0 < splat.num_gaussians <= TINY.num_gaussians == 4 * 32 * 32
    assert splat.allclose(again.splat, atol=0) and splat.allclose(other_seed.splat, atol=0)  # deterministic network
    assert np.allclose(np.linalg.norm(splat.quats, axis=1), 1.0, atol=1e-5)
    assert np.abs(splat.means).max() <= RADIUS / 1.5 + 1e-5  # LGM's cube [-1, 1]^3 scaled by 2.7 / 1.5
    assert (splat.opacities >= 0.005).all()
    assert 0.0 < first.metrics["input_view_psnr_db"] < 60.0 and first.metrics["num_predicted"] == 4096
    # The extra views are used: other content in the side views gives other Gaussians.
    grey = [ExtraView(v.camera, np.full_like(v.rgb, 128)) for v in scene["views"]]
    assert not _reconstruct(backend, scene, views=grey).splat.allclose(splat, atol=1e-4)
    few = _reconstruct(backend, scene, max_gaussians=100)
    assert few.splat.num_gaussians == 100
    assert few.splat.opacities.min() >= np.sort(splat.opacities)[-100] - 1e-6  # the most opaque ones
    rendered = backend.render(splat, [scene["camera"], scene["views"][0].camera], background=(1.0, 1.0, 1.0))
    assert len(rendered) == 2 and rendered[1].rgb.shape == (SIZE, SIZE, 3) and rendered[0].alpha.max() > 0.5


def test_network_input_order_and_content(backend: LGMBackend, scene, monkeypatch):
    """Views given in any order reach the network as front, +90, +180, +270, each resampled over white,
    ImageNet-normalised and followed by its camera's rays."""
    colours = {90.0: (255, 0, 0), 180.0: (0, 255, 0), 270.0: (0, 0, 255)}
    views = [ExtraView(v.camera, np.broadcast_to(np.uint8(colours[a]), v.rgb.shape).copy())
             for a, v in zip((90.0, 180.0, 270.0), scene["views"], strict=True)]
    seen = {}
    monkeypatch.setattr(backend, "_net", _Spy(backend._net, seen))
    _reconstruct(backend, scene, views=[views[2], views[0], views[1]])
    x = seen["x"][0].numpy()  # [4, 9, S, S]
    rgb = x[:, :3] * rays.IMAGENET_STD[None, :, None, None] + rays.IMAGENET_MEAN[None, :, None, None]
    for k, a in enumerate((90.0, 180.0, 270.0), start=1):
        assert np.allclose(rgb[k][:, 24:40, 24:40].mean(axis=(1, 2)), np.array(colours[a]) / 255, atol=1e-4)
        assert np.allclose(rgb[k][:, 0, 0], 1.0, atol=1e-4)  # LGM's wider lens sees past the frame: white
        assert np.allclose(x[k, 3:], rays.plucker_rays(rays.lgm_default_pose(a), TINY.input_size), atol=1e-5)
    assert np.allclose(rgb[0][:, 0, 0], 1.0, atol=1e-4)  # the photo's background is white for LGM


class _Spy:
    def __init__(self, net, seen) -> None:
        self.net, self.seen, self.config = net, seen, net.config

    def __call__(self, x):
        self.seen["x"] = x.clone()
        return self.net(x)


def test_bad_views_are_invalid_input(backend: LGMBackend, scene):
    with pytest.raises(InvalidInput) as exc:
        _reconstruct(backend, scene, views=scene["views"][:2])
    assert exc.value.field == "views" and "+270" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        _reconstruct(backend, scene, views=["not a view"])
    assert exc.value.field == "views[0]"
    front = orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE)
    turn = np.diag([-1.0, 1.0, -1.0, 1.0])  # half a turn about the camera's own y axis: facing away
    away = Camera(front.fx, front.fy, front.cx, front.cy, SIZE, SIZE, turn @ front.world_to_camera)
    with pytest.raises(InvalidInput) as exc:  # the object centre is behind this camera
        rays.lgm_frame(away)
    assert exc.value.field == "camera"


# ----------------------------------------------------------------------------- through the gRPC service


def test_grpc_service_with_lgm(model_dir, scene, tmp_path):
    store = FileArtifactStore(tmp_path / "artifacts")

    def put(data: bytes, media: str) -> common_pb2.ArtifactRef:
        return convert.artifact_to_proto(store.put(data, media))

    image = put(encode_png(scene["image"]), "image/png")
    depth = put(encode_npy(scene["depth"]), "application/x-npy")
    mask = put(encode_npy(scene["mask"]), "application/x-npy")
    views = [reconstruction_pb2.ViewImage(camera=convert.camera_to_proto(v.camera),
                                          rgb=put(encode_png(v.rgb), "image/png")) for v in scene["views"]]
    request = reconstruction_pb2.ReconstructRequest(image=image, depth=depth, mask=mask,
                                                    camera=convert.camera_to_proto(scene["camera"]), views=views)

    async def scenario(stub) -> None:
        resp = await stub.Reconstruct(request)
        assert resp.backend == "lgm" and 0 < resp.num_gaussians <= 4096 and math.isfinite(resp.input_view_psnr_db)
        view = common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=45, width=40, height=32))
        rendered = await stub.Render(reconstruction_pb2.RenderRequest(splat=resp.splat, views=[view]))
        assert decode_image(store.get(convert.artifact_from_proto(rendered.views[0].rgb))).shape == (32, 40, 3)
        del request.views[1]
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Reconstruct(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_from_rpc(exc.value).field == "views" and "+180" in exc.value.details()

    run_service("reconstruction", store, scenario,
                settings=ServiceSettings(backend="lgm", model_dir=model_dir, device="cpu"))


def test_grpc_service_missing_model_fails_to_load(tmp_path):
    with pytest.raises(ModelMissing):
        run_service("reconstruction", FileArtifactStore(tmp_path / "a"), lambda stub: None,
                    settings=ServiceSettings(backend="lgm", model_dir=tmp_path / "empty", device="cpu"))


def test_tiny_writer_is_seeded(tmp_path):
    write_tiny(tmp_path / "a", seed=3)
    write_tiny(tmp_path / "b", seed=3)
    write_tiny(tmp_path / "c", seed=4)
    read = [load_file(str(tmp_path / d / MODEL_NAME / CHECKPOINT_FILE))["unet.conv_in.weight"] for d in "abc"]
    assert torch.equal(read[0], read[1]) and not torch.equal(read[0], read[2])
