"""Mesh exports run in the reconstruction service (ExportMesh), not in the gateway.

The service meshes a splat of the caller's tenant and stores the file under that tenant; the gateway's
Export of OBJ / MESH_GLB (gRPC) and the HTTP download route call it through the stage channels and
remember the result per (tenant, splat sha256, format), so a second export of a version is not sent to
the service again. Real services on 127.0.0.1, a file artifact store in a temporary directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx2 as httpx
import numpy as np
import pytest
import trimesh
from service_harness import gateway_listeners
from trimesh.visual import TextureVisuals

from glimpse3d.core import convert, synthetic
from glimpse3d.core.artifacts import TENANT_METADATA_KEY, FileArtifactStore, tenant_scope
from glimpse3d.core.formats import splat_to_ply_bytes
from glimpse3d.core.rpc import error_from_rpc
from glimpse3d.core.service import ServiceSettings, running_in_process
from glimpse3d.gateway.app import GatewayApp, ProgressReporter
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext
from glimpse3d.gateway.jobs import Job, VersionResult
from glimpse3d.gateway.pipeline import ServiceClients, ServicePipeline
from glimpse3d.gateway.servicer import Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.services.reconstruction import server as recon_server
from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc, reconstruction_pb2, reconstruction_pb2_grpc

PB = glimpse3d_pb2
PLY = "application/x-glimpse3d-splat+ply"
TIMEOUT = 120.0  # one meshing is 3-15 s on a loaded 2-core machine


def _md(tenant: str) -> tuple[tuple[str, str], ...]:
    return ((TENANT_METADATA_KEY, tenant),)


def _splat(seed: int = 0) -> bytes:
    return splat_to_ply_bytes(synthetic.textured_object(seed=seed, n=600))


def _watertight(mesh: trimesh.Trimesh) -> bool:
    """Watertight once the UV seams are welded (vertices at one position merged)."""
    welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    return bool(welded.is_watertight and welded.is_winding_consistent and welded.euler_number == 2)


def _load(data: bytes, fmt: str) -> trimesh.Trimesh:
    if fmt == "obj":
        with zipfile.ZipFile(io.BytesIO(data)) as archive, tempfile.TemporaryDirectory() as out:
            assert sorted(archive.namelist()) == ["mesh.mtl", "mesh.obj", "texture.png"]
            archive.extractall(out)
            loaded = trimesh.load(Path(out) / "mesh.obj", force="mesh")
    else:
        loaded = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert isinstance(loaded, trimesh.Trimesh)
    return loaded


async def _refused(call: object, code: grpc.StatusCode, field: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call  # type: ignore[misc]
    assert exc.value.code() == code, exc.value.details()
    assert error_from_rpc(exc.value).field == field, exc.value.details()
    return exc.value.details() or ""


def test_export_mesh_on_the_reconstruction_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileArtifactStore(tmp_path / "artifacts")
    with tenant_scope("acme"):
        splat = convert.artifact_to_proto(store.put(_splat(0), PLY))
        other = convert.artifact_to_proto(store.put(_splat(1), PLY))

    async def main() -> None:
        settings = ServiceSettings(backend="", max_concurrency=1, max_waiting=4)
        async with running_in_process(recon_server.build, [recon_server.SERVICE_NAME], settings, store) as (port, _):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = reconstruction_pb2_grpc.ReconstructionStub(channel)

                def export(fmt: str, tenant: str = "acme", ref=splat):
                    return stub.ExportMesh(reconstruction_pb2.ExportMeshRequest(splat=ref, format=fmt),
                                           metadata=_md(tenant), timeout=TIMEOUT)

                # Bad requests, before any meshing.
                for fmt in ("", "ply", "spz", "nope"):
                    details = await _refused(export(fmt), grpc.StatusCode.INVALID_ARGUMENT, "format")
                    assert "obj" in details and "mesh-glb" in details, details
                await _refused(stub.ExportMesh(reconstruction_pb2.ExportMeshRequest(format="obj"), metadata=_md(
                    "acme"), timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT, "splat.uri")
                await _refused(export("obj", tenant="globex"), grpc.StatusCode.PERMISSION_DENIED, "splat.uri")
                await _refused(stub.ExportMesh(reconstruction_pb2.ExportMeshRequest(splat=splat, format="obj"),
                                               timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED, TENANT_METADATA_KEY)

                # Without the mesh extra: FAILED_PRECONDITION naming the missing package.
                real_find_spec = importlib.util.find_spec
                with monkeypatch.context() as patch:
                    patch.setattr(importlib.util, "find_spec",
                                  lambda name, *a: None if name == "xatlas" else real_find_spec(name, *a))
                    details = await _refused(export("obj", ref=other), grpc.StatusCode.FAILED_PRECONDITION, "format")
                assert "xatlas" in details and "mesh" in details, details

                # A mesh under the caller's tenant; the other format of the same splat is only written.
                start = time.perf_counter()
                glb = await export("mesh-glb")
                first_s = time.perf_counter() - start
                start = time.perf_counter()
                obj = await export("obj")
                second_s = time.perf_counter() - start
                assert second_s < first_s / 2, (first_s, second_s)  # the mesh was made once
                for response, fmt, media_type in ((glb, "mesh-glb", "model/gltf-binary"),
                                                  (obj, "obj", "application/zip")):
                    assert response.mesh.uri.startswith("artifact:///tenants/acme/"), response.mesh.uri
                    assert response.mesh.media_type == media_type and response.seconds > 0
                    with tenant_scope("acme"):
                        data = store.get(convert.artifact_from_proto(response.mesh, "mesh"))
                    mesh = _load(data, fmt)
                    assert len(mesh.faces) > 100 and _watertight(mesh), fmt
                    visual = mesh.visual
                    assert isinstance(visual, TextureVisuals)
                    uv = np.asarray(visual.uv)
                    assert uv.shape == (len(mesh.vertices), 2) and np.all((uv >= -1e-6) & (uv <= 1 + 1e-6))
                # The same splat for another tenant that owns a copy: its own file, under its own tenant.
                with tenant_scope("globex"):
                    theirs = convert.artifact_to_proto(store.put(_splat(0), PLY))
                again = await export("mesh-glb", tenant="globex", ref=theirs)
                assert again.mesh.uri.startswith("artifact:///tenants/globex/")
                assert again.mesh.sha256 == glb.mesh.sha256  # deterministic

    asyncio.run(asyncio.wait_for(main(), 600))


class SplatPipeline(ServicePipeline):
    """The real pipeline's exports, with version 1 a stored synthetic splat (no model stages)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.meshes = 0

    async def run_initial(self, job: Job, report: ProgressReporter) -> VersionResult:
        with tenant_scope(job.tenant):
            ref = await asyncio.to_thread(self.artifacts.put, _splat(job.options.seed), PLY)
        return VersionResult(splat=ref, metrics={"num_gaussians": 600.0})

    async def export_mesh(self, splat, fmt):
        self.meshes += 1
        return await super().export_mesh(splat, fmt)


