"""Per-tenant quota and round-robin scheduling, through the in-process gateway over gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from test_gateway_app import PB, create, expect_error, gateway, is_done, run, wait_for

from glimpse3d.core.errors import Overloaded
from glimpse3d.core.rpc.errors import error_from_rpc


def test_another_tenants_job_starts_after_at_most_one_more_of_the_busy_tenants(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1, queue_size=100, max_jobs_per_tenant=0) as env:
            env.pipeline.gate.clear()  # the first job holds the only worker
            a_jobs = [await create(env, "tenant-a") for _ in range(12)]
            b_job = await create(env, "tenant-b")
            env.pipeline.gate.set()
            for job in a_jobs:
                await wait_for(env, job.name, is_done, "tenant-a")
            await wait_for(env, b_job.name, is_done, "tenant-b")
            started = [job_id for kind, job_id in env.pipeline.calls if kind == "initial"]
            ids = [job.name.removeprefix("jobs/") for job in a_jobs]
            b_id = b_job.name.removeprefix("jobs/")
            # a0 was running when b arrived; the worker then took a1 (a's turn), then b.
            assert started == [ids[0], ids[1], b_id, *ids[2:]], started

    run(body)


def test_tenant_quota_refuses_with_resource_exhausted_and_frees_on_completion(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path, workers=1, max_jobs_per_tenant=2) as env:
            env.pipeline.gate.clear()
            first = [await create(env, "busy") for _ in range(2)]
            err = await expect_error(create(env, "busy"), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "max_jobs_per_tenant = 2" in (err.details() or "")
            error = error_from_rpc(err)  # the details the gateway sent, read back as the domain error
            assert isinstance(error, Overloaded)
            assert error.metadata == {"quota": "max_jobs_per_tenant", "limit": "2", "tenant": "busy"}
            other = await create(env, "quiet")  # another tenant is not affected
            assert other.state == PB.Job.QUEUED
            env.pipeline.gate.set()
            for job in first:
                await wait_for(env, job.name, is_done, "busy")
            for _ in range(100):  # the job's task ends just after its state is written
                try:
                    await create(env, "busy")
                    break
                except grpc.aio.AioRpcError as again:
                    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("the quota was not freed when the jobs finished")

    run(body)
