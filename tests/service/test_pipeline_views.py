"""The gateway's ``reconstruction_views`` setting: with n > 0 the pipeline asks the multiview service
for n views of the photo (its camera turned about the vertical axis) *before* reconstruction and
sends them with the ReconstructRequest; with 0 (the default) nothing changes.

In-process fakes stand in for the depth and multiview services (the weight-free multiview backend
needs a splat, which does not exist before reconstruction); the last test runs the real
reconstruction service with the ``lgm`` backend (tiny model), which only accepts the views when
their cameras form its +90/+180/+270 rig."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import numpy as np
import pytest
from service_harness import run_service

from glimpse3d.core import convert, synthetic
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import Camera, orbit_camera, turned_about_up
from glimpse3d.core.config import ConfigError, load_config
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import read_ply, splat_to_ply_bytes
from glimpse3d.core.images import encode_npy, encode_png
from glimpse3d.core.service import ServiceSettings
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.jobs import JobOptions
from glimpse3d.gateway.pipeline import ServicePipeline, reconstruction_view_cameras
from glimpse3d.services.reconstruction.backends.lgm.tiny import write_tiny
from glimpse3d.v1 import backprojection_pb2, common_pb2, depth_pb2, multiview_pb2, reconstruction_pb2

SIZE = 64
RADIUS = 2.7


def _angles(camera: Camera) -> tuple[float, float, float]:
    """(azimuth, elevation) in degrees and distance of a camera centre seen from the origin."""
    p = camera.position
    r = float(np.linalg.norm(p))
    return math.degrees(math.atan2(p[0], p[2])) % 360.0, math.degrees(math.asin(p[1] / r)), r


class FakeServices:
    """Depth, multiview, reconstruction and backprojection stand-ins that record every request, in call order.

    Depth answers the synthetic object's true depth and matte at ``photo``; multiview renders the
    object at each requested camera (a perfect novel-view model); reconstruction returns the object
    itself unless a real stub replaces it, and renders any splat it is sent; backprojection returns
    the splat unchanged with a confidence of 1 per Gaussian."""

    def __init__(self, store: FileArtifactStore, photo: Camera, reconstruction=None) -> None:
        self.store, self.photo, self.calls = store, photo, []
        self.obj = synthetic.textured_object(seed=2, n=1500)
        self.depth = SimpleNamespace(Estimate=self._estimate)
        self.multiview = SimpleNamespace(Generate=self._generate)
        self.reconstruction = reconstruction or SimpleNamespace(Reconstruct=self._reconstruct, Render=self._render)
        self.backprojection = SimpleNamespace(Refine=self._refine)
        self.health = {}  # no health checks: calls are not retried here (GatewayConfig.stage_retry_budget_s)

    def put(self, data: bytes, media: str) -> common_pb2.ArtifactRef:
        return convert.artifact_to_proto(self.store.put(data, media))

    async def _estimate(self, request: depth_pb2.EstimateDepthRequest, timeout=None, metadata=None):
        self.calls.append(("depth", request))
        depth, alpha = synthetic.render_depth_alpha(self.obj, self.photo)
        return depth_pb2.EstimateDepthResponse(
            depth=self.put(encode_npy(depth), "application/x-npy"),
            mask=self.put(encode_npy(alpha), "application/x-npy"),
            camera=convert.camera_to_proto(self.photo), backend="fake")

    async def _generate(self, request: multiview_pb2.GenerateViewsRequest, timeout=None, metadata=None):
        self.calls.append(("multiview", request))
        response = multiview_pb2.GenerateViewsResponse(backend="fake")
        for i, spec in enumerate(request.views):
            camera = convert.view_from_proto(spec, f"views[{i}]")
            rgb = synthetic.render_image(self.obj, camera)
            response.views.add(camera=convert.camera_to_proto(camera), rgb=self.put(encode_png(rgb), "image/png"))
        self.generated = response
        return response

    async def _reconstruct(self, request: reconstruction_pb2.ReconstructRequest, timeout=None, metadata=None):
        self.calls.append(("reconstruction", request))
        return reconstruction_pb2.ReconstructResponse(
            splat=self.put(splat_to_ply_bytes(self.obj), "application/x-glimpse3d-splat+ply"),
            num_gaussians=self.obj.num_gaussians, input_view_psnr_db=30.0, backend="fake")


    def _splat(self, ref: common_pb2.ArtifactRef):
        return read_ply(self.store.get(convert.artifact_from_proto(ref)))

    async def _render(self, request: reconstruction_pb2.RenderRequest, timeout=None, metadata=None):
        self.calls.append(("render", request))
        splat, response = self._splat(request.splat), reconstruction_pb2.RenderResponse()
        for i, spec in enumerate(request.views):
            camera = convert.view_from_proto(spec, f"views[{i}]")
            depth, alpha = synthetic.render_depth_alpha(splat, camera)
            response.views.add(camera=spec.camera,
                               rgb=self.put(encode_png(synthetic.render_image(
                                   splat, camera, request.background or (1.0, 1.0, 1.0))), "image/png"),
                               depth=self.put(encode_npy(depth), "application/x-npy"),
                               alpha=self.put(encode_npy(alpha), "application/x-npy"))
        return response

    async def _refine(self, request: backprojection_pb2.RefineRequest, timeout=None, metadata=None):
        self.calls.append(("backprojection", request))
        n = self._splat(request.splat).num_gaussians
        return backprojection_pb2.RefineResponse(
            splat=request.splat, confidence=self.put(encode_npy(np.ones(n, np.float32)), "application/x-npy"))


def _run_initial(services: FakeServices, views: int):
    config = GatewayConfig(reconstruction_views=views)
    pipeline = ServicePipeline(config, services, services.store)
    photo = synthetic.render_image(services.obj, services.photo)
    job = SimpleNamespace(id="j", tenant="default", options=JobOptions(resolution=SIZE, seed=5),
                          input_image=services.store.put(encode_png(photo), "image/png"))
    stages: list[str] = []

    async def report(stage: str, fraction: float, message: str = "") -> None:
        stages.append(str(stage))

    return pipeline.run_initial(job, report), stages


def test_setting_default_range_and_environment():
    assert GatewayConfig().reconstruction_views == 0
    assert load_config(GatewayConfig, env={"GLIMPSE3D_RECONSTRUCTION_VIEWS": "3"}).reconstruction_views == 3
    for bad in (-1, 16):
        with pytest.raises(ConfigError) as exc:
            GatewayConfig(reconstruction_views=bad)
        assert exc.value.field == "reconstruction_views"


def test_view_cameras_are_the_photo_turned_about_the_vertical_axis():
    """Known answer: for an orbit photo the turned cameras are the orbit cameras at azimuth + 90k,
    same elevation, distance and lens."""
    photo = orbit_camera(20.0, 15.0, RADIUS, width=80, height=60, fov_y_deg=35.0)
    cams = reconstruction_view_cameras(photo, 3)
    for cam, az in zip(cams, (110.0, 200.0, 290.0), strict=True):
        assert np.allclose(cam.world_to_camera, orbit_camera(az, 15.0, RADIUS, width=80, height=60,
                                                              fov_y_deg=35.0).world_to_camera, atol=1e-12)
        assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (
            photo.fx, photo.fy, photo.cx, photo.cy, 80, 60)
    assert [round(_angles(c)[0], 6) for c in reconstruction_view_cameras(photo, 1)] == [200.0]
    assert np.allclose(turned_about_up(photo, 360.0).world_to_camera, photo.world_to_camera, atol=1e-12)


def test_views_are_generated_before_reconstruction_and_sent_with_it(tmp_path):
    photo = orbit_camera(0.0, 10.0, RADIUS, width=SIZE, height=SIZE)
    services = FakeServices(FileArtifactStore(tmp_path / "a"), photo)
    run, stages = _run_initial(services, views=3)
    result = asyncio.run(run)
    # Then the photo seeds the confidence (one MVCRM step at its own camera) and the version is scored
    # against the photo (one render of the photo's camera and the turned ones).
    assert [name for name, _ in services.calls] == ["depth", "multiview", "reconstruction", "backprojection", "render"]
    generate, reconstruct, seed = services.calls[1][1], services.calls[2][1], services.calls[3][1]
    assert seed.options.steps == 1 and seed.camera == convert.camera_to_proto(photo) and seed.view == seed.reference
    assert result.confidence is not None
    assert not generate.HasField("splat") and generate.seed == 5  # nothing to render yet: the photo drives it
    assert generate.input_camera == convert.camera_to_proto(photo) and generate.mask.uri
    sent = [convert.camera_from_proto(v.camera) for v in reconstruct.views]
    assert list(reconstruct.views) == list(services.generated.views)  # passed on as generated
    for cam, az in zip(sent, (90.0, 180.0, 270.0), strict=True):
        a, e, r = _angles(cam)
        assert (a, e, r) == pytest.approx((az, 10.0, RADIUS))
        assert (cam.width, cam.height, cam.fx) == (SIZE, SIZE, pytest.approx(photo.fx))
    assert "multiview" in stages and stages.index("multiview") < stages.index("reconstruct")
    assert result.metrics["num_gaussians"] == services.obj.num_gaussians
    # The fake reconstruction is the object the photo shows: identical at the photo's camera (an infinite
    # PSNR, left out of the metrics, which hold finite numbers only), consistent from the turned cameras.
    assert "photo_psnr_db" not in result.metrics and result.metrics["photo_consistency_db"] > 20.0


def test_default_keeps_the_old_flow(tmp_path):
    services = FakeServices(FileArtifactStore(tmp_path / "a"), orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE))
    run, stages = _run_initial(services, views=0)
    asyncio.run(run)
    assert [name for name, _ in services.calls] == ["depth", "reconstruction", "backprojection", "render"]
    assert len(services.calls[1][1].views) == 0 and "multiview" not in stages


def test_lgm_reconstruction_service_accepts_the_pipeline_views(tmp_path):
    """End to end through the real reconstruction service (``lgm``, tiny model): the views the
    pipeline generates are exactly the rig LGM checks for; without them LGM refuses, naming ``views``."""
    model_dir = tmp_path / "models"
    write_tiny(model_dir)
    store = FileArtifactStore(tmp_path / "artifacts")
    photo = orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE)

    async def scenario(stub) -> None:
        services = FakeServices(store, photo, reconstruction=stub)
        run, _ = _run_initial(services, views=3)
        result = await run
        assert 0 < result.metrics["num_gaussians"] <= 4 * 32 * 32  # the tiny LGM's splat
        services.calls.clear()
        run, _ = _run_initial(services, views=0)
        with pytest.raises(InvalidInput) as exc:  # raised by the service, carried back over gRPC
            await run
        assert exc.value.field == "views" and "azimuths 90.0, 180.0, 270.0" in exc.value.message

    run_service("reconstruction", store, scenario,
                settings=ServiceSettings(backend="lgm", model_dir=model_dir, device="cpu"))


def test_photo_confidence_steers_auto_away_from_the_photo(tmp_path):
    """The first version's confidence comes from the photo (one MVCRM step at its camera), so the first
    "auto" round looks at what the photo did not show instead of the photo's own viewpoint."""
    from glimpse3d.gateway.pipeline import pick_least_confident_view
    from glimpse3d.services.backprojection.api import RefineOptions
    from glimpse3d.services.backprojection.mvcrm import refine

    obj = synthetic.textured_object(seed=2, n=1500)
    photo = orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE)
    depth, _ = synthetic.render_depth_alpha(obj, photo)
    seeded = refine(obj, synthetic.render_image(obj, photo), photo, depth, None, RefineOptions(steps=1))
    front = obj.means[:, 2] > 0.3
    assert seeded.confidence[front].mean() > 0.3 and seeded.confidence[obj.means[:, 2] < -0.3].max() < 0.05
    azimuth, _, _ = _angles(pick_least_confident_view(obj.means, seeded.confidence, photo, []))
    assert min(azimuth, 360.0 - azimuth) >= 90.0, azimuth  # without the seed every view ties at 0
    np.testing.assert_allclose(seeded.splat.means, obj.means, atol=0.02)  # one step barely moves the splat