@dataclass
class Env:
    app: GatewayApp
    pipeline: SplatPipeline
    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    http: httpx.AsyncClient
    artifacts: FileArtifactStore


@asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[Env]:
    """The reconstruction service and the gateway (gRPC without authentication, and the HTTP facade)."""
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    settings = ServiceSettings(backend="", max_concurrency=1, max_waiting=8)
    async with running_in_process(recon_server.build, [recon_server.SERVICE_NAME], settings, artifacts) as (port, _):
        config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(artifacts.root), workers=1,
                               reconstruction_addr=f"127.0.0.1:{port}")
        jobs = JobStore(config.db_path)
        clients = ServiceClients(config)
        pipeline = SplatPipeline(config, clients, artifacts)
        app = GatewayApp(config, jobs, artifacts, pipeline)
        await app.start()
        http_base: list[str] = []
        servicer = Glimpse3DServicer(app, http_base=lambda: http_base[0] if http_base else None)
        context = HttpContext(app, artifacts, heartbeat_s=0.2)
        try:
            async with gateway_listeners(servicer, context, tmp_path / "no-web", TIMEOUT) as listeners:
                http_base.append(listeners.http_base)
                yield Env(app, pipeline, listeners.stub, listeners.http, artifacts)
        finally:
            await app.close()
            await clients.close()
            jobs.close()


