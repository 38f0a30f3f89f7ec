"""Twenty concurrent decompression bombs against the in-process gateway (gRPC and HTTP).

Each bomb is a legal upload: a PNG of about 8 KB declaring 8192 x 8192 pixels, which takes about
700 MiB to decode. The process decode gate admits one at a time here (a budget of one full-size
image, waiting at most half a second), so the rest must be refused with RESOURCE_EXHAUSTED (429
over HTTP, with Retry-After) while memory stays bounded, and the gateway must answer normally after.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx2 as httpx
import psutil
from PIL import Image
from test_gateway_app import TestPipeline, png

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.decodegate import FULL_SIZE_PIXELS, DecodeGate, set_process_gate
from glimpse3d.core.rpc import create_server
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext, HttpServer, create_app
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc

PB = glimpse3d_pb2
TIMEOUT = 60.0
MiB = 1024 * 1024
# One decode of a full-size bomb peaks at about 700 MiB here (11 bytes a pixel: Pillow's buffer, the
# RGB copy, the array); the gate admits one at a time, so the peak may not pass one decode plus the
# servers' own buffers. Without the gate the twenty decodes would run six at a time (the default
# thread pool on a 2-core machine), above 4 GiB.
PEAK_GROWTH_BOUND = 1024 * MiB
# After the storm malloc_trim has handed the decode memory back; what stays is the servers' state.
AFTER_GROWTH_BOUND = 150 * MiB


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8192, 8192)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@dataclass
class Env:
    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    http: httpx.AsyncClient


@asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[Env]:
    config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(tmp_path / "artifacts"))
    store = JobStore(config.db_path)
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    pipeline = TestPipeline(artifacts)
    pipeline.gate.clear()  # jobs stay queued/running: only admission is under test
    app = GatewayApp(config, store, artifacts, pipeline)
    await app.start()
    server, port = create_server(
        [(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, Glimpse3DServicer(app))],
        [SERVICE_NAME],
        metrics_port=None,
    )
    await server.start()
    context = HttpContext(app, artifacts, heartbeat_s=0.2)
    http = HttpServer(
        create_app(context, web_dir=tmp_path / "no-web"), "127.0.0.1", 0, streams=context.streams, grace_s=1.0
    )
    http_port = await http.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)])
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=TIMEOUT)
    try:
        yield Env(glimpse3d_pb2_grpc.Glimpse3DStub(channel), client)
    finally:
        pipeline.gate.set()
        await client.aclose()
        await channel.close()
        await http.stop()
        await server.stop(0)
        await app.close()
        store.close()


@contextmanager
def rss_sampler() -> Iterator[dict[str, int]]:
    """{"before", "peak", "after"} RSS of this process, sampled every 5 ms while the block runs."""
    proc = psutil.Process()
    seen = {"before": proc.memory_info().rss, "peak": 0, "after": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen["peak"] = max(seen["peak"], proc.memory_info().rss)
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        seen["after"] = proc.memory_info().rss
        seen["peak"] = max(seen["peak"], seen["after"])


async def grpc_upload(env: Env, data: bytes, tenant: str) -> str:
    try:
        await env.stub.CreateJob(
            PB.CreateJobRequest(image_data=data), metadata=(("x-glimpse3d-tenant", tenant),), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        assert "cannot be decoded now" in (err.details() or "")
        return "refused"
    return "accepted"


async def http_upload(env: Env, data: bytes, tenant: str) -> str:
    response = await env.http.post(
        "/api/v1/jobs", files={"photo": ("bomb.png", data, "image/png")}, headers={"x-glimpse3d-tenant": tenant}
    )
    if response.status_code == 201:
        return "accepted"
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == "1"
    error = response.json()["error"]
    assert error["code"] == "RESOURCE_EXHAUSTED" and error["field"] == "photo", error
    return "refused"


def test_twenty_concurrent_bombs_are_bounded_and_the_gateway_stays_up(tmp_path: Path) -> None:
    gate = DecodeGate(max_pixels=FULL_SIZE_PIXELS, max_concurrent=4, wait_s=0.5)
    old = set_process_gate(gate)
    data = bomb()
    assert len(data) < 16 * 1024

    async def body() -> None:
        async with gateway(tmp_path) as env:
            await grpc_upload(env, png(), "warm-up")  # first-call allocations are not the bombs' doing
            with rss_sampler() as rss:
                outcomes = await asyncio.gather(
                    *(grpc_upload(env, data, f"t{i}") for i in range(10)),
                    *(http_upload(env, data, f"t{i}") for i in range(10)),
                )
                deadline = time.monotonic() + 10
                while gate.decodes_in_flight and time.monotonic() < deadline:  # validation of the last
                    await asyncio.sleep(0.05)
            assert outcomes.count("refused") >= 1, outcomes
            assert outcomes.count("accepted") >= 1, outcomes  # the budget admits a full-size image
            assert outcomes.count("accepted") + outcomes.count("refused") == 20
            assert gate.refused == outcomes.count("refused")
            assert gate.pixels_in_use == 0 and gate.decodes_in_flight == 0  # every reservation released
            peak, after = rss["peak"] - rss["before"], rss["after"] - rss["before"]
            print(
                f"RSS before {rss['before'] / MiB:.0f} MiB, peak +{peak / MiB:.0f}, after +{after / MiB:.0f}; "
                f"{outcomes.count('accepted')} accepted, {outcomes.count('refused')} refused"
            )
            assert peak < PEAK_GROWTH_BOUND, f"peak RSS grew by {peak / MiB:.0f} MiB"
            assert after < AFTER_GROWTH_BOUND, f"RSS stayed {after / MiB:.0f} MiB above its start"
            # and the gateway answers a normal call
            job = await env.stub.CreateJob(
                PB.CreateJobRequest(image_data=png()), metadata=(("x-glimpse3d-tenant", "after"),), timeout=TIMEOUT
            )
            got = await env.stub.GetJob(
                PB.GetJobRequest(name=job.name), metadata=(("x-glimpse3d-tenant", "after"),), timeout=TIMEOUT
            )
            assert got.name == job.name
            response = await env.http.get("/api/v1/jobs", headers={"x-glimpse3d-tenant": "after"})
            assert response.status_code == 200 and len(response.json()["jobs"]) == 1

    try:
        asyncio.run(asyncio.wait_for(body(), 120))
    finally:
        set_process_gate(old)
