"""The gateway application layer behind a real in-process grpc.aio server.

A small deterministic pipeline stands in for the five services: it writes real splats (numpy only)
to a file artifact store, reports progress, and can be held (to observe RUNNING, cancel, overload)
or told to fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from glimpse3d.core.artifacts import ArtifactRef, FileArtifactStore, content_key, tenant_scope
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.convert import artifact_to_proto
from glimpse3d.core.errors import InvalidInput, RoundRejected, Unavailable
from glimpse3d.core.formats import read_ply, read_splat, splat_to_ply_bytes
from glimpse3d.core.formats.glb import gaussians_to_splat, read_glb_gaussians
from glimpse3d.core.images import encode_png
from glimpse3d.core.rpc import create_server, rich_status_of
from glimpse3d.core.splat import Splat
from glimpse3d.gateway.app import GatewayApp, ProgressReporter
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.convert import report_from_proto, report_to_proto
from glimpse3d.gateway.jobs import Job, RoundReport, RoundSpec, VersionResult
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.v1 import common_pb2, glimpse3d_pb2, glimpse3d_pb2_grpc

PLY = "application/x-glimpse3d-splat+ply"
PB = glimpse3d_pb2
TIMEOUT = 10.0


class TestPipeline:
    """Deterministic stand-in for the real pipeline (version 1 = a coloured blob, rounds recolour it)."""

    __test__ = False

    def __init__(self, artifacts: FileArtifactStore) -> None:
        self.artifacts = artifacts
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_initial: Exception | None = None
        self.fail_round: Exception | None = None
        self.calls: list[tuple[str, str]] = []
        self.cancelled = 0

    async def _hold(self) -> None:
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def _put(self, splat: Splat) -> ArtifactRef:
        return self.artifacts.put(splat_to_ply_bytes(splat), PLY)

    async def run_initial(self, job: Job, report: ProgressReporter) -> VersionResult:
        with tenant_scope(job.tenant):  # as the real pipeline: the job's artifacts are its tenant's
            return await self._run_initial(job, report)

    async def run_round(self, job: Job, round_spec: RoundSpec, report: ProgressReporter) -> VersionResult:
        with tenant_scope(job.tenant):
            return await self._run_round(job, round_spec, report)

    async def _run_initial(self, job: Job, report: ProgressReporter) -> VersionResult:
        self.calls.append(("initial", job.id))
        await report("matting_depth", 0.3, "depth estimated")
        await self._hold()
        if self.fail_initial is not None:
            raise self.fail_initial
        rng = np.random.default_rng(job.options.seed)
        n = 32
        splat = Splat.from_colors(rng.normal(scale=0.3, size=(n, 3)), rng.uniform(0.1, 0.9, size=(n, 3)),
                                  0.05, 0.8, quats=rng.normal(size=(n, 4)), sh_degree=1)
        await report("reconstruct", 1.0, "splat fitted")
        return VersionResult(splat=self._put(splat), metrics={"num_gaussians": n, "input_view_psnr_db": 21.5})

    async def _run_round(self, job: Job, round_spec: RoundSpec, report: ProgressReporter) -> VersionResult:
        self.calls.append(("round", job.id))
        await report("enhance", 0.5, "view enhanced")
        await self._hold()
        if self.fail_round is not None:
            raise self.fail_round
        current = read_ply(self.artifacts.get(job.latest_version.splat))
        sh = current.sh.copy()
        sh[:, 0] += np.float32(0.01 * (round_spec.seed % 7 + 1))
        splat = Splat(current.means, current.quats, current.log_scales, current.opacity_logits, sh)
        camera = round_spec.camera or orbit_camera(45.0 * len(job.versions), 15.0, 2.7, width=64, height=64)
        confidence = self.artifacts.put(np.full(len(splat), 0.5, np.float32).tobytes(), "application/x-npy")
        await report("refine", 1.0, "fused")
        return VersionResult(splat=self._put(splat), confidence=confidence, camera=camera,
                             report=RoundReport(accepted_fraction=0.75, photometric_error_before=0.2,
                                                photometric_error_after=0.1, clip_score=0.9, steps=10,
                                                mean_confidence=0.5),
                             metrics={"seconds": 0.01})


@dataclass
class Env:
    app: GatewayApp
    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    pipeline: TestPipeline
    artifacts: FileArtifactStore
    config: GatewayConfig


def png(seed: int = 0, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))


def md(tenant: str = "acme") -> tuple[tuple[str, str], ...]:
    return (("x-glimpse3d-tenant", tenant),)


@asynccontextmanager
async def gateway(tmp_path: Path, pipeline: TestPipeline | None = None, **overrides: object) -> AsyncIterator[Env]:
    config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(tmp_path / "artifacts"),
                           **overrides)
    store = JobStore(config.db_path)
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    pipeline = pipeline or TestPipeline(artifacts)
    app = GatewayApp(config, store, artifacts, pipeline)
    await app.start()
    server, port = create_server([(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, Glimpse3DServicer(app))],
                                 [SERVICE_NAME], metrics_port=None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(app, glimpse3d_pb2_grpc.Glimpse3DStub(channel), pipeline, artifacts, config)
    finally:
        await channel.close()
        await server.stop(0)
        await app.close()
        store.close()


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 30))  # type: ignore[arg-type]


async def create(env: Env, tenant: str = "acme", **kwargs: object) -> PB.Job:
    kwargs.setdefault("image_data", png())
    return await env.stub.CreateJob(PB.CreateJobRequest(**kwargs), metadata=md(tenant), timeout=TIMEOUT)


async def get(env: Env, name: str, tenant: str = "acme") -> PB.Job:
    return await env.stub.GetJob(PB.GetJobRequest(name=name), metadata=md(tenant), timeout=TIMEOUT)


async def wait_for(env: Env, name: str, predicate: Callable[[PB.Job], bool], tenant: str = "acme") -> PB.Job:
    deadline = time.monotonic() + TIMEOUT
    while True:
        job = await get(env, name, tenant)
        if predicate(job):
            return job
        assert time.monotonic() < deadline, f"timed out; job is {PB.Job.State.Name(job.state)}"
        await asyncio.sleep(0.01)


async def read_rest(call: grpc.aio.UnaryStreamCall) -> list[PB.JobEvent]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


def is_done(job: PB.Job) -> bool:
    return job.done


def is_running(job: PB.Job) -> bool:
    return job.state == PB.Job.RUNNING


async def expect_error(call: object, code: grpc.StatusCode, field: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    err = info.value
    assert err.code() == code, (err.code(), err.details())
    if field is not None:
        status = rich_status_of(err)
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
        assert bad.field_violations[0].field == field
    return err


# ---- the happy path -------------------------------------------------------------------------------


def test_job_lifecycle_with_watch(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            env.pipeline.gate.clear()
            job = await create(env, options=PB.JobOptions(enhance_rounds=2, seed=5, prompt="a mug"),
                               display_name="mug", request_id="req-1")
            assert job.state == PB.Job.QUEUED and not job.done and job.name.startswith("jobs/")
            assert job.tenant == "acme" and job.display_name == "mug" and job.options.enhance_rounds == 2
            assert job.input_image.media_type == "image/png" and job.input_image.size == len(png())
            stream = env.stub.WatchJob(PB.WatchJobRequest(name=job.name), metadata=md(), timeout=TIMEOUT)
            first = await stream.read()
            assert first.kind == "snapshot" and first.job.name == job.name
            env.pipeline.gate.set()
            events = [first] + await read_rest(stream)
            final = events[-1].job
            assert final.state == PB.Job.SUCCEEDED and final.done and final.progress.fraction == pytest.approx(1.0)
            kinds = [e.kind for e in events]
            assert kinds.count("version") == 3 and "progress" in kinds and "state" in kinds
            fractions = [e.job.progress.fraction for e in events if e.kind == "progress"]
            assert fractions == sorted(fractions) and 0 < fractions[0] < 1
            assert [v.name for v in final.versions] == [f"{job.name}/versions/{n}" for n in (1, 2, 3)]
            v1, v2 = final.versions[0], final.versions[1]
            assert not v1.HasField("camera") and not v1.HasField("report")
            assert v1.metrics["num_gaussians"] == 32 and v1.splat.media_type == PLY
            assert v2.HasField("camera") and len(v2.camera.world_to_camera) == 16
            assert v2.report.accepted_fraction == pytest.approx(0.75) and v2.report.HasField("clip_score")
            assert v2.confidence.media_type == "application/x-npy"
            assert (await get(env, job.name)) == final
            # Watching a finished job yields its snapshot and ends.
            again = [e async for e in env.stub.WatchJob(PB.WatchJobRequest(name=job.name), metadata=md())]
            assert [e.kind for e in again] == ["snapshot"] and again[0].job.done

    run(body)


def test_create_from_artifact_ref_and_idempotency(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            with tenant_scope("acme"):
                ref = env.artifacts.put(png(3), "image/png")
            job = await create(env, image_data=None, image=artifact_to_proto(ref), request_id="same")
            assert job.input_image.sha256 == ref.sha256
            # A retry of the same request returns the original job (AIP-155); another payload is refused.
            again = await create(env, image_data=None, image=artifact_to_proto(ref), request_id="same")
            assert again.name == job.name and again.display_name == "" and again.input_image.sha256 == ref.sha256
            await expect_error(create(env, image_data=png(9), request_id="same", display_name="other"),
                               grpc.StatusCode.ALREADY_EXISTS, "request_id")
            other = await create(env, tenant="globex", request_id="same")
            assert other.name != job.name
            anonymous = await env.stub.CreateJob(PB.CreateJobRequest(image_data=png(), request_id="same"))
            assert anonymous.tenant == "default" and anonymous.name not in (job.name, other.name)
            listed = await env.stub.ListJobs(PB.ListJobsRequest(), metadata=md(), timeout=TIMEOUT)
            assert [j.name for j in listed.jobs] == [job.name]
            await wait_for(env, job.name, is_done)

    run(body)


def test_list_jobs_paging_and_tokens(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            names = [(await create(env)).name for _ in range(5)]
            await create(env, tenant="globex")
            seen, token = [], ""
            for _ in range(3):
                page = await env.stub.ListJobs(PB.ListJobsRequest(page_size=2, page_token=token), metadata=md())
                seen += [j.name for j in page.jobs]
                token = page.next_page_token
            assert token == "" and seen == list(reversed(names))
            first = await env.stub.ListJobs(PB.ListJobsRequest(page_size=2), metadata=md())
            await expect_error(env.stub.ListJobs(PB.ListJobsRequest(page_token="forged"), metadata=md()),
                               grpc.StatusCode.INVALID_ARGUMENT, "page_token")
            err = await expect_error(
                env.stub.ListJobs(PB.ListJobsRequest(page_token=first.next_page_token), metadata=md("globex")),
                grpc.StatusCode.INVALID_ARGUMENT, "page_token")
            assert err.details() == "page_token is invalid"
            await expect_error(env.stub.ListJobs(PB.ListJobsRequest(page_size=-1), metadata=md()),
                               grpc.StatusCode.INVALID_ARGUMENT, "page_size")
            for name in names:
                await wait_for(env, name, is_done)

    run(body)


# ---- validation and errors ------------------------------------------------------------------------


def test_bad_requests_and_names(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            invalid = grpc.StatusCode.INVALID_ARGUMENT
            truncated = png(1, 64)[:-40]
            for image, why in ((b"", "empty"), (b"hello, not an image", "not a PNG"), (truncated, "")):
                err = await expect_error(create(env, image_data=image), invalid, "image_data")
                assert why in err.details()
            await expect_error(env.stub.CreateJob(PB.CreateJobRequest(), metadata=md()), invalid, "image_data")
            for options, field in ((PB.JobOptions(num_views=17), "options.num_views"),
                                   (PB.JobOptions(enhance_rounds=11), "options.enhance_rounds"),
                                   (PB.JobOptions(resolution=32), "options.resolution"),
                                   (PB.JobOptions(prompt="p" * 1001), "options.prompt")):
                await expect_error(create(env, options=options), invalid, field)
            await expect_error(create(env, request_id="r" * 129), invalid, "request_id")
            await expect_error(create(env, display_name="d" * 201), invalid, "display_name")
            absent = "0" * 64
            missing = common_pb2.ArtifactRef(uri=f"artifact:///{content_key(absent, tenant='acme')}",
                                             sha256=absent, size=1, media_type="image/png")
            await expect_error(create(env, image_data=None, image=missing), grpc.StatusCode.NOT_FOUND, "image.uri")
            foreign = common_pb2.ArtifactRef(uri=f"s3://elsewhere/sha256/00/{absent}", sha256=absent, size=1,
                                             media_type="image/png")
            await expect_error(create(env, image_data=None, image=foreign), invalid, "image")
            with tenant_scope("acme"):
                not_image = artifact_to_proto(env.artifacts.put(b"just text", "text/plain"))
            await expect_error(create(env, image_data=None, image=not_image), invalid, "image")
            await expect_error(create(env, tenant="bad tenant!"), invalid, "x-glimpse3d-tenant")
            for bad_name in ("job/abc", "jobs/", "abc", "jobs/a b"):
                await expect_error(get(env, bad_name), invalid, "name")
            await expect_error(get(env, "jobs/unknown"), grpc.StatusCode.NOT_FOUND)
            job = await create(env)
            await expect_error(get(env, job.name, tenant="globex"), grpc.StatusCode.NOT_FOUND)
            await expect_error(env.stub.CancelJob(PB.CancelJobRequest(name="jobs/nope"), metadata=md()),
                               grpc.StatusCode.NOT_FOUND)
            stream = env.stub.WatchJob(PB.WatchJobRequest(name="jobs/nope"), metadata=md())
            await expect_error(stream.read(), grpc.StatusCode.NOT_FOUND)
            await wait_for(env, job.name, is_done)
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=job.name), metadata=md()), invalid, "view")
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True, strength=2.0),
                                                metadata=md()), invalid, "strength")
            bad_view = common_pb2.ViewSpec(camera=common_pb2.Camera(world_to_camera=[1.0] * 3))
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=job.name, view=bad_view), metadata=md()),
                               invalid, "view.camera.world_to_camera")
            await expect_error(env.stub.Export(PB.ExportRequest(name=job.name), metadata=md()), invalid, "format")
            v9 = PB.ExportRequest(name=f"{job.name}/versions/9", format=PB.ExportRequest.PLY)
            await expect_error(env.stub.Export(v9, metadata=md()), grpc.StatusCode.NOT_FOUND)
            assert (await get(env, job.name)).state == PB.Job.SUCCEEDED  # still serving

    run(body)


def test_pipeline_failures_are_recorded(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            env.pipeline.fail_initial = Unavailable("depth service unavailable")
            failed = await wait_for(env, (await create(env)).name, is_done)
            assert failed.state == PB.Job.FAILED and failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert failed.error.message == "depth service unavailable"
            info = error_details_pb2.ErrorInfo()
            assert failed.error.details[0].Unpack(info) and info.reason == "UNAVAILABLE"
            env.pipeline.fail_initial = RuntimeError("secret internals")
            crashed = await wait_for(env, (await create(env)).name, is_done)
            assert crashed.state == PB.Job.FAILED and crashed.error.code == grpc.StatusCode.INTERNAL.value[0]
            assert "secret" not in crashed.error.message and "internal error (ref" in crashed.error.message
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=failed.name, auto=True), metadata=md()),
                               grpc.StatusCode.FAILED_PRECONDITION)
            await expect_error(env.stub.Export(PB.ExportRequest(name=failed.name, format=PB.ExportRequest.GLB),
                                               metadata=md()), grpc.StatusCode.FAILED_PRECONDITION)

    run(body)


# ---- cancellation and overload --------------------------------------------------------------------


def test_cancel_running_and_queued_jobs(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1) as env:
            env.pipeline.gate.clear()
            running = await create(env)
            await wait_for(env, running.name, is_running)
            queued = await create(env)
            cancelled = await env.stub.CancelJob(PB.CancelJobRequest(name=queued.name), metadata=md())
            assert cancelled.state == PB.Job.CANCELLED and cancelled.done
            assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
            stopped = await env.stub.CancelJob(PB.CancelJobRequest(name=running.name), metadata=md())
            assert stopped.state == PB.Job.CANCELLED and env.pipeline.cancelled == 1  # the downstream call too
            again = await env.stub.CancelJob(PB.CancelJobRequest(name=running.name), metadata=md())
            assert again.state == PB.Job.CANCELLED and again.update_time == stopped.update_time  # no-op
            env.pipeline.gate.set()
            after = await wait_for(env, (await create(env)).name, is_done)  # the worker is free again
            assert after.state == PB.Job.SUCCEEDED
            assert ("initial", queued.name.split("/")[1]) not in env.pipeline.calls
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=running.name, auto=True), metadata=md()),
                               grpc.StatusCode.FAILED_PRECONDITION)

    run(body)


def test_overload_answers_resource_exhausted(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1, queue_size=1) as env:
            env.pipeline.gate.clear()
            first = await create(env)
            await wait_for(env, first.name, is_running)
            second = await create(env, request_id="second")
            err = await expect_error(create(env), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert err.details() == "gateway queue is full (1 jobs); retry later"
            retried = await create(env, request_id="second")  # an idempotent retry still answers
            assert retried.name == second.name
            env.pipeline.gate.set()
            for name in (first.name, second.name):
                assert (await wait_for(env, name, is_done)).state == PB.Job.SUCCEEDED
            assert (await wait_for(env, (await create(env)).name, is_done)).state == PB.Job.SUCCEEDED

    run(body)


# ---- enhancement rounds ---------------------------------------------------------------------------


def test_enhance_rounds(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, max_pending_rounds=2) as env:
            env.pipeline.gate.clear()
            job = await create(env)
            await wait_for(env, job.name, is_running)
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True), metadata=md()),
                               grpc.StatusCode.FAILED_PRECONDITION)  # no version yet
            env.pipeline.gate.set()
            await wait_for(env, job.name, is_done)
            env.pipeline.gate.clear()
            orbit = common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=90, elevation_deg=20, width=64,
                                                                   height=48))
            started = await env.stub.Enhance(PB.EnhanceRequest(name=job.name, view=orbit, prompt="shiny",
                                                               strength=0.5, seed=3, request_id="click-1"),
                                             metadata=md())
            assert started.state == PB.Job.RUNNING and not started.done and started.progress.stage == "enhance"
            dup = await env.stub.Enhance(PB.EnhanceRequest(name=job.name, view=orbit, prompt="shiny", strength=0.5,
                                                           seed=3, request_id="click-1"), metadata=md())
            assert dup.state == PB.Job.RUNNING
            queued = await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True, request_id="click-2"),
                                            metadata=md())
            assert queued.state == PB.Job.RUNNING
            await expect_error(env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True), metadata=md()),
                               grpc.StatusCode.RESOURCE_EXHAUSTED)  # max_pending_rounds = 2
            env.pipeline.gate.set()
            done = await wait_for(env, job.name, is_done)
            assert done.state == PB.Job.SUCCEEDED and len(done.versions) == 3 and not done.HasField("error")
            expected = orbit_camera(90, 20, 2.7, width=64, height=48, fov_y_deg=40.0)
            assert np.allclose(done.versions[1].camera.world_to_camera, expected.world_to_camera.reshape(-1))
            assert done.versions[1].camera.intrinsics.width == 64
            assert [c[0] for c in env.pipeline.calls] == ["initial", "round", "round"]

    run(body)


def test_restore_goes_on_from_an_earlier_version(tmp_path: Path) -> None:
    """RestoreVersion adds a copy of an earlier version (the same stored splat and confidence, its own
    figures, metric restored_from) without calling the pipeline; the next round starts from that copy."""
    async def body() -> None:
        async with gateway(tmp_path) as env:
            job = await wait_for(env, (await create(env)).name, is_done)
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True, seed=1), metadata=md())
            two = await wait_for(env, job.name, lambda j: j.done and len(j.versions) == 2)
            calls = len(env.pipeline.calls)
            req = PB.RestoreVersionRequest(name=f"{job.name}/versions/1", request_id="undo-1")
            await env.stub.RestoreVersion(req, metadata=md())
            await env.stub.RestoreVersion(req, metadata=md())  # the same request id: no second copy
            three = await wait_for(env, job.name, lambda j: j.done and len(j.versions) == 3)
            first, restored = three.versions[0], three.versions[2]
            assert restored.splat.sha256 == first.splat.sha256 != two.versions[1].splat.sha256
            assert restored.metrics["restored_from"] == 1.0
            assert restored.metrics["input_view_psnr_db"] == first.metrics["input_view_psnr_db"]
            assert "seconds" not in restored.metrics and not restored.HasField("report")
            assert not restored.HasField("camera") and len(env.pipeline.calls) == calls  # no model work
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True, seed=1), metadata=md())
            four = await wait_for(env, job.name, lambda j: j.done and len(j.versions) == 4)
            assert four.versions[3].splat.sha256 == two.versions[1].splat.sha256  # version 1 enhanced again
            for name, code, field in (
                (f"{job.name}/versions/9", grpc.StatusCode.NOT_FOUND, "name"),
                (job.name, grpc.StatusCode.INVALID_ARGUMENT, "name"),
                ("jobs/missing/versions/1", grpc.StatusCode.NOT_FOUND, None),
                ("versions/1", grpc.StatusCode.INVALID_ARGUMENT, "name"),
            ):
                await expect_error(env.stub.RestoreVersion(PB.RestoreVersionRequest(name=name), metadata=md()),
                                   code, field)
            await expect_error(env.stub.RestoreVersion(PB.RestoreVersionRequest(name=f"{job.name}/versions/1"),
                                                       metadata=md("other")), grpc.StatusCode.NOT_FOUND)

    run(body)


def test_a_restore_round_round_trips_and_other_rounds_keep_their_request_hash() -> None:
    """Stored request hashes identify retries across releases: an enhance round's must not change because
    rounds can now restore (the literal is the hash from before RestoreVersion existed)."""
    from glimpse3d.gateway.store.jobs import round_request_hash

    enhance = RoundSpec(seed=3, prompt="p", request_id="a")
    assert round_request_hash(enhance) == "2d3bd82d7ca8eb94621ab3525f47f7c4e28468532b5141c9b98b2ee509f32a17"
    restore = RoundSpec(restore_version=2, request_id="a")
    assert RoundSpec.from_json(restore.to_json()) == restore and RoundSpec.from_json(enhance.to_json()) == enhance
    assert round_request_hash(restore) != round_request_hash(RoundSpec(restore_version=1, request_id="a"))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidInput, match="version to restore"):
            RoundSpec(restore_version=bad)  # type: ignore[arg-type]


def test_lineage_follows_restores() -> None:
    from datetime import UTC, datetime

    from glimpse3d.gateway.jobs import Version, lineage

    ref = ArtifactRef("file:///x", "0" * 64, 1, PLY)

    def v(n: int, **metrics: float) -> Version:
        return Version("j", n, ref, None, None, None, metrics, datetime.now(UTC))

    chain = [v(1), v(2), v(3), v(4, restored_from=2), v(5), v(6, restored_from=5), v(7, restored_from=1), v(8)]
    assert [x.number for x in lineage(chain[:3])] == [1, 2, 3]
    assert [x.number for x in lineage(chain[:5])] == [1, 2, 4, 5]
    assert [x.number for x in lineage(chain[:6])] == [1, 2, 4, 5, 6]
    assert [x.number for x in lineage(chain)] == [1, 7, 8]
    assert lineage([]) == []
    assert [x.number for x in lineage([v(1), v(2, restored_from=2)])] == [1, 2]  # a bad mark cannot loop


def test_failed_and_cancelled_rounds_keep_versions(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            job = await wait_for(env, (await create(env)).name, is_done)
            env.pipeline.fail_round = Unavailable("diffusion service unavailable")
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True), metadata=md())
            after_fail = await wait_for(env, job.name, lambda j: j.done and j.HasField("error"))
            assert after_fail.state == PB.Job.SUCCEEDED and len(after_fail.versions) == 1
            assert after_fail.error.message == "diffusion service unavailable"
            env.pipeline.fail_round = None
            env.pipeline.gate.clear()
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True), metadata=md())
            await wait_for(env, job.name, lambda j: j.progress.stage == "enhance" and j.progress.fraction > 0)
            cancelled = await env.stub.CancelJob(PB.CancelJobRequest(name=job.name), metadata=md())
            assert cancelled.state == PB.Job.SUCCEEDED and len(cancelled.versions) == 1
            assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
            env.pipeline.gate.set()
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True), metadata=md())
            final = await wait_for(env, job.name, lambda j: j.done and len(j.versions) == 2)
            assert not final.HasField("error")  # a new round clears the last round's error

    run(body)


def test_a_rejected_round_adds_no_version_and_the_rounds_behind_it_still_run(tmp_path: Path) -> None:
    """RoundRejected (the round would have cost the photo) pops that round only: no version, the error
    says why until the next Enhance, and the automatic rounds queued behind it run."""

    class RejectFirst(TestPipeline):
        __test__ = False

        async def run_round(self, job: Job, round_spec: RoundSpec, report: ProgressReporter) -> VersionResult:
            if not any(kind == "round" for kind, _ in self.calls):
                self.calls.append(("round", job.id))
                raise RoundRejected("the round would lower the input-view PSNR against the photo from 30 to 29 dB")
            return await super().run_round(job, round_spec, report)

    async def body() -> None:
        async with gateway(tmp_path, RejectFirst(FileArtifactStore(tmp_path / "artifacts"))) as env:
            job = await create(env, options=PB.JobOptions(enhance_rounds=3))
            done = await wait_for(env, job.name, is_done)
            assert done.state == PB.Job.SUCCEEDED and len(done.versions) == 3  # v1 + rounds 2 and 3
            assert [k for k, _ in env.pipeline.calls].count("round") == 3
            assert "would lower the input-view PSNR" in done.error.message
            assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, auto=True), metadata=md())
            final = await wait_for(env, job.name, lambda j: j.done and len(j.versions) == 4)
            assert not final.HasField("error")

    run(body)


# ---- export ---------------------------------------------------------------------------------------


def read_export(env: Env, export: PB.ExportResponse) -> bytes:
    """The exported bytes (the file store's download_url is a link to the HTTP facade, which
    tests/service/test_tenant_artifacts.py follows)."""
    assert export.download_url.startswith("/api/v1/jobs/") and "sig=" not in export.download_url  # no auth here
    with tenant_scope("acme"):
        return env.artifacts.get(ArtifactRef(export.artifact.uri, export.artifact.sha256, export.artifact.size,
                                             export.artifact.media_type))


def test_export_formats(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, presign_expiry_s=600) as env:
            job = await wait_for(env, (await create(env, options=PB.JobOptions(enhance_rounds=1))).name, is_done)
            v1 = read_ply(env.artifacts.get(ArtifactRef(**{f: getattr(job.versions[0].splat, f) for f in
                                                          ("uri", "sha256", "size", "media_type")})))
            before = time.time()
            results = {}
            for fmt in (PB.ExportRequest.PLY, PB.ExportRequest.SPLAT, PB.ExportRequest.GLB):
                results[fmt] = await env.stub.Export(PB.ExportRequest(name=f"{job.name}/versions/1", format=fmt),
                                                     metadata=md())
            ply, web, glb = results.values()
            assert [r.version for r in results.values()] == [f"{job.name}/versions/1"] * 3
            assert ply.artifact.media_type == PLY and web.artifact.media_type == "application/x-glimpse3d-splat"
            assert glb.artifact.media_type == "model/gltf-binary"
            assert read_ply(read_export(env, ply)).allclose(v1)
            assert np.allclose(np.sort(read_splat(read_export(env, web)).means, axis=0),
                               np.sort(v1.means, axis=0))
            from_glb = gaussians_to_splat(read_glb_gaussians(read_export(env, glb)))
            assert np.allclose(from_glb.means, v1.means) and np.allclose(from_glb.sh, v1.sh)
            assert abs(glb.expire_time.seconds - (before + 600)) < 5
            latest = await env.stub.Export(PB.ExportRequest(name=job.name, format=PB.ExportRequest.PLY),
                                           metadata=md())
            assert latest.version == f"{job.name}/versions/2" and latest.artifact.sha256 == job.versions[1].splat.sha256
            await expect_error(env.stub.Export(PB.ExportRequest(name=job.name, format=PB.ExportRequest.PLY),
                                               metadata=md("globex")), grpc.StatusCode.NOT_FOUND)

    run(body)


# ---- restart, watch lifetime, conversions ---------------------------------------------------------


def test_restart_resumes_interrupted_jobs(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1) as env:
            env.pipeline.gate.clear()
            running = await create(env, options=PB.JobOptions(enhance_rounds=1))
            await wait_for(env, running.name, is_running)
            queued = await create(env)
        # The first gateway is gone (its work was cancelled, its state kept); a new one resumes.
        async with gateway(tmp_path, workers=2) as env:
            for name in (running.name, queued.name):
                job = await wait_for(env, name, is_done)
                assert job.state == PB.Job.SUCCEEDED
            assert len((await get(env, running.name)).versions) == 2
            listed = await env.stub.ListJobs(PB.ListJobsRequest(), metadata=md())
            assert [j.name for j in listed.jobs] == [queued.name, running.name]

    run(body)


def test_watch_unsubscribes_when_client_goes_away(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            env.pipeline.gate.clear()
            job = await create(env)
            await wait_for(env, job.name, is_running)
            job_id = job.name.split("/")[1]
            call = env.stub.WatchJob(PB.WatchJobRequest(name=job.name), metadata=md())
            assert (await call.read()).kind == "snapshot"
            assert env.app.events.subscriber_count(job_id) == 1
            call.cancel()
            deadline = time.monotonic() + TIMEOUT
            while env.app.events.subscriber_count(job_id):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            env.pipeline.gate.set()
            assert (await wait_for(env, job.name, is_done)).state == PB.Job.SUCCEEDED

    run(body)


def test_report_conversion_round_trip() -> None:
    report = RoundReport(accepted_fraction=0.5, photometric_error_before=0.3, photometric_error_after=0.2,
                         clip_score=None, clip_note="skipped", rejected=True, steps=7, mean_confidence=0.25)
    msg = report_to_proto(report)
    assert not msg.HasField("clip_score") and report_from_proto(msg) == report
    scored = RoundReport(clip_score=0.875)
    assert report_from_proto(report_to_proto(scored)) == scored
