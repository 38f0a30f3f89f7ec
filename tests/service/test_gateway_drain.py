"""The gateway on SIGTERM (glimpse3d.gateway.app.GatewayApp.drain through the server's shutdown): it
stops taking work (CreateJob and Enhance answer UNAVAILABLE, health says NOT_SERVING), lets the version
in flight finish within the grace period, and leaves the rest of its jobs for the next holder, which
completes them. Also: a round that failed after the retry budget can be requested again, and the job
keeps its versions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_gateway_app import TestPipeline, expect_error, md, png

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.errors import Unavailable
from glimpse3d.core.rpc import Server, create_server
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext, create_app
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc

TIMEOUT = 10.0


@asynccontextmanager
async def gateway(
    tmp_path: Path,
    pipeline: TestPipeline | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[GatewayApp, Server, glimpse3d_pb2_grpc.Glimpse3DStub, grpc.aio.Channel, TestPipeline]]:
    """An app behind a real server wired like the gateway process (``server.on_drain(app.drain)``)."""
    config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(tmp_path / "artifacts"), **overrides)
    store = JobStore(config.db_path)
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    pipeline = pipeline or TestPipeline(artifacts)
    app = GatewayApp(config, store, artifacts, pipeline)
    await app.start()
    server, port = create_server(
        [(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, Glimpse3DServicer(app))],
        [SERVICE_NAME],
        metrics_port=None,
    )
    server.on_drain(app.drain)
    await server.start()
    await server.set_serving()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield app, server, glimpse3d_pb2_grpc.Glimpse3DStub(channel), channel, pipeline
    finally:
        await channel.close()
        await server.stop(0)
        await app.close()
        store.close()


async def get(stub: glimpse3d_pb2_grpc.Glimpse3DStub, name: str) -> pb.Job:
    return await stub.GetJob(pb.GetJobRequest(name=name), metadata=md(), timeout=TIMEOUT)


async def wait_for(stub: glimpse3d_pb2_grpc.Glimpse3DStub, name: str, predicate, what: str) -> pb.Job:
    deadline = time.monotonic() + TIMEOUT
    while not predicate(job := await get(stub, name)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {job}"
        await asyncio.sleep(0.01)
    return job


@asynccontextmanager
async def http_client(app: GatewayApp) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP facade over ``app``, in process."""
    context = HttpContext(app, app._artifacts)  # the app's own store
    transport = httpx.ASGITransport(app=create_app(context, web_dir=None))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def run(body) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


