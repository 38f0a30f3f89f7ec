"""A tenant deletes its own data (``DeleteTenantData`` over gRPC, ``DELETE /api/v1/tenant`` over HTTP),
through a real gRPC server and HTTP facade on 127.0.0.1 with API-key authentication, the test pipeline
of test_gateway_app, a SQLite job store and the file or S3 (moto) artifact store:

* the caller's tenant only: another tenant's jobs and artifacts stay, and naming another tenant is refused;
* ``confirm`` must repeat the tenant (INVALID_ARGUMENT / 400 naming ``confirm``), credentials are required;
* a running job is cancelled first; the caller's API keys stay unless ``delete_api_keys``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx2 as httpx
import pytest
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (registers the s3_server fixture)
from service_harness import gateway_listeners
from test_gateway_app import TestPipeline, expect_error, png

from glimpse3d.core.artifacts import ArtifactStore, FileArtifactStore, S3ArtifactStore, tenant_scope
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.auth import AuthInterceptor, TicketSigner, authenticator_from_config, create_key
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext
from glimpse3d.gateway.servicer import Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc

PB = glimpse3d_pb2
API = "/api/v1"
TIMEOUT = 10.0


@dataclass
class Env:
    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    http: httpx.AsyncClient
    pipeline: TestPipeline
    artifacts: ArtifactStore
    keys: dict[str, str]
    keys_file: Path

    def md(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.keys[tenant]),)


@pytest.fixture(params=["file", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return FileArtifactStore(tmp_path / "artifacts")
    server: S3Server = request.getfixturevalue("s3_server")
    return S3ArtifactStore(server.endpoint, server.access_key, server.secret_key, f"t-{uuid.uuid4().hex[:16]}",
                           prefix="glimpse", region=server.region)


@asynccontextmanager
async def gateway(tmp_path: Path, artifacts: ArtifactStore) -> AsyncIterator[Env]:
    keys_file = tmp_path / "api-keys.json"
    keys = {tenant: create_key(keys_file, tenant, "test") for tenant in ("acme", "globex")}
    config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(tmp_path / "artifacts"), workers=2,
                           auth_mode="api_key", auth_api_keys_file=keys_file)
    auth = authenticator_from_config(config, ["127.0.0.1"])
    assert auth is not None
    store = JobStore(config.db_path)
    pipeline = TestPipeline(artifacts)  # type: ignore[arg-type]  # put/get only: any store does
    app = GatewayApp(config, store, artifacts, pipeline)
    await app.start()
    tickets = TicketSigner()
    context = HttpContext(app, artifacts, heartbeat_s=0.2, auth=auth, tickets=tickets)
    try:
        async with gateway_listeners(Glimpse3DServicer(app, tickets), context, tmp_path / "no-web", TIMEOUT,
                                     [AuthInterceptor(auth)]) as listeners:
            yield Env(listeners.stub, listeners.http, pipeline, artifacts, keys, keys_file)
    finally:
        await app.close()
        store.close()


async def create(env: Env, tenant: str, seed: int = 0) -> PB.Job:
    return await env.stub.CreateJob(PB.CreateJobRequest(image_data=png(seed)), metadata=env.md(tenant),
                                    timeout=TIMEOUT)


async def wait_for(env: Env, tenant: str, name: str, state: int) -> PB.Job:
    deadline = time.monotonic() + TIMEOUT
    while True:
        job = await env.stub.GetJob(PB.GetJobRequest(name=name), metadata=env.md(tenant), timeout=TIMEOUT)
        if job.state == state:
            return job
        assert time.monotonic() < deadline, PB.Job.State.Name(job.state)
        await asyncio.sleep(0.02)


async def names(env: Env, tenant: str) -> list[str]:
    listed = await env.stub.ListJobs(PB.ListJobsRequest(), metadata=env.md(tenant), timeout=TIMEOUT)
    return sorted(job.name for job in listed.jobs)


def test_a_tenant_deletes_its_own_data_only(tmp_path: Path, artifacts: ArtifactStore) -> None:
    async def body() -> None:
        async with gateway(tmp_path, artifacts) as env:
            done = [await create(env, "acme", seed) for seed in (1, 2)]
            for job in done:
                await wait_for(env, "acme", job.name, PB.Job.SUCCEEDED)
            kept = await create(env, "globex", 3)
            kept = await wait_for(env, "globex", kept.name, PB.Job.SUCCEEDED)
            env.pipeline.gate.clear()  # acme's third job stays RUNNING until it is cancelled
            running = await create(env, "acme", 4)
            await wait_for(env, "acme", running.name, PB.Job.RUNNING)

            confirm = PB.DeleteTenantDataRequest(confirm="acme")
            await expect_error(env.stub.DeleteTenantData(confirm, timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED)
            await expect_error(env.stub.DeleteTenantData(confirm, metadata=(("x-api-key", "g3d_nope"),),
                                                         timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED)
            for wrong in ("", "globex", "ACME"):
                await expect_error(env.stub.DeleteTenantData(PB.DeleteTenantDataRequest(confirm=wrong),
                                                             metadata=env.md("acme"), timeout=TIMEOUT),
                                   grpc.StatusCode.INVALID_ARGUMENT, "confirm")
            other = (*env.md("acme"), ("x-glimpse3d-tenant", "globex"))  # acme's key cannot act for globex
            await expect_error(env.stub.DeleteTenantData(PB.DeleteTenantDataRequest(confirm="globex"),
                                                         metadata=other, timeout=TIMEOUT),
                               grpc.StatusCode.PERMISSION_DENIED)
            assert len(await names(env, "acme")) == 3  # nothing refused deleted anything

            reply = await env.stub.DeleteTenantData(confirm, metadata=env.md("acme"), timeout=TIMEOUT)
            assert (reply.tenant, reply.jobs_cancelled, reply.jobs_deleted, reply.versions_deleted) == ("acme", 1, 3, 2)
            assert reply.artifacts_deleted >= 4 and reply.api_keys_deleted == 0  # 3 photos, 2 splats at least
            assert env.pipeline.cancelled == 1  # the running job's work was stopped
            assert await names(env, "acme") == []  # the key still works: it was kept
            assert await names(env, "globex") == [kept.name]
            with tenant_scope("globex"):
                refs = [kept.versions[0].splat.uri]
                assert all(artifacts.exists(uri) for uri in refs)
            env.pipeline.gate.set()

            # Over HTTP, revoking the keys too.
            await wait_for(env, "acme", (await create(env, "acme", 5)).name, PB.Job.SUCCEEDED)
            acme = {"X-API-Key": env.keys["acme"]}
            assert (await env.http.delete(f"{API}/tenant", params={"confirm": "acme"})).status_code == 401
            refused = await env.http.delete(f"{API}/tenant", params={"confirm": "globex"}, headers=acme)
            assert refused.status_code == 400 and refused.json()["error"]["field"] == "confirm"
            deleted = await env.http.delete(f"{API}/tenant", params={"confirm": "acme", "delete_api_keys": "true"},
                                            headers=acme)
            assert deleted.status_code == 200, deleted.text
            assert deleted.json() == {"tenant": "acme", "jobs_cancelled": 0, "jobs_deleted": 1,
                                      "versions_deleted": 1, "artifacts_deleted": 2, "api_keys_deleted": 1}
            assert (await env.http.get(f"{API}/jobs", headers=acme)).status_code == 401  # its key is revoked
            listed = await env.http.get(f"{API}/jobs", headers={"X-API-Key": env.keys["globex"]})
            assert [job["name"] for job in listed.json()["jobs"]] == [kept.name]
            assert "acme" not in env.keys_file.read_text() and "globex" in env.keys_file.read_text()

    asyncio.run(asyncio.wait_for(body(), 60))
