"""Tenant-scoped artifacts (issue 16): keys live under their tenant, the gateway and the five services act
only on the caller's own artifacts, downloads go through short-lived signed links, no answer shows a
server path, and a tenant's data can be deleted.

Grounded on real stores (the file store in a temporary directory, S3 on a moto server, SQLite and, when
PostgreSQL is installed, PostgreSQL job stores), real services (the weight-free backends, in process on
127.0.0.1) and the real gateway (gRPC with API-key authentication, the HTTP facade) running a whole job.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (registers the s3_server fixture)
from test_gateway_app import png

from glimpse3d.core import convert, synthetic
from glimpse3d.core.artifacts import (
    TENANT_METADATA_KEY,
    ArtifactRef,
    ArtifactStore,
    FileArtifactStore,
    S3ArtifactStore,
    content_key,
    tenant_of_key,
    tenant_scope,
)
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import FailedPrecondition, NotFound, PermissionDenied, Unauthenticated
from glimpse3d.core.formats import read_ply, splat_to_ply_bytes
from glimpse3d.core.images import encode_png
from glimpse3d.core.rpc import create_server, error_from_rpc
from glimpse3d.core.service import ServiceSettings, running_in_process
from glimpse3d.gateway import auth as auth_module
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.auth import AuthInterceptor, TicketSigner, authenticator_from_config, create_key
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext, HttpServer, create_app
from glimpse3d.gateway.pipeline import SERVICES, ServiceClients, ServicePipeline
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.services.backprojection import server as bp_server
from glimpse3d.services.depth import server as depth_server
from glimpse3d.services.diffusion import server as diffusion_server
from glimpse3d.services.multiview import server as multiview_server
from glimpse3d.services.reconstruction import server as recon_server
from glimpse3d.v1 import common_pb2, glimpse3d_pb2, glimpse3d_pb2_grpc, reconstruction_pb2, reconstruction_pb2_grpc

PB = glimpse3d_pb2
API = "/api/v1"
TIMEOUT = 30.0
PLY = "application/x-glimpse3d-splat+ply"
SECRET = "a test ticket secret of at least 32 bytes"
MODULES = {"depth": depth_server, "reconstruction": recon_server, "multiview": multiview_server,
           "diffusion": diffusion_server, "backprojection": bp_server}


# ---- the stores -----------------------------------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return FileArtifactStore(tmp_path / "artifacts")
    server: S3Server = request.getfixturevalue("s3_server")
    return S3ArtifactStore(server.endpoint, server.access_key, server.secret_key, f"t-{uuid.uuid4().hex[:16]}",
                           prefix="glimpse", region=server.region)


def test_keys_live_under_the_tenant_and_dedup_within_it(store: ArtifactStore) -> None:
    data = b"\x89PNG the same bytes"
    with tenant_scope("acme"):
        a = store.put(data, "image/png")
        again = store.put(data, "image/png")
        temporary = store.put(data, "image/png", temporary=True)
    with tenant_scope("globex"):
        b = store.put(data, "image/png")
    assert again == a  # content addressing within a tenant
    assert a.uri.endswith("/" + content_key(a.sha256, tenant="acme"))
    assert b.uri.endswith("/" + content_key(b.sha256, tenant="globex")) and b.uri != a.uri
    assert temporary.uri.endswith("/" + content_key(a.sha256, temporary=True, tenant="acme"))
    assert [store.tenant_of(r) for r in (a, b, temporary)] == ["acme", "globex", "acme"]
    with tenant_scope("acme"):
        assert store.get(a) == data and store.stat(a.uri) == a
        for call in (store.get, store.stat, store.exists, store.presign, store.delete):
            with pytest.raises(PermissionDenied) as refused:
                call(b)
            assert refused.value.field == "uri"
        # Decided from the key alone: a key of another tenant that does not exist gets the same answer.
        absent = ArtifactRef(b.uri.replace(b.sha256, "0" * 64).replace(f"/{b.sha256[:2]}/", "/00/"), "0" * 64, 1,
                             "image/png")
        with pytest.raises(PermissionDenied):
            store.get(absent)
    with tenant_scope("globex"):
        assert store.get(b) == data
        with pytest.raises(PermissionDenied):
            store.delete_tenant("acme")


def test_keys_stored_before_tenant_scoping_are_the_default_tenants(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "artifacts")
    legacy = store.put(b"stored before tenants", "text/plain")  # no scope: the legacy layout
    assert legacy.uri == f"artifact:///{content_key(legacy.sha256)}" and tenant_of_key(content_key(legacy.sha256)) \
        == "default"
    old_uri = (store.root / content_key(legacy.sha256)).as_uri()  # what the store handed out before
    with tenant_scope("default"):
        assert store.get(old_uri) == b"stored before tenants" and store.get(legacy) == b"stored before tenants"
    with tenant_scope("acme"), pytest.raises(PermissionDenied):
        store.get(old_uri)


def test_delete_tenant_removes_its_artifacts_only(store: ArtifactStore) -> None:
    refs = {}
    for tenant in ("acme", "globex"):
        with tenant_scope(tenant):
            refs[tenant] = [store.put(f"{tenant} {i}".encode(), "text/plain", temporary=i == 2) for i in range(3)]
    assert store.delete_tenant("acme") == 3
    assert store.delete_tenant("acme") == 0  # idempotent
    for ref in refs["acme"]:
        with tenant_scope("acme"), pytest.raises(NotFound):
            store.get(ref)
    with tenant_scope("globex"):
        assert [store.get(r) for r in refs["globex"]] == [b"globex 0", b"globex 1", b"globex 2"]


def test_tenant_deletion_of_jobs_and_artifacts(tmp_path: Path, store: ArtifactStore) -> None:
    """delete_tenant_data on a SQLite job store (with the file and the S3 artifact store)."""
    jobs = JobStore(tmp_path / "jobs.sqlite3")
    try:
        _check_tenant_deletion(jobs, store)
    finally:
        jobs.close()


def test_tenant_deletion_on_postgresql(postgres: Any, tmp_path: Path) -> None:
    """The same on PostgreSQL (the throwaway server of tests/conftest.py)."""
    from glimpse3d.gateway.store.postgres import PostgresDatabase

    jobs = JobStore(PostgresDatabase(postgres.url(postgres.create_database()), pool_size=2))
    try:
        _check_tenant_deletion(jobs, FileArtifactStore(tmp_path / "artifacts"))
    finally:
        jobs.close()


def _check_tenant_deletion(jobs: JobStore, store: ArtifactStore) -> None:
    from glimpse3d.gateway.jobs import JobError, JobOptions

    made: dict[str, list[str]] = {}
    for tenant in ("acme", "globex"):
        with tenant_scope(tenant):
            photo = store.put(png(1), "image/png")
        made[tenant] = []
        for i in range(2):
            job, _ = jobs.create_job(tenant=tenant, options=JobOptions(), input_image=photo, request_id=f"r{i}")
            made[tenant].append(job.id)
    with pytest.raises(FailedPrecondition) as busy:  # queued jobs are cancelled first
        auth_module.delete_tenant_data(jobs, store, "acme")
    assert busy.value.field == "tenant"
    for job_id in made["acme"]:
        jobs.finish_with_error(job_id, JobError(1, "cancelled", "CANCELLED"), cancelled=True)
    result = auth_module.delete_tenant_data(jobs, store, "acme")
    assert sorted(result.jobs) == sorted(made["acme"]) and result.artifacts == 1
    for job_id in made["acme"]:
        with pytest.raises(NotFound):
            jobs.get_job("acme", job_id)
    assert jobs.list_jobs("acme") == ([], "")
    assert sorted(j.id for j in jobs.list_jobs("globex")[0]) == sorted(made["globex"])
    with tenant_scope("globex"):
        assert store.get(jobs.get_job("globex", made["globex"][0]).input_image) == png(1)


# ---- the services ---------------------------------------------------------------------------------


def _md(tenant: str | None, **extra: str) -> tuple[tuple[str, str], ...]:
    pairs = [] if tenant is None else [(TENANT_METADATA_KEY, tenant)]
    return tuple(pairs + list(extra.items()))


async def _refused(call: Any, code: grpc.StatusCode, field: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == code, exc.value.details()
    assert error_from_rpc(exc.value).field == field, exc.value.details()
    return exc.value.details() or ""


def test_services_act_only_on_the_calls_tenant(tmp_path: Path) -> None:
    """The probe: reconstruction rendered tenant A's splat for an anonymous caller. Now a call without a
    tenant is UNAUTHENTICATED and one naming a reference outside its tenant PERMISSION_DENIED, naming the
    field (nested ones too), before the response cache can answer it."""
    store = FileArtifactStore(tmp_path / "artifacts")
    splat = synthetic.textured_object(seed=0, n=300)
    camera = orbit_camera(0.0, 0.0, 2.7, width=32, height=32)
    with tenant_scope("acme"):
        ref = convert.artifact_to_proto(store.put(splat_to_ply_bytes(splat), PLY))
        photo = convert.artifact_to_proto(store.put(encode_png(synthetic.render_image(splat, camera)), "image/png"))
    render = reconstruction_pb2.RenderRequest(splat=ref, views=[common_pb2.ViewSpec(camera=convert.camera_to_proto(
        camera))])

    async def main() -> None:
        settings = ServiceSettings(backend="", max_concurrency=1, max_waiting=4)
        async with running_in_process(recon_server.build, [recon_server.SERVICE_NAME], settings, store) as (port, _):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = reconstruction_pb2_grpc.ReconstructionStub(channel)
                await _refused(stub.Render(render, timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED,
                               TENANT_METADATA_KEY)
                await _refused(stub.Render(render, metadata=_md("bad tenant!"), timeout=TIMEOUT),
                               grpc.StatusCode.INVALID_ARGUMENT, TENANT_METADATA_KEY)
                # A's answer is cached under its idempotency key; B repeating the call is still refused.
                key = {"x-glimpse3d-request-id": "job/v1/render"}
                mine = await stub.Render(render, metadata=_md("acme", **key), timeout=TIMEOUT)
                assert all(v.rgb.uri.startswith("artifact:///tmp/tenants/acme/") for v in mine.views)
                details = await _refused(stub.Render(render, metadata=_md("globex", **key), timeout=TIMEOUT),
                                         grpc.StatusCode.PERMISSION_DENIED, "splat.uri")
                assert "globex" in details
                # A nested reference (views[0].mask) outside the tenant is named by its path.
                with tenant_scope("globex"):
                    other = convert.artifact_to_proto(store.put(b"globex mask", "application/x-npy"))
                reconstruct = reconstruction_pb2.ReconstructRequest(
                    image=photo, depth=photo, mask=photo, camera=convert.camera_to_proto(camera),
                    views=[reconstruction_pb2.ViewImage(rgb=photo, mask=other, camera=convert.camera_to_proto(camera))])
                await _refused(stub.Reconstruct(reconstruct, metadata=_md("acme"), timeout=TIMEOUT),
                               grpc.StatusCode.PERMISSION_DENIED, "views[0].mask.uri")

    asyncio.run(asyncio.wait_for(main(), 120))


# ---- the gateway over the five services: a whole job ------------------------------------------------


@dataclass
class Stack:
    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    http: httpx.AsyncClient
    artifacts: FileArtifactStore
    jobs: JobStore
    services: dict[str, int]
    keys: dict[str, str]  # tenant -> API key
    http_url: str

    def md(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.keys[tenant]),)

    def headers(self, tenant: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[tenant]}


@asynccontextmanager
async def stack(tmp_path: Path, web_dir: Path | None = None, **auth_settings: Any) -> AsyncIterator[Stack]:
    """The five services (weight-free backends) and the gateway with API-key authentication (and bearer
    tokens too, given the ``auth_jwks``, ``auth_issuer`` and ``auth_audience`` settings), all in this
    process on 127.0.0.1, sharing one file artifact store; the facade serves ``web_dir``."""
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    keys_file = tmp_path / "api-keys.json"
    keys = {tenant: create_key(keys_file, tenant, "test") for tenant in ("acme", "globex")}
    async with AsyncExitStack() as exits:
        ports = {}
        for name, module in MODULES.items():
            settings = ServiceSettings(backend="", max_concurrency=1, max_waiting=8)
            ports[name], _ = await exits.enter_async_context(
                running_in_process(module.build, [module.SERVICE_NAME], settings, artifacts))
        addrs: dict[str, Any] = {f"{s}_addr": f"127.0.0.1:{ports[s]}" for s in SERVICES}
        config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(artifacts.root), workers=1,
                               auth_mode="any" if auth_settings else "api_key", auth_api_keys_file=keys_file,
                               auth_ticket_secret=SECRET, **auth_settings, **addrs)
        auth = authenticator_from_config(config, ["127.0.0.1"])
        jobs = JobStore(config.db_path)
        exits.callback(jobs.close)
        clients = ServiceClients(config)
        exits.push_async_callback(clients.close)
        app = GatewayApp(config, jobs, artifacts, ServicePipeline(config, clients, artifacts))
        await app.start()
        exits.push_async_callback(app.close)
        tickets = TicketSigner(SECRET)
        http_base: list[str] = []  # known once the facade listens
        servicer = Glimpse3DServicer(app, tickets, http_base=lambda: http_base[0] if http_base else None)
        server, port = create_server([(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, servicer)],
                                     [SERVICE_NAME], metrics_port=None,
                                     interceptors=[AuthInterceptor(auth)] if auth else [])
        await server.start()
        await server.set_serving()
        exits.push_async_callback(server.stop, 0)
        context = HttpContext(app, artifacts, heartbeat_s=0.2, auth=auth, tickets=tickets)
        http = HttpServer(create_app(context, web_dir=web_dir or tmp_path / "no-web"), "127.0.0.1", 0,
                          streams=context.streams, grace_s=1.0)
        http_port = await http.start()
        http_base.append(f"http://127.0.0.1:{http_port}")
        exits.push_async_callback(http.stop)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        exits.push_async_callback(channel.close)
        client = httpx.AsyncClient(base_url=http_base[0], timeout=TIMEOUT)
        exits.push_async_callback(client.aclose)
        yield Stack(glimpse3d_pb2_grpc.Glimpse3DStub(channel), client, artifacts, jobs, ports, keys, http_base[0])


class Seen:
    """Everything the gateway and the services answered, to scan for server paths."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, value: Any) -> Any:
        self.texts.append(value.text if isinstance(value, httpx.Response) else str(value))
        return value

    async def refused(self, call: Any, code: grpc.StatusCode, field: str | None = None) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call
        self.texts += [exc.value.details() or "", str(exc.value.trailing_metadata())]
        assert exc.value.code() == code, exc.value.details()
        if field is not None:
            assert error_from_rpc(exc.value).field == field, exc.value.details()
        return exc.value.details() or ""


