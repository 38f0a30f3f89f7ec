"""Schema-driven fuzzing of the HTTP/JSON facade with schemathesis, from the OpenAPI spec the server
itself serves (``/api/v1/openapi.json``; tests/e2e/test_http_api.py checks it is the committed one).

The facade runs as the gateway runs it: :class:`HttpServer` (uvicorn) on 127.0.0.1 over a real
:class:`GatewayApp` (SQLite job store, file artifact store) whose pipeline finishes every job and
round in milliseconds. Every operation gets requests generated from its schema (valid ones and ones
that break it), with the job id swapped for one that exists half of the time and the photo for a real
PNG, so that the handlers behind validation run too. Checks: no 5xx answer, and every answer's status
code, content type and body conform to what the spec documents for the operation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import jsonschema
import numpy as np
import pytest
import schemathesis
from fuzzing import QuickPipeline, fuzz, loop_thread, serving
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err, Ok

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.images import encode_png
from glimpse3d.core.splat import Splat
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import API_PREFIX, HttpContext, HttpServer, create_app
from glimpse3d.gateway.store import JobStore

TENANT = "fuzz"
PHOTO = encode_png(np.pad(np.full((12, 12, 3), 200, np.uint8), ((6, 6), (6, 6), (0, 0)), constant_values=40))
SPLAT = Splat.from_colors(np.random.default_rng(1).normal(scale=0.3, size=(16, 3)), np.full((16, 3), 0.5), 0.1, 0.8)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
STREAM_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def check_events(text: str, job_schema: jsonschema.Draft202012Validator) -> None:
    """Every block of a finished job's event stream: ``job`` events whose data is a JobOut, then ``end``."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append(fields)
    assert events and events[-1]["event"] == "end", text[-300:]
    for event in events[:-1]:
        assert event["event"] == "job", event
        job_schema.validate(json.loads(event["data"]))


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, id of a finished job of tenant ``fuzz``)."""
    root = tmp_path_factory.mktemp("fuzz-http")
    found: dict[str, str] = {}

    async def start(stack: AsyncExitStack) -> int:
        config = GatewayConfig(db_path=root / "jobs.sqlite3", artifacts_url=str(root / "artifacts"), queue_size=8)
        store = JobStore(config.db_path)
        stack.callback(store.close)
        artifacts = FileArtifactStore(root / "artifacts")
        app = GatewayApp(config, store, artifacts, QuickPipeline(artifacts, SPLAT, orbit_camera(0, 0, 2.7)))
        await app.start()
        stack.push_async_callback(app.close)
        context = HttpContext(app, artifacts, heartbeat_s=1.0)
        server = HttpServer(
            create_app(context, web_dir=root / "no-web"), "127.0.0.1", 0, streams=context.streams, grace_s=1.0
        )
        await server.start()
        stack.push_async_callback(server.stop)
        job = await app.create_job(TENANT, PHOTO)
        for _ in range(200):
            if (job := await app.get_job(TENANT, job.name)).done:
                break
            await asyncio.sleep(0.02)
        found["job_id"] = job.id
        assert server.port is not None
        return server.port

    with loop_thread() as thread, serving(thread, start) as port:
        yield f"http://127.0.0.1:{port}", found["job_id"]


def _prepare(case: Any, job_id: str, real_job: bool, real_photo: bool) -> None:
    """Point half the cases at the job that exists, give uploads a real photo, and send most cases
    with the fuzz tenant (the rest keep whatever tenant the schema generated, or none)."""
    if real_job and case.path_parameters and "job_id" in case.path_parameters:
        case.path_parameters["job_id"] = job_id
    if real_job and case.path_parameters and "number" in case.path_parameters:
        case.path_parameters["number"] = 1
    if real_photo and isinstance(case.body, dict) and "photo" in case.body:
        case.body["photo"] = PHOTO
    if real_job:
        case.headers = {**(case.headers or {}), "X-Glimpse3D-Tenant": TENANT}


def test_http_api_conforms_to_its_spec(facade: tuple[str, str]) -> None:
    base_url, job_id = facade
    schema = schemathesis.openapi.from_url(f"{base_url}{API_PREFIX}/openapi.json")
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), [r for r in results if isinstance(r, Err)]
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert {op.path for op in operations} >= {f"{API_PREFIX}/jobs", f"{API_PREFIX}/jobs/{{job_id}}"}
    cases = st.one_of([op.as_strategy() for op in operations])
    spec = schema.raw_schema
    job_schema = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/JobOut", **spec})
    calls: dict[str, int] = {}

    @fuzz(300, deadline=None)
    @given(case=cases, real_job=st.booleans(), real_photo=st.booleans())
    def body(case: Any, real_job: bool, real_photo: bool) -> None:
        _prepare(case, job_id, real_job, real_photo)
        stream = case.path.endswith("/events")
        response = case.call_and_validate(base_url=base_url, checks=STREAM_CHECKS if stream else CHECKS, timeout=30)
        calls[f"{case.method} {case.path}"] = calls.get(f"{case.method} {case.path}", 0) + 1
        assert response.status_code < 500, response.text
        if stream and response.status_code == 200:
            check_events(response.text, job_schema)

    body()
    assert len(calls) >= len(operations) // 2, calls  # the examples spread over the operations