def test_gateway_exports_meshes_through_the_service_and_caches_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as env:
            job = await env.stub.CreateJob(PB.CreateJobRequest(image_data=_png(), options=PB.JobOptions(seed=2)),
                                           metadata=_md("acme"), timeout=TIMEOUT)
            for _ in range(300):
                job = await env.stub.GetJob(PB.GetJobRequest(name=job.name), metadata=_md("acme"), timeout=TIMEOUT)
                if job.versions:
                    break
                await asyncio.sleep(0.1)
            assert job.versions, job
            job_id = job.name.removeprefix("jobs/")
            sizes = {}
            for fmt, name in ((PB.ExportRequest.OBJ, "obj"), (PB.ExportRequest.MESH_GLB, "mesh-glb")):
                export = await env.stub.Export(PB.ExportRequest(name=job.name, format=fmt), metadata=_md("acme"),
                                               timeout=TIMEOUT)
                assert export.artifact.uri.startswith("artifact:///tenants/acme/"), export.artifact.uri
                assert f"/jobs/{job_id}/versions/1/download?format={name}" in export.download_url
                got = await env.http.get(export.download_url)
                assert got.status_code == 200 and len(got.content) == export.artifact.size, got.text[:300]
                assert _watertight(_load(got.content, name)), name
                sizes[name] = export.artifact.size
            assert env.pipeline.meshes == 2 and env.app.export_counts["service"] == 2

            # Again, over gRPC and through the HTTP download route: from the gateway's cache, at once.
            cached = env.app.export_counts["cache"]
            start = time.perf_counter()
            again = await env.stub.Export(PB.ExportRequest(name=job.name, format=PB.ExportRequest.MESH_GLB),
                                          metadata=_md("acme"), timeout=TIMEOUT)
            download = await env.http.get(f"/api/v1/jobs/{job_id}/versions/latest/download",
                                          params={"format": "obj", "tenant": "acme"})
            elapsed = time.perf_counter() - start
            assert download.status_code == 200 and len(download.content) == sizes["obj"], download.text[:300]
            assert download.headers["content-type"] == "application/zip"
            assert again.artifact.size == sizes["mesh-glb"]
            assert env.pipeline.meshes == 2 and env.app.export_counts["cache"] == cached + 2
            assert elapsed < 2.0, elapsed

            # Splat formats are still converted in the gateway (on its export threads), and cached too.
            for _ in range(2):
                spz = await env.stub.Export(PB.ExportRequest(name=job.name, format=PB.ExportRequest.SPZ),
                                            metadata=_md("acme"), timeout=TIMEOUT)
                assert spz.artifact.uri.startswith("artifact:///tenants/acme/")
            assert env.app.export_counts["gateway"] == 1 and env.pipeline.meshes == 2

            # Another tenant cannot export the job, nor reach the cached file.
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await env.stub.Export(PB.ExportRequest(name=job.name, format=PB.ExportRequest.OBJ),
                                      metadata=_md("globex"), timeout=TIMEOUT)
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND

            # A cached file that is gone (the tenant's artifacts deleted) is made again.
            with tenant_scope("acme"):
                env.artifacts.delete(convert.artifact_from_proto(again.artifact, "artifact"))
            remade = await env.stub.Export(PB.ExportRequest(name=job.name, format=PB.ExportRequest.MESH_GLB),
                                           metadata=_md("acme"), timeout=TIMEOUT)
            assert remade.artifact.sha256 == again.artifact.sha256 and env.pipeline.meshes == 3

    asyncio.run(asyncio.wait_for(main(), 600))


def _png() -> bytes:
    from glimpse3d.core.cameras import orbit_camera
    from glimpse3d.core.images import encode_png

    splat = synthetic.textured_object(seed=3, n=300)
    return encode_png(synthetic.render_image(splat, orbit_camera(0.0, 0.0, 2.7, width=32, height=32)))