# ---------------------------------------------------------------------------- rounds against the photo


class RoundServices(FakeServices):
    """FakeServices plus a diffusion stand-in that returns the render as the "enhanced" view, and a
    backprojection whose result per call is scripted: ``"same"`` returns the splat unchanged,
    ``"dark"`` returns it with every colour darkened to 40 % (what a bad enhancement fused alone does)."""

    def __init__(self, store, photo, script):
        super().__init__(store, photo)
        self.script = list(script)
        self.diffusion = SimpleNamespace(Enhance=self._enhance)

    async def _enhance(self, request, timeout=None, metadata=None):
        self.calls.append(("diffusion", request))
        from glimpse3d.v1 import diffusion_pb2

        return diffusion_pb2.EnhanceViewResponse(view=request.view)

    async def _refine(self, request, timeout=None, metadata=None):
        self.calls.append(("backprojection", request))
        splat = self._splat(request.splat)
        if self.script.pop(0) == "dark":
            from glimpse3d.core.splat import Splat, rgb_to_sh0, sh0_to_rgb

            sh = splat.sh.copy()
            sh[:, 0, :] = rgb_to_sh0(np.clip(sh0_to_rgb(sh[:, 0, :]) * 0.4, 0.0, 1.0))
            splat = Splat(splat.means, splat.quats, splat.log_scales, splat.opacity_logits, sh)
        ref = self.put(splat_to_ply_bytes(splat), "application/x-glimpse3d-splat+ply")
        n = splat.num_gaussians
        return backprojection_pb2.RefineResponse(
            splat=ref, confidence=self.put(encode_npy(np.ones(n, np.float32)), "application/x-npy"),
            report=backprojection_pb2.RefineReport(accepted_fraction=1.0, photometric_error_before=0.1,
                                                   photometric_error_after=0.05, steps=60))


