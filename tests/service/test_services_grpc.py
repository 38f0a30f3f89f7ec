"""Each backend service's servicer over a real loopback channel (in-process server on port 0, file
artifact store): one good call through the whole service, and bad input answered with
INVALID_ARGUMENT naming the field, the server still serving afterwards."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from service_harness import TENANT, run_service

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore, content_key
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.formats import read_ply, splat_to_ply_bytes
from glimpse3d.core.images import decode_image, decode_npy, encode_npy, encode_png
from glimpse3d.core.render import rasterize
from glimpse3d.core.rpc import error_from_rpc
from glimpse3d.core.synthetic import render_image, textured_object
from glimpse3d.v1 import (
    backprojection_pb2,
    common_pb2,
    depth_pb2,
    diffusion_pb2,
    multiview_pb2,
    reconstruction_pb2,
)

SIZE = 64


@pytest.fixture(scope="module")
def scene():
    splat = textured_object(seed=0, n=1500)
    camera = orbit_camera(0.0, 0.0, 2.7, width=SIZE, height=SIZE)
    return splat, camera, render_image(splat, camera, background=(0.9, 0.9, 0.9), rgba=True)


@pytest.fixture
def store(tmp_path):
    return FileArtifactStore(tmp_path / "artifacts")


def put(store: FileArtifactStore, data: bytes, media: str) -> common_pb2.ArtifactRef:
    return convert.artifact_to_proto(store.put(data, media))


def temporary(ref: common_pb2.ArtifactRef) -> bool:
    """Whether a service stored ``ref`` as a temporary artifact (which the S3 lifecycle rule expires):
    intermediate results are temporary, splats and confidences (what job versions keep) are not."""
    return ref.uri.endswith(f"/{content_key(ref.sha256, temporary=True, tenant=TENANT)}")


async def expect_invalid(call, field_fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert field_fragment in (error_from_rpc(exc.value).field or "") + exc.value.details()


def test_depth_estimate(store, scene):
    rgba = scene[2]
    image = put(store, encode_png(rgba), "image/png")

    async def scenario(stub) -> None:
        resp = await stub.Estimate(depth_pb2.EstimateDepthRequest(image=image))
        assert temporary(resp.depth) and temporary(resp.mask)
        mask = decode_npy(store.get(convert.artifact_from_proto(resp.mask)), field="mask")
        depth = decode_npy(store.get(convert.artifact_from_proto(resp.depth)), field="depth")
        truth = rgba[..., 3] > 127
        assert ((mask > 0.5) == truth).mean() > 0.97  # the alpha channel is the matte
        assert (depth[truth] > 1.0).all() and (depth[~truth] == 0).all()
        await expect_invalid(stub.Estimate(depth_pb2.EstimateDepthRequest(
            image=put(store, b"not an image", "image/png"))), "image")
        await expect_invalid(stub.Estimate(depth_pb2.EstimateDepthRequest()), "image.uri")
        assert (await stub.Estimate(depth_pb2.EstimateDepthRequest(image=image))).backend == "silhouette"

    run_service("depth", store, scenario)


def test_reconstruction_reconstruct_and_render(store, scene):
    _, camera, rgba = scene
    image = put(store, encode_png(rgba[..., :3]), "image/png")
    from glimpse3d.core.synthetic import render_depth_alpha

    depth, alpha = render_depth_alpha(scene[0], camera)
    depth_ref = put(store, encode_npy(depth), "application/x-npy")
    mask_ref = put(store, encode_npy(alpha), "application/x-npy")
    cam = convert.camera_to_proto(camera)

    async def scenario(stub) -> None:
        resp = await stub.Reconstruct(reconstruction_pb2.ReconstructRequest(
            image=image, depth=depth_ref, mask=mask_ref, camera=cam, fit_steps=10))
        assert resp.num_gaussians > 100 and resp.input_view_psnr_db > 20
        assert not temporary(resp.splat)
        view = common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=90, width=48, height=40))
        rendered = await stub.Render(reconstruction_pb2.RenderRequest(splat=resp.splat, views=[view]))
        rgb = decode_image(store.get(convert.artifact_from_proto(rendered.views[0].rgb)))
        assert rgb.shape == (40, 48, 3)
        assert all(temporary(ref) for ref in (rendered.views[0].rgb, rendered.views[0].depth, rendered.views[0].alpha))
        bad_cam = convert.camera_to_proto(camera)
        bad_cam.world_to_camera[5] = math.nan
        await expect_invalid(stub.Reconstruct(reconstruction_pb2.ReconstructRequest(
            image=image, depth=depth_ref, mask=mask_ref, camera=bad_cam)), "camera.world_to_camera")
        await expect_invalid(stub.Reconstruct(reconstruction_pb2.ReconstructRequest(
            image=image, depth=mask_ref, mask=put(store, encode_npy(np.zeros((3, 3), np.float32)), "application/x-npy"),
            camera=cam)), "mask")
        await expect_invalid(stub.Render(reconstruction_pb2.RenderRequest(
            splat=put(store, b"ply\nformat ascii 1.0\n", "application/x-glimpse3d-splat+ply"), views=[view])), "splat")
        await expect_invalid(stub.Render(reconstruction_pb2.RenderRequest(
            splat=resp.splat, views=[view], background=[2.0, 0, 0])), "background")

    run_service("reconstruction", store, scenario)


def test_multiview_generate(store, scene):
    splat, camera, rgba = scene
    image = put(store, encode_png(rgba[..., :3]), "image/png")
    splat_ref = put(store, splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply")
    views = [common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=a, width=SIZE, height=SIZE)) for a in (90, 180)]

    async def scenario(stub) -> None:
        req = multiview_pb2.GenerateViewsRequest(image=image, input_camera=convert.camera_to_proto(camera),
                                                 splat=splat_ref, views=views)
        resp = await stub.Generate(req)
        assert len(resp.views) == 2
        assert all(temporary(v.rgb) and temporary(v.mask) for v in resp.views)
        assert decode_image(store.get(convert.artifact_from_proto(resp.views[1].rgb))).shape == (SIZE, SIZE, 3)
        del req.views[:]
        await expect_invalid(stub.Generate(req), "views")
        await expect_invalid(stub.Generate(multiview_pb2.GenerateViewsRequest(
            image=image, input_camera=convert.camera_to_proto(camera), views=views)), "splat")

    run_service("multiview", store, scenario)


def test_diffusion_enhance_is_deterministic(store, scene):
    image = put(store, encode_png(scene[2][..., :3]), "image/png")

    async def scenario(stub) -> None:
        req = diffusion_pb2.EnhanceViewRequest(view=image, reference=image, strength=0.8, seed=7)
        a = await stub.Enhance(req)
        b = await stub.Enhance(req)
        assert a.view.sha256 == b.view.sha256  # same seed -> identical bytes
        assert temporary(a.view)
        req.strength = 1.5
        await expect_invalid(stub.Enhance(req), "strength")

    run_service("diffusion", store, scenario)


def test_backprojection_refine(store, scene):
    splat, camera, rgba = scene
    splat_ref = put(store, splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply")
    view = put(store, encode_png(rgba[..., :3]), "image/png")
    cam = convert.camera_to_proto(camera)

    async def scenario(stub) -> None:
        resp = await stub.Refine(backprojection_pb2.RefineRequest(
            splat=splat_ref, view=view, camera=cam, options=backprojection_pb2.RefineOptions(steps=5)))
        assert read_ply(store.get(convert.artifact_from_proto(resp.splat))).num_gaussians == splat.num_gaussians
        assert not temporary(resp.splat) and not temporary(resp.confidence)
        assert not resp.report.HasField("clip_score") and "CLIP" in resp.report.clip_note
        assert 0.0 <= resp.report.accepted_fraction <= 1.0
        small = convert.camera_to_proto(camera.with_size(32, 32))
        await expect_invalid(stub.Refine(backprojection_pb2.RefineRequest(
            splat=splat_ref, view=view, camera=small)), "view")
        await expect_invalid(stub.Refine(backprojection_pb2.RefineRequest(
            splat=splat_ref, view=view, camera=cam, confidence=put(
                store, encode_npy(np.zeros(3, np.float32)), "application/x-npy"))), "confidence")
        await expect_invalid(stub.Refine(backprojection_pb2.RefineRequest(  # only a real photo may re-lift
            splat=splat_ref, view=view, camera=cam, options=backprojection_pb2.RefineOptions(relift=True))),
            "options.relift")
        await expect_invalid(stub.Refine(backprojection_pb2.RefineRequest(
            splat=splat_ref, view=view, camera=cam, photo_cameras=[common_pb2.Camera()])), "photo_cameras[0]")

    run_service("backprojection", store, scenario)


def test_backprojection_pose_calibrated_at_a_known_view(store, scene):
    """Pose over gRPC, with mattes one pixel narrower than the splat's outline (as a real matte is against
    a splat whose Gaussians reach past the surface): uncalibrated the camera steps back about 3 %; with
    the known view (the input photo's matte and camera) the distance is calibrated to within 1 %."""
    splat, camera, _ = scene
    true = orbit_camera(40.0, 10.0, 2.7, width=SIZE, height=SIZE)
    rgba = render_image(splat, true, background=(0.9, 0.9, 0.9), rgba=True)

    def narrow_matte(cam) -> common_pb2.ArtifactRef:
        m = binary_erosion(rasterize(splat, cam).alpha.numpy() > 0.5).astype(np.float32)
        return put(store, encode_npy(m), "application/x-npy")

    splat_ref = put(store, splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply")
    image = put(store, encode_png(rgba[..., :3]), "image/png")
    mask, known_mask = narrow_matte(true), narrow_matte(camera)
    known_camera = convert.camera_to_proto(camera)

    def request(**known) -> backprojection_pb2.PoseRequest:
        return backprojection_pb2.PoseRequest(splat=splat_ref, image=image, mask=mask, azimuth_deg=60.0,
                                              elevation_deg=10.0, field="extra_photos[0]", **known)

    async def scenario(stub) -> None:
        plain = await stub.Pose(request())
        calibrated = await stub.Pose(request(known_mask=known_mask, known_camera=known_camera))
        assert plain.distance / 2.7 - 1.0 > 0.02, plain.distance
        assert abs(calibrated.distance / 2.7 - 1.0) < 0.01, calibrated.distance
        assert abs(calibrated.azimuth_deg - 40.0) < 2.0 and abs(calibrated.elevation_deg - 10.0) < 2.0
        assert not calibrated.hint_kept  # the known view shows most of what this view shows
        await expect_invalid(stub.Pose(request(known_mask=known_mask, known_camera=known_camera,
                                               photo_cameras=[common_pb2.Camera()])), "photo_cameras[0]")
        await expect_invalid(stub.Pose(request(known_mask=known_mask)), "known_camera")
        await expect_invalid(stub.Pose(request(known_camera=known_camera)), "known_mask")
        await expect_invalid(stub.Pose(request(known_mask=mask, known_camera=convert.camera_to_proto(
            camera.with_size(32, 32)))), "known_mask")

    run_service("backprojection", store, scenario)
