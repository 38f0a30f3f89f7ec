"""Error hygiene of the gateway: infrastructure faults are UNAVAILABLE, echoed values are short, a reused
request_id with another body is refused, degenerate enhance cameras are INVALID_ARGUMENT, and the HTTP
server drops connections that never finish their request.

Servers run in-process on 127.0.0.1 (the gRPC gateway of test_gateway_app, uvicorn through HttpServer).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from postgres_server import PostgresServer
from test_gateway_app import PB, TIMEOUT, create, expect_error, gateway, is_done, md, png, run, wait_for

from glimpse3d.core.artifacts import ArtifactRef, ArtifactStoreUnavailable, FileArtifactStore
from glimpse3d.core.cameras import Camera, check_sees, check_view_camera, look_at, orbit_camera
from glimpse3d.core.convert import camera_to_proto
from glimpse3d.core.errors import InvalidInput, shorten
from glimpse3d.core.rpc import rich_status_of
from glimpse3d.core.rpc.errors import DOMAIN, MAX_MESSAGE_BYTES, to_rpc_status
from glimpse3d.gateway.http import create_app
from glimpse3d.gateway.http.context import HttpContext
from glimpse3d.gateway.http.server import HttpServer
from glimpse3d.gateway.jobs import JobOptions
from glimpse3d.gateway.store import DatabaseUnavailable, JobStore, RequestIdReused
from glimpse3d.gateway.store.postgres import PostgresDatabase
from glimpse3d.v1 import common_pb2

# ---- helpers --------------------------------------------------------------------------------------


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rich_status_of(err)
    assert status is not None, "no rich status"
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR))
    return info


def trailer_bytes(err: grpc.aio.AioRpcError) -> int:
    """What the status costs in trailing metadata (key + value bytes, as the 8 KiB limit counts them)."""
    total = len(err.details() or "")  # grpc-message
    for key, value in err.trailing_metadata() or ():
        total += len(key) + len(value if isinstance(value, bytes) else value.encode())
    return total


def view_of(camera: Camera) -> common_pb2.ViewSpec:
    return common_pb2.ViewSpec(camera=camera_to_proto(camera))


# ---- 1. infrastructure faults are UNAVAILABLE -----------------------------------------------------


def test_unwritable_artifact_store_answers_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            spool = env.artifacts.root / ".tmp"
            shutil.rmtree(spool)
            spool.write_bytes(b"")  # writes now fail with an OSError (NotADirectoryError), even as root
            err = await expect_error(create(env, image_data=png(4)), grpc.StatusCode.UNAVAILABLE)
            info = error_info(err)
            assert info.reason == "ARTIFACT_STORE_UNAVAILABLE" and info.domain == DOMAIN
            assert info.metadata["store"] == "artifacts" and info.metadata["errno"] == "ENOTDIR"
            assert str(tmp_path) not in err.details()  # the server's paths stay in its log
            spool.unlink()
            spool.mkdir()
            job = await create(env, image_data=png(4))  # the store is back: the same call succeeds
            assert (await wait_for(env, job.name, is_done)).state == PB.Job.SUCCEEDED

    run(body)


@pytest.mark.parametrize(
    ("pragma", "condition"), [("query_only = ON", "read-only"), ("max_page_count = {n}", "disk full")]
)
def test_unwritable_job_store_answers_unavailable(tmp_path: Path, pragma: str, condition: str) -> None:
    async def body() -> None:
        async with gateway(tmp_path, queue_size=100) as env:
            conn = env.app._store.database._conn  # type: ignore[attr-defined]  # the store's one connection
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA {pragma.format(n=pages)}")
            for i in range(40):  # a full database fails once a write needs a new page
                try:
                    await create(env, image_data=png(i), display_name="x" * 200)
                except grpc.aio.AioRpcError as err:
                    assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                    info = error_info(err)
                    assert info.reason == "JOB_STORE_UNAVAILABLE" and info.domain == DOMAIN
                    assert info.metadata["store"] == "jobs" and info.metadata["condition"] == condition
                    break
            else:
                pytest.fail("the job store never refused a write")
            if condition == "disk full":  # reads still work (a read-only file refuses every transaction)
                listed = await env.stub.ListJobs(PB.ListJobsRequest(), metadata=md(), timeout=TIMEOUT)
                assert len(listed.jobs) == i

    run(body)


def test_store_errors_map_at_the_boundary(tmp_path: Path) -> None:
    """Unit level: OSError from the artifact store and sqlite storage faults become Unavailable; a SQL bug
    stays a bug (INTERNAL)."""
    store = FileArtifactStore(tmp_path / "a")
    shutil.rmtree(store.root / ".tmp")
    (store.root / ".tmp").write_bytes(b"")
    with pytest.raises(ArtifactStoreUnavailable, match="artifact store cannot write"):
        store.put(b"data", "application/octet-stream")
    jobs = JobStore(tmp_path / "jobs.sqlite3")
    try:
        jobs.database._conn.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]
        with pytest.raises(DatabaseUnavailable, match="read-only") as unavailable:
            jobs.create_job(
                tenant="t",
                options=JobOptions(),
                input_image=ArtifactRef("file:///x/sha256/aa/" + "a" * 64, "a" * 64, 1, "image/png"),
            )
        assert to_rpc_status(unavailable.value).code == grpc.StatusCode.UNAVAILABLE.value[0]
        jobs.database._conn.execute("PRAGMA query_only = OFF")  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="syntax error") as bug:
            jobs.database.transaction(lambda db: db.execute("SELEC 1"))
        assert to_rpc_status(bug.value).code == grpc.StatusCode.INTERNAL.value[0]
    finally:
        jobs.close()


# ---- 2. echoed values are short -------------------------------------------------------------------


def test_shorten_and_clip() -> None:
    assert shorten("jobs/abc") == "'jobs/abc'"
    cut = shorten("x" * 100_000)
    assert len(cut) <= 80 and cut.endswith("... (100000 chars)")
    assert len(shorten(10**5000)) <= 80  # repr of such an int raises ValueError; shorten does not
    status = to_rpc_status(InvalidInput("é" * 100_000, field="name"))
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES and status.ByteSize() < 2048


@pytest.mark.parametrize("filler", ["x", "é", "\x00"])
def test_huge_values_answer_invalid_argument_every_time(tmp_path: Path, filler: str) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            huge = filler * 100_000
            for _ in range(5):
                err = await expect_error(
                    env.stub.GetJob(PB.GetJobRequest(name=huge), metadata=md(), timeout=TIMEOUT),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "name",
                )
                assert trailer_bytes(err) < 3000, trailer_bytes(err)
                assert "(100000 chars)" in err.details()
                err = await expect_error(
                    env.stub.Export(PB.ExportRequest(name=huge, format=1), metadata=md(), timeout=TIMEOUT),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "name",
                )
                assert trailer_bytes(err) < 3000
                err = await expect_error(
                    create(env, display_name=huge), grpc.StatusCode.INVALID_ARGUMENT, "display_name"
                )
                assert trailer_bytes(err) < 3000
                err = await expect_error(create(env, request_id=huge), grpc.StatusCode.INVALID_ARGUMENT, "request_id")
                assert trailer_bytes(err) < 3000

    run(body)


# ---- 3. a reused request_id with another body -----------------------------------------------------


def test_reused_request_id_with_another_body_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            job = await create(env, image_data=png(1), request_id="r-1", display_name="mug")
            again = await create(env, image_data=png(1), request_id="r-1", display_name="mug")
            assert again.name == job.name  # the same body is the same job, as before
            for changed in (
                {"image_data": b"garbage"},
                {"image_data": png(2)},
                {"display_name": "cup"},
                {"options": PB.JobOptions(seed=1)},
            ):
                request = {"image_data": png(1), "request_id": "r-1", "display_name": "mug", **changed}
                err = await expect_error(create(env, **request), grpc.StatusCode.ALREADY_EXISTS, "request_id")
                assert error_info(err).reason == "REQUEST_ID_REUSED" and "request_id 'r-1'" in err.details()
            done = await wait_for(env, job.name, is_done)
            orbit = common_pb2.ViewSpec(
                orbit=common_pb2.OrbitView(azimuth_deg=90, elevation_deg=20, width=64, height=64)
            )
            first = PB.EnhanceRequest(name=done.name, view=orbit, prompt="shiny", seed=3, request_id="click")
            await env.stub.Enhance(first, metadata=md(), timeout=TIMEOUT)
            await env.stub.Enhance(first, metadata=md(), timeout=TIMEOUT)  # a retry: no second round
            err = await expect_error(
                env.stub.Enhance(
                    PB.EnhanceRequest(name=done.name, auto=True, request_id="click"), metadata=md(), timeout=TIMEOUT
                ),
                grpc.StatusCode.ALREADY_EXISTS,
                "request_id",
            )
            assert error_info(err).reason == "REQUEST_ID_REUSED"
            final = await wait_for(env, job.name, is_done)
            assert len(final.versions) == 2

    run(body)


def test_reused_request_id_on_postgresql(postgres: PostgresServer) -> None:
    store = JobStore(PostgresDatabase(postgres.url(postgres.create_database()), pool_size=2))
    image = ArtifactRef("file:///x/sha256/aa/" + "a" * 64, "a" * 64, 1, "image/png")
    try:
        job, created = store.create_job(
            tenant="t", options=JobOptions(), input_image=image, request_id="r", request_hash="h1"
        )
        same, again = store.create_job(
            tenant="t", options=JobOptions(), input_image=image, request_id="r", request_hash="h1"
        )
        assert created and not again and same.id == job.id
        with pytest.raises(RequestIdReused):
            store.create_job(tenant="t", options=JobOptions(), input_image=image, request_id="r", request_hash="h2")
        with pytest.raises(RequestIdReused):
            store.find_by_request_id("t", "r", "h2")
        assert store.find_by_request_id("t", "r", "h1").id == job.id
    finally:
        store.close()


# ---- 4. degenerate enhance cameras ----------------------------------------------------------------


def test_degenerate_enhance_cameras_are_invalid_argument(tmp_path: Path) -> None:
    async def body() -> None:
        async with gateway(tmp_path) as env:
            job = await wait_for(env, (await create(env)).name, is_done)
            good = orbit_camera(30, 10, 2.7, width=64, height=64)
            eye = good.position
            away = Camera(good.fx, good.fy, good.cx, good.cy, 64, 64, look_at(eye, 2 * eye))  # faces away
            tiny = Camera(1.0, 1.0, 0.5, 0.5, 1, 1, good.world_to_camera)
            far_cx = common_pb2.ViewSpec(camera=camera_to_proto(good))
            far_cx.camera.intrinsics.cx = 1e308
            zoom = Camera(1e9, 1e9, 32, 32, 64, 64, good.world_to_camera)  # a field of view of ~0 degrees
            for view, says in (
                (view_of(tiny), "1x1 pixels"),
                (far_cx, "principal point"),
                (view_of(away), "sees 0.00%"),
                (view_of(zoom), "field of view"),
            ):
                err = await expect_error(
                    env.stub.Enhance(PB.EnhanceRequest(name=job.name, view=view), metadata=md(), timeout=TIMEOUT),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "view",
                )
                assert says in err.details(), err.details()
            nan = view_of(good)
            nan.camera.intrinsics.cx = float("nan")
            await expect_error(
                env.stub.Enhance(PB.EnhanceRequest(name=job.name, view=nan), metadata=md(), timeout=TIMEOUT),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert (await get_versions(env, job.name)) == 1  # nothing was queued
            await env.stub.Enhance(PB.EnhanceRequest(name=job.name, view=view_of(good)), metadata=md(), timeout=TIMEOUT)
            assert len((await wait_for(env, job.name, is_done)).versions) == 2

    run(body)


async def get_versions(env: object, name: str) -> int:
    job = await env.stub.GetJob(PB.GetJobRequest(name=name), metadata=md(), timeout=TIMEOUT)  # type: ignore[attr-defined]
    assert job.done
    return len(job.versions)


def test_view_checks_unit() -> None:
    good = orbit_camera(0, 0, 3.0, width=128, height=96)
    check_view_camera(good)
    points = np.random.default_rng(0).normal(scale=0.3, size=(500, 3))
    check_sees(good, points)
    behind = Camera(good.fx, good.fy, good.cx, good.cy, 128, 96, look_at(good.position, 2 * good.position))
    with pytest.raises(InvalidInput, match=r"sees 0\.00%"):
        check_sees(behind, points)
    with pytest.raises(InvalidInput, match="principal point"):
        check_view_camera(Camera(good.fx, good.fy, -1.0, 48, 128, 96, good.world_to_camera))
    with pytest.raises(InvalidInput, match="each side must be at least"):
        check_view_camera(Camera(10, 10, 8, 8, 16, 16, good.world_to_camera))
    with pytest.raises(InvalidInput, match="field of view"):
        check_view_camera(Camera(1e-3, 1e-3, 64, 48, 128, 96, good.world_to_camera))


# ---- 5. the HTTP server drops stalled connections -------------------------------------------------


async def _http_get(port: int, path: str = "/api/v1/openapi.json") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return int(answer.split(b" ", 2)[1])


async def _closed_after(reader: asyncio.StreamReader, start: float, limit: float) -> tuple[float, bytes]:
    data = await asyncio.wait_for(reader.read(), limit)  # b"" (or a 408) then EOF: the server closed it
    return time.monotonic() - start, data


def test_stalled_http_connections_are_closed(tmp_path: Path) -> None:
    header_s, body_s = 2.0, 1.0

    async def body() -> None:
        server = HttpServer(
            create_app(), "127.0.0.1", 0, header_timeout_s=header_s, body_timeout_s=body_s, max_connections=100
        )
        port = await server.start()
        try:
            start = time.monotonic()
            stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
            for _, writer in stalled:
                writer.write(b"GET /api/v1/openapi.json HT")  # half a request line, then nothing
                await writer.drain()
            await asyncio.sleep(0.5)
            assert await _http_get(port) == 200  # a normal request is served meanwhile
            closed = await asyncio.gather(*(_closed_after(reader, start, header_s + 5) for reader, _ in stalled))
            for elapsed, data in closed:
                assert header_s - 0.1 <= elapsed <= header_s + 1.5, elapsed
                assert data.startswith(b"HTTP/1.1 408 "), data[:40]
            for _, writer in stalled:
                writer.close()
            # headers in, then only part of the body: closed after the body timeout
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = time.monotonic()
            writer.write(
                b"POST /api/v1/jobs/abc/enhance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"auto": '
            )
            await writer.drain()
            elapsed, data = await _closed_after(reader, sent, body_s + 5)
            assert body_s - 0.1 <= elapsed <= body_s + 1.5 and data.startswith(b"HTTP/1.1 408 "), (elapsed, data)
            writer.close()
            assert await _http_get(port) == 200
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_http_connection_limit(tmp_path: Path) -> None:
    async def body() -> None:
        server = HttpServer(create_app(), "127.0.0.1", 0, header_timeout_s=30, max_connections=4)
        port = await server.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.2)
            assert await _http_get(port) == 200  # 3 connections of 4
            idle += [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.2)
            assert await _http_get(port) == 503  # 5 of 4: refused, not queued
            for _, writer in idle:
                writer.close()
            await asyncio.sleep(0.3)
            assert await _http_get(port) == 200
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_http_facade_maps_the_same_errors(tmp_path: Path) -> None:
    """Over HTTP: a degenerate camera is 400 naming ``camera``, a reused request_id 409 REQUEST_ID_REUSED,
    an unwritable artifact store 503 with Retry-After, a 100 KB job id a short 400."""

    async def request(port: int, method: str, path: str, body: bytes = b"", ctype: str = "") -> tuple[int, dict, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
        head += "X-Glimpse3D-Tenant: acme\r\n"
        writer.write((head + (f"Content-Type: {ctype}\r\n" if ctype else "") + "\r\n").encode() + body)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        header, _, payload = answer.partition(b"\r\n\r\n")
        return int(header.split(b" ", 2)[1]), json.loads(payload or b"{}"), header.decode("latin-1")

    def multipart(photo: bytes, request_id: str) -> tuple[bytes, str]:
        boundary = "hygiene-boundary"
        parts = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="p.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + photo
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="request_id"\r\n\r\n{request_id}\r\n'
            f"--{boundary}--\r\n".encode()
        )
        return parts, f"multipart/form-data; boundary={boundary}"

    async def body() -> None:
        async with gateway(tmp_path) as env:
            server = HttpServer(create_app(HttpContext(env.app, env.artifacts)), "127.0.0.1", 0)
            port = await server.start()
            try:
                job = await wait_for(env, (await create(env)).name, is_done)
                job_id = job.name.removeprefix("jobs/")
                camera = {"position": [0, 0, 2.7], "width": 1, "height": 1}
                status, answer, _ = await request(
                    port,
                    "POST",
                    f"/api/v1/jobs/{job_id}/enhance",
                    json.dumps({"camera": camera}).encode(),
                    "application/json",
                )
                assert status == 400 and answer["error"]["field"] == "camera", answer
                assert "1x1 pixels" in answer["error"]["message"]
                away = {"position": [0, 0, 2.7], "target": [0, 0, 5.4]}
                status, answer, _ = await request(
                    port,
                    "POST",
                    f"/api/v1/jobs/{job_id}/enhance",
                    json.dumps({"camera": away}).encode(),
                    "application/json",
                )
                assert status == 400 and "sees 0.00%" in answer["error"]["message"], answer
                data, ctype = multipart(png(1), "http-1")
                status, first, _ = await request(port, "POST", "/api/v1/jobs", data, ctype)
                assert status == 201, first
                status, again, _ = await request(port, "POST", "/api/v1/jobs", data, ctype)
                assert status in (200, 201) and again["id"] == first["id"]
                other, ctype = multipart(png(2), "http-1")
                status, answer, _ = await request(port, "POST", "/api/v1/jobs", other, ctype)
                assert status == 409 and answer["error"]["reason"] == "REQUEST_ID_REUSED", answer
                assert answer["error"]["field"] == "request_id"
                status, answer, _ = await request(port, "GET", "/api/v1/jobs/" + "j" * 100_000)
                assert status == 400 and answer["error"]["field"] == "job_id" and len(json.dumps(answer)) < 1024
                shutil.rmtree(env.artifacts.root / ".tmp")
                (env.artifacts.root / ".tmp").write_bytes(b"")
                data, ctype = multipart(png(3), "")
                status, answer, header = await request(port, "POST", "/api/v1/jobs", data, ctype)
                assert status == 503 and answer["error"]["reason"] == "ARTIFACT_STORE_UNAVAILABLE", answer
                assert "retry-after: 1" in header.lower()
            finally:
                await server.stop()

    run(body)