def _round_job(services: RoundServices) -> tuple[ServicePipeline, SimpleNamespace]:
    """A pipeline over ``services`` and a job whose version 1 is the object and whose photo is the object
    seen from ``services.photo`` with a little noise (the splat fits it to about 40 dB)."""
    pipeline = ServicePipeline(GatewayConfig(), services, services.store)
    noise = np.random.default_rng(0).integers(-3, 4, (SIZE, SIZE, 3))
    photo = np.clip(synthetic.render_image(services.obj, services.photo).astype(int) + noise, 0, 255).astype(np.uint8)
    splat = services.store.put(splat_to_ply_bytes(services.obj), "application/x-glimpse3d-splat+ply")
    version = SimpleNamespace(splat=splat, confidence=None, camera=None, metrics={})
    job = SimpleNamespace(id="j", tenant="default", options=JobOptions(resolution=SIZE, seed=5), versions=[version],
                          input_image=services.store.put(encode_png(photo), "image/png"))
    return pipeline, job


async def _no_report(stage: str, fraction: float, message: str = "") -> None:
    pass


def _run_round(services: RoundServices, camera: Camera | None):
    from glimpse3d.gateway.jobs import RoundSpec

    pipeline, job = _round_job(services)
    return asyncio.run(pipeline.run_round(job, RoundSpec(camera=camera), _no_report))