def test_sigterm_refuses_new_work_finishes_the_version_in_flight_and_hands_the_rest_on(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1) as (app, server, stub, channel, pipeline):
            pipeline.gate.clear()
            async with http_client(app) as http:
                assert (await http.get("/api/v1/healthz")).json() == {"status": "ok"}
            running = await stub.CreateJob(
                pb.CreateJobRequest(image_data=png(), options=pb.JobOptions(enhance_rounds=1)),
                metadata=md(),
                timeout=TIMEOUT,
            )
            await wait_for(stub, running.name, lambda j: j.state == pb.Job.RUNNING, "the job to run")
            queued = await stub.CreateJob(pb.CreateJobRequest(image_data=png(1)), metadata=md(), timeout=TIMEOUT)
            stopping = asyncio.create_task(server.stop(grace=20.0))  # what SIGTERM starts
            health = health_pb2_grpc.HealthStub(channel)
            await asyncio.sleep(0.2)
            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)  # pyright: ignore
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            async with http_client(app) as http:  # the HTTP facade's health says so too
                answer = await http.get("/api/v1/healthz")
                assert (answer.status_code, answer.json()) == (503, {"status": "draining"})
            err = await expect_error(
                stub.CreateJob(pb.CreateJobRequest(image_data=png(2)), metadata=md(), timeout=TIMEOUT),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert "shutting down" in (err.details() or "")
            await expect_error(
                stub.Enhance(pb.EnhanceRequest(name=running.name, auto=True), metadata=md(), timeout=TIMEOUT),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert (await get(stub, running.name)).state == pb.Job.RUNNING  # reads still answered
            assert not stopping.done()  # waiting for the version in flight
            pipeline.gate.set()
            began = time.monotonic()
            await asyncio.wait_for(stopping, 10)
            assert time.monotonic() - began < 5.0  # it stopped as soon as the version was stored, not at the grace
        assert [kind for kind, _ in pipeline.calls] == ["initial"]  # the auto round was not started here
        # The next holder (a restarted gateway, or another replica) completes both jobs.
        async with gateway(tmp_path, workers=2) as (_, _, stub, _, pipeline):
            done = await wait_for(stub, running.name, lambda j: j.done, "the first job")
            assert done.state == pb.Job.SUCCEEDED and len(done.versions) == 2
            other = await wait_for(stub, queued.name, lambda j: j.done, "the queued job")
            assert other.state == pb.Job.SUCCEEDED and len(other.versions) == 1
            assert sorted(kind for kind, _ in pipeline.calls) == ["initial", "round"]

    run(body)


def test_a_version_longer_than_the_grace_is_cut_and_resumed(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1) as (_, server, stub, _, pipeline):
            pipeline.gate.clear()
            job = await stub.CreateJob(pb.CreateJobRequest(image_data=png()), metadata=md(), timeout=TIMEOUT)
            await wait_for(stub, job.name, lambda j: j.state == pb.Job.RUNNING, "the job to run")
            began = time.monotonic()
            await server.stop(grace=0.5)
            assert 0.4 <= time.monotonic() - began < 5.0
        async with gateway(tmp_path) as (_, _, stub, _, _):
            done = await wait_for(stub, job.name, lambda j: j.done, "the resumed job")
            assert done.state == pb.Job.SUCCEEDED and len(done.versions) == 1

    run(body)


def test_a_round_that_failed_after_the_budget_can_be_requested_again(tmp_path: Path) -> None:
    """The same round (same view and seed) asked again after it failed: the versions are intact and
    the retry adds the version the failed round would have."""

    async def body() -> None:
        async with gateway(tmp_path) as (_, _, stub, _, pipeline):
            job = await stub.CreateJob(
                pb.CreateJobRequest(image_data=png(), options=pb.JobOptions(enhance_rounds=1)),
                metadata=md(),
                timeout=TIMEOUT,
            )
            first = await wait_for(stub, job.name, lambda j: j.done, "version 2")
            assert len(first.versions) == 2
            pipeline.fail_round = Unavailable("the backprojection service was unavailable for 120.0 s (9 attempts)")
            request = pb.EnhanceRequest(name=job.name, auto=True, seed=3, request_id="round-3-try-1")
            await stub.Enhance(request, metadata=md(), timeout=TIMEOUT)
            failed = await wait_for(stub, job.name, lambda j: j.done and j.HasField("error"), "the failed round")
            assert failed.state == pb.Job.SUCCEEDED
            assert [v.splat.sha256 for v in failed.versions] == [v.splat.sha256 for v in first.versions]
            assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "unavailable for 120.0 s" in failed.error.message
            pipeline.fail_round = None
            # The same request id names the same (failed) round: a duplicate, nothing new starts.
            again = await stub.Enhance(request, metadata=md(), timeout=TIMEOUT)
            assert again.done and len(again.versions) == 2
            retry = pb.EnhanceRequest(name=job.name, auto=True, seed=3, request_id="round-3-try-2")
            await stub.Enhance(retry, metadata=md(), timeout=TIMEOUT)
            final = await wait_for(stub, job.name, lambda j: j.done and len(j.versions) == 3, "the retried round")
            assert not final.HasField("error")
            assert [v.splat.sha256 for v in final.versions[:2]] == [v.splat.sha256 for v in first.versions]
            assert [kind for kind, _ in pipeline.calls].count("round") == 3

    run(body)