def _photo() -> bytes:
    splat = synthetic.textured_object(seed=3, n=800)
    return encode_png(synthetic.render_image(splat, orbit_camera(0.0, 0.0, 2.7, width=64, height=64),
                                             background=(0.9, 0.9, 0.9), rgba=True))


async def _wait_done(env: Stack, job_id: str, tenant: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240
    while True:
        job = (await env.http.get(f"{API}/jobs/{job_id}", headers=env.headers(tenant))).json()
        if job["done"] and not job["pending_rounds"]:
            return job
        assert loop.time() < deadline, job
        await asyncio.sleep(0.2)


def test_a_whole_job_stays_in_its_tenant(tmp_path: Path) -> None:
    async def main() -> None:
        seen = Seen()
        async with stack(tmp_path) as env:
            created = seen.add(await env.http.post(
                f"{API}/jobs", headers=env.headers("acme"), files={"photo": ("photo.png", _photo(), "image/png")},
                data={"resolution": "64", "enhance_rounds": "1", "seed": "3"}))
            assert created.status_code == 201, created.text
            job = await _wait_done(env, created.json()["id"], "acme")
            assert job["state"] == "SUCCEEDED" and len(job["versions"]) == 2, job
            grpc_job = seen.add(await env.stub.GetJob(PB.GetJobRequest(name=job["name"]), metadata=env.md("acme"),
                                                      timeout=TIMEOUT))
            splat_ref, photo_ref = grpc_job.versions[-1].splat, grpc_job.input_image
            assert splat_ref.uri.startswith("artifact:///tenants/acme/") and \
                photo_ref.uri.startswith("artifact:///tenants/acme/")

            # The probe: B made a job from A's render (and from A's photo) and downloaded it.
            # An artifact of A that does not exist gets the same answer: nothing tells whether it exists.
            absent = common_pb2.ArtifactRef(uri=f"artifact:///{content_key('0' * 64, tenant='acme')}",
                                            sha256="0" * 64, size=10, media_type="image/png")
            for ref in (splat_ref, photo_ref, grpc_job.versions[0].splat, absent):
                details = await seen.refused(env.stub.CreateJob(PB.CreateJobRequest(image=ref), metadata=env.md(
                    "globex"), timeout=TIMEOUT), grpc.StatusCode.PERMISSION_DENIED, "image.uri")
                assert details.startswith("image.uri is not an artifact of tenant 'globex'"), details
            assert (await env.stub.ListJobs(PB.ListJobsRequest(), metadata=env.md("globex"), timeout=TIMEOUT)).jobs \
                == []
            await seen.refused(env.stub.GetJob(PB.GetJobRequest(name=job["name"]), metadata=env.md("globex"),
                                               timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND)
            await seen.refused(env.stub.Export(PB.ExportRequest(name=job["name"], format=PB.ExportRequest.PLY),
                                               metadata=env.md("globex"),
                                               timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND)
            # A matte preview runs in the caller's tenant (the depth service refuses calls without one).
            matte = seen.add(await env.http.post(f"{API}/matte", headers=env.headers("acme"),
                                                 files={"photo": ("p.png", _photo(), "image/png")}))
            assert matte.status_code == 200 and matte.json()["mask"].startswith("data:image/png"), matte.text
            preview = await env.stub.PreviewMatte(PB.PreviewMatteRequest(image_data=_photo(), resolution=64),
                                                  metadata=env.md("globex"), timeout=TIMEOUT)
            assert preview.mask_png.startswith(b"\x89PNG")
            # A may make a job from its own artifact.
            own = seen.add(await env.stub.CreateJob(PB.CreateJobRequest(image=photo_ref, options=PB.JobOptions(
                resolution=64)), metadata=env.md("acme"), timeout=TIMEOUT))
            own_id = own.name.removeprefix("jobs/")
            await _wait_done(env, own_id, "acme")

            # The services: A's splat rendered for no tenant, or for B, is refused.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{env.services['reconstruction']}") as channel:
                recon = reconstruction_pb2_grpc.ReconstructionStub(channel)
                view = common_pb2.ViewSpec(camera=grpc_job.versions[-1].camera)
                render = reconstruction_pb2.RenderRequest(splat=splat_ref, views=[view])
                await seen.refused(recon.Render(render, timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED,
                                   TENANT_METADATA_KEY)
                await seen.refused(recon.Render(render, metadata=_md("globex"), timeout=TIMEOUT),
                                   grpc.StatusCode.PERMISSION_DENIED, "splat.uri")

            # Signed links: the photo and the downloads load without credentials (<img src>, <a href>).
            downloads = job["versions"][-1]["downloads"]
            assert "sig=" in job["photo_url"] and all("sig=" in url for url in downloads.values())
            photo = seen.add(await env.http.get(job["photo_url"]))
            assert photo.status_code == 200 and photo.content == _photo_bytes(env, photo_ref)
            for fmt, url in job["versions"][-1]["downloads"].items():
                got = seen.add(await env.http.get(url))
                assert got.status_code == 200, (fmt, got.text)
                if fmt == "ply":
                    assert read_ply(got.content).num_gaussians > 0
            bare = job["photo_url"].split("?")[0]
            assert seen.add(await env.http.get(bare)).status_code == 401  # no credentials, no signature
            assert seen.add(await env.http.get(bare, headers=env.headers("globex"))).status_code == 404
            assert seen.add(await env.http.get(bare, headers=env.headers("acme"))).status_code == 200
            other_job = job["photo_url"].replace(job["id"], own_id)  # A's link, for another job
            assert seen.add(await env.http.get(other_job)).status_code == 403
            sig = job["photo_url"].split("sig=")[1]
            assert seen.add(await env.http.get(f"{bare}?sig={sig[:-4]}AAAA")).status_code == 401
            expired = TicketSigner(SECRET, link_ttl_s=-120).mint_link("acme", job["id"])
            assert seen.add(await env.http.get(f"{bare}?sig={expired}")).status_code == 401
            forged = TicketSigner("another gateway's secret, 32 bytes or more").mint_link("acme", job["id"])
            assert seen.add(await env.http.get(f"{bare}?sig={forged}")).status_code == 401
            assert seen.add(await env.http.get(f"{bare}?sig={sig}&tenant=globex")).status_code == 403

            # Export over gRPC: the file store has no URL of its own, so a signed link to the facade.
            for fmt in (PB.ExportRequest.PLY, PB.ExportRequest.SPLAT, PB.ExportRequest.GLB):
                export = seen.add(await env.stub.Export(PB.ExportRequest(name=job["name"], format=fmt),
                                                        metadata=env.md("acme"), timeout=TIMEOUT))
                assert export.download_url.startswith(f"{env.http_url}{API}/jobs/{job['id']}/versions/2/download?")
                assert "sig=" in export.download_url
                got = seen.add(await env.http.get(export.download_url))
                assert got.status_code == 200 and len(got.content) == export.artifact.size
            seen.add(await env.http.get(f"{API}/jobs", headers=env.headers("acme")))
            seen.add(await env.http.get(f"{API}/jobs/{job['id']}/versions", headers=env.headers("acme")))
            seen.add(await env.http.post(f"{API}/jobs", headers=env.headers("acme"),
                                         files={"photo": ("x.png", b"not an image", "image/png")}))
            seen.add(await env.stub.ListJobs(PB.ListJobsRequest(), metadata=env.md("acme"), timeout=TIMEOUT))

            # No answer of the whole job shows where the store lives.
            root = str(env.artifacts.root)
            for text in seen.texts:
                assert "file://" not in text and root not in text, text[:500]
            assert len(seen.texts) > 30 and any("artifact:///tenants/acme/" in t for t in seen.texts)  # refs seen

            # Tenant deletion: A's jobs and artifacts go, B's stay.
            with tenant_scope("globex"):
                kept = env.artifacts.put(png(5), "image/png")
            result = auth_module.delete_tenant_data(env.jobs, env.artifacts, "acme")
            assert len(result.jobs) == 2 and result.artifacts > 5
            assert (await env.http.get(f"{API}/jobs/{job['id']}", headers=env.headers("acme"))).status_code == 404
            assert not (env.artifacts.root / "tenants" / "acme").exists()
            assert not (env.artifacts.root / "tmp" / "tenants" / "acme").exists()
            with tenant_scope("globex"):
                assert env.artifacts.get(kept) == png(5)

    asyncio.run(asyncio.wait_for(main(), 480))


def _photo_bytes(env: Stack, ref: common_pb2.ArtifactRef) -> bytes:
    with tenant_scope("acme"):
        return env.artifacts.get(convert.artifact_from_proto(ref))


def test_delete_tenant_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    jobs = JobStore(tmp_path / "jobs.sqlite3")
    app_config = {"GLIMPSE3D_DB_PATH": str(tmp_path / "jobs.sqlite3"),
                  "GLIMPSE3D_ARTIFACTS_URL": str(artifacts.root)}
    for key, value in app_config.items():
        monkeypatch.setenv(key, value)
    try:
        from glimpse3d.gateway.jobs import JobError, JobOptions

        with tenant_scope("acme"):
            photo = artifacts.put(png(2), "image/png")
        job, _ = jobs.create_job(tenant="acme", options=JobOptions(), input_image=photo)
        assert auth_module.main(["delete-tenant", "--tenant", "acme"]) == 2  # not confirmed
        assert auth_module.main(["delete-tenant", "--tenant", "acme", "--confirm", "acme"]) == 2  # a queued job
        assert "queued or running" in capsys.readouterr().err
        jobs.finish_with_error(job.id, JobError(1, "cancelled", "CANCELLED"), cancelled=True)
        assert auth_module.main(["delete-tenant", "--tenant", "acme", "--confirm", "acme"]) == 0
        assert "1 jobs, 1 artifacts" in capsys.readouterr().out
        assert jobs.load_job(job.id) is None
    finally:
        jobs.close()


def test_link_signatures_are_bound_to_audience_and_job() -> None:
    signer = TicketSigner(SECRET)
    link = signer.mint_link("acme", "job1")
    assert signer.verify_link(link, "job1").tenant == "acme"
    with pytest.raises(PermissionDenied):
        signer.verify_link(link, "job2")
    with pytest.raises(Unauthenticated):  # an event-stream ticket is not a download link, nor the reverse
        signer.verify_link(signer.mint("acme", "job1"), "job1")
    with pytest.raises(Unauthenticated):
        signer.verify(link, "job1")


# ---- the web workspace with authentication on ----------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB = REPO_ROOT / "web"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ISSUER, AUDIENCE = "https://login.example.test/realms/acme", "glimpse3d-gateway"


def _built_web() -> Path:
    """web/dist as ``make web`` builds it (skips the test when Node.js, Chromium or playwright-core is missing)."""
    if shutil.which("node") is None or shutil.which("make") is None or not CHROMIUM.exists():
        pytest.skip("the browser check needs node, make and Chromium")
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        pytest.skip("web/node_modules has no playwright-core (make web)")
    built = subprocess.run(["make", "web"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return WEB / "dist"


def test_the_workspace_loads_photo_splat_and_downloads_through_signed_links(tmp_path: Path) -> None:
    """Headless Chromium on a gateway that authenticates: the job's photo, the splat in the viewer and the
    downloads load through the signed links (web/e2e/signed-links.e2e.mjs), nothing is refused."""
    dist = _built_web()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "browser", "tenant": "acme", "iat": now,
                        "exp": now + 900}, key, algorithm="RS256", headers={"kid": "k1"})

    async def main() -> None:
        async with stack(tmp_path, web_dir=dist, auth_jwks=str(jwks), auth_issuer=ISSUER,
                         auth_audience=AUDIENCE) as env:
            created = await env.http.post(f"{API}/jobs", headers={"Authorization": f"Bearer {token}"},
                                          files={"photo": ("photo.png", _photo(), "image/png")},
                                          data={"resolution": "64"})
            assert created.status_code == 201, created.text
            await _wait_done(env, created.json()["id"], "acme")
            browser = await asyncio.create_subprocess_exec(
                "node", "e2e/signed-links.e2e.mjs", "--url", env.http_url, "--job", created.json()["id"],
                "--token", token, "--out", str(tmp_path / "browser"), "--chromium", str(CHROMIUM), cwd=WEB,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await asyncio.wait_for(browser.communicate(), 300)
            result = json.loads((tmp_path / "browser" / "result.json").read_text())
            assert browser.returncode == 0, output.decode()[-3000:]
            assert result["photo"]["width"] > 0 and len(result["downloads"]) >= 3 and not result["refused"]

    asyncio.run(asyncio.wait_for(main(), 600))