def test_every_round_is_fused_with_the_photo_and_a_harmless_one_stands(tmp_path):
    services = RoundServices(fake_store(tmp_path), orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE),
                             ["same"])
    result = _run_round(services, orbit_camera(120.0, 10.0, RADIUS, width=SIZE, height=SIZE))
    (_, refine), = [c for c in services.calls if c[0] == "backprojection"]
    trusted, = refine.trusted_views
    assert trusted.camera == convert.camera_to_proto(services.photo) and trusted.mask.uri and trusted.weight == 0.0
    assert trusted.image.uri == refine.reference.uri  # the photo itself
    m = result.metrics
    assert m["photo_weight_raised"] == 0.0 and m["input_view_psnr_change_db"] == pytest.approx(0.0, abs=1e-6)
    assert m["enhanced_view_error_after"] == 0.05 and "photometric_error_after" not in m
    assert 0.95 < m["input_view_ssim"] < 1.0 and 0.05 < m["matte_coverage"] < 0.9  # the noise costs a little SSIM


def test_a_round_that_costs_the_photo_is_fused_again_then_rejected(tmp_path):
    from glimpse3d.core.errors import RoundRejected

    photo = orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE)
    side = orbit_camera(120.0, 10.0, RADIUS, width=SIZE, height=SIZE)
    # Fused again with the photo weighted more, the round costs nothing: it stands, and says so.
    services = RoundServices(fake_store(tmp_path / "a"), photo, ["dark", "same"])
    result = _run_round(services, side)
    weights = [c[1].trusted_views[0].weight for c in services.calls if c[0] == "backprojection"]
    assert weights == [0.0, 4.0] and result.metrics["photo_weight_raised"] == 1.0
    # Still costly after the second fusion: rejected with the reason, no version.
    services = RoundServices(fake_store(tmp_path / "b"), photo, ["dark", "dark"])
    with pytest.raises(RoundRejected, match=r"would lower the input-view PSNR against the photo from \d") as err:
        _run_round(services, side)
    assert err.value.reason == "ROUND_REJECTED" and "model is unchanged" in err.value.message


def fake_store(path):
    path.mkdir(parents=True, exist_ok=True)
    return FileArtifactStore(path)


def test_auto_never_picks_the_photos_viewpoint_and_keeps_its_frame(tmp_path):
    """With no confidence anywhere every view ties; none within 30 degrees of the photo is picked even
    when the photo's side is the least confident, and every candidate has the photo's (wide) frame."""
    from glimpse3d.gateway.pipeline import AUTO_MIN_SEPARATION_DEG, pick_least_confident_view, separation_deg

    obj = synthetic.textured_object(seed=2, n=1500)
    for photo_az in (0.0, 90.0, 200.0):
        photo = orbit_camera(photo_az, 5.0, RADIUS, width=96, height=54)
        facing_photo = (obj.means @ photo.position) > 0
        conf = np.where(facing_photo, 0.0, 1.0).astype(np.float32)  # the photo's side looks least confident
        used: list[Camera] = []
        for _ in range(6):
            picked = pick_least_confident_view(obj.means, conf, photo, used)
            assert separation_deg(picked, photo) >= AUTO_MIN_SEPARATION_DEG, (photo_az, _angles(picked))
            assert (picked.width, picked.height) == (96, 54) and picked.fy == pytest.approx(photo.fy)
            used.append(picked)
    assert AUTO_MIN_SEPARATION_DEG == 30.0
    # Where this job's rounds were rejected "auto" does not look again (unless nothing else is left).
    photo = orbit_camera(0.0, 5.0, RADIUS, width=96, height=54)
    first = pick_least_confident_view(obj.means, None, photo, [])
    second = pick_least_confident_view(obj.means, None, photo, [], avoid=[first])
    assert separation_deg(first, second) > 1.0


def test_a_rejected_auto_round_is_not_tried_at_the_same_view_again(tmp_path):
    from glimpse3d.core.errors import RoundRejected
    from glimpse3d.core.feedback import round_rejection

    photo = orbit_camera(0.0, 0.0, RADIUS, width=SIZE, height=SIZE)
    services = RoundServices(fake_store(tmp_path), photo, ["dark", "dark", "dark", "dark"])
    pipeline, job = _round_job(services)
    from glimpse3d.gateway.jobs import RoundSpec

    views = []
    for _ in range(2):
        with pytest.raises(RoundRejected):
            asyncio.run(pipeline.run_round(job, RoundSpec(), _no_report))
        rendered = [c[1] for c in services.calls if c[0] == "render" and len(c[1].views) == 1]
        views.append(convert.camera_from_proto(rendered[-2].views[0].camera))  # the round's view, then the photo's
    from glimpse3d.gateway.pipeline import separation_deg

    assert separation_deg(views[0], views[1]) > 1.0
    assert round_rejection(30.0, 29.0) is not None


def test_novel_views_take_the_photos_frame(tmp_path):
    """A wide photo's novel views have its size and field of view (a square camera would crop it)."""
    store = fake_store(tmp_path)
    photo = orbit_camera(0.0, 0.0, RADIUS, width=96, height=54)
    services = FakeServices(store, photo)
    pipeline = ServicePipeline(GatewayConfig(), services, store)
    image = synthetic.render_image(services.obj, photo)
    job = SimpleNamespace(id="j", tenant="default", options=JobOptions(resolution=96, seed=5, num_views=2),
                          input_image=store.put(encode_png(image), "image/png"))
    asyncio.run(pipeline.run_initial(job, _no_report))
    (_, generate), = [c for c in services.calls if c[0] == "multiview"]
    cams = [convert.camera_from_proto(v.camera) for v in generate.views]
    assert [(c.width, c.height) for c in cams] == [(96, 54)] * 2
    assert all(c.fy == pytest.approx(photo.fy) for c in cams)
    assert [round(_angles(c)[0]) for c in cams] == [120, 240]


def test_only_extra_photo_versions_that_were_not_rejected_count_as_photos():
    """The cameras whose views the re-lift treats as observed: extra-photo versions, not enhancement
    rounds, and not a photo round whose fusion was rejected."""
    from datetime import UTC, datetime

    from glimpse3d.core.artifacts import ArtifactRef
    from glimpse3d.gateway.jobs import RoundReport, Version
    from glimpse3d.gateway.pipeline import photo_cameras

    splat = ArtifactRef("file:///splat.ply", "0" * 64, 1, "application/x-glimpse3d-splat+ply")

    def version(n: int, az: float, metrics: dict[str, float], rejected: bool = False) -> Version:
        cam = orbit_camera(az, 10.0, 2.7, width=32, height=32)
        return Version("job", n, splat, None, cam, RoundReport(rejected=rejected), metrics, datetime.now(UTC))

    versions = [version(2, 40.0, {"accepted_fraction": 1.0}), version(3, 180.0, {"extra_photo": 1.0}),
                version(4, 90.0, {"extra_photo": 1.0}, rejected=True)]
    cams = photo_cameras(versions)
    assert len(cams) == 1 and np.allclose(cams[0].position, versions[1].camera.position)
