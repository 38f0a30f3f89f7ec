"""The HTTP/JSON facade (``/api/v1`` and the web workspace) of the gateway.

End to end first: the gateway process of the session ``stack`` (five real services, the gateway
started the way ``make up`` starts it) serves HTTP next to gRPC; the tests upload the sample photo,
follow the job over server-sent events, enhance it from an explicit camera and from "auto", download
every format and walk every error path over real HTTP. Then an in-process gateway (the real
:class:`GatewayApp` and pipeline, talking to the same five services) embedded with
:class:`HttpServer`, for a full queue and for shutdown with streams open. Last, the pieces whose
answers are known without a server: the look-at camera conversion, the error mapping, the event
stream's heartbeats, static serving and the committed OpenAPI spec.

The tests use a tenant of their own and a 64 px working resolution and round views, so the file's
jobs take seconds on two CPU cores.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image
from pygltflib import GLTF2
from sse_starlette import ServerSentEvent
from starlette.testclient import TestClient

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import orbit_camera, orbit_eye
from glimpse3d.core.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    Unavailable,
)
from glimpse3d.core.formats import read_ply, read_splat
from glimpse3d.core.images import MAX_IMAGE_BYTES, decode_image
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext, HttpServer, create_app, openapi_text
from glimpse3d.gateway.http.__main__ import main as spec_cli
from glimpse3d.gateway.http.errors import error_response
from glimpse3d.gateway.http.mapping import camera_from_view, camera_to_view
from glimpse3d.gateway.http.schemas import CameraView
from glimpse3d.gateway.http.sse import HEARTBEAT, StreamRegistry, event_response, job_event
from glimpse3d.gateway.http.uploads import body_limit
from glimpse3d.gateway.pipeline import ServiceClients, ServicePipeline
from glimpse3d.gateway.stack import REQUIRED_SERVICES as SERVICES
from glimpse3d.gateway.store import JobStore

REPO = Path(__file__).resolve().parents[2]
SAMPLE_BYTES = (REPO / "assets" / "sample.png").read_bytes()
SPEC = REPO / "gateway" / "openapi.json"
API = "/api/v1"
RES = 64
TIMEOUT_S = 300.0
TENANT = f"http-{uuid.uuid4().hex[:12]}"
TENANT_HEADER = "X-Glimpse3D-Tenant"
MEDIA_TYPES = {"ply": "application/x-glimpse3d-splat+ply", "splat": "application/x-glimpse3d-splat",
               "glb": "model/gltf-binary"}
JOB_KEYS = {"id", "name", "display_name", "state", "done", "progress", "error", "versions", "pending_rounds",
            "create_time", "update_time"}
VERSION_KEYS = {"number", "parent", "kind", "camera", "metrics", "num_gaussians", "create_time", "downloads"}
# A camera on the +x axis, 10 degrees up: orbit azimuth 90, elevation 10, radius 2.7 (worked by hand).
EAST = [2.7 * math.cos(math.radians(10.0)), 2.7 * math.sin(math.radians(10.0)), 0.0]


# ---- helpers --------------------------------------------------------------------------------------


def encoded(fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(SAMPLE_BYTES)).save(buf, format=fmt, **save)
    return buf.getvalue()


def photo_files(data: bytes = SAMPLE_BYTES, name: str = "sample.png") -> dict[str, tuple[str, bytes, str]]:
    return {"photo": (name, data, "application/octet-stream")}


def create(client: httpx.Client, data: bytes = SAMPLE_BYTES, **fields: Any) -> httpx.Response:
    form = {"resolution": str(RES), **{k: str(v) for k, v in fields.items()}}
    return client.post(f"{API}/jobs", files=photo_files(data), data=form)


def expect_error(resp: httpx.Response, status: int, code: str, field: str | None, *needles: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["code"] == code and error["field"] == field, error
    for needle in needles:
        assert needle in error["message"], error
    return error


def read_stream(client: httpx.Client, path: str, **params: str) -> list[dict[str, str]]:
    """Every block of an event stream until the server ends it: events, and comments as {"comment"}."""
    blocks: list[dict[str, str]] = []
    with client.stream("GET", path, params=params, timeout=TIMEOUT_S) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        block: dict[str, str] = {}
        for line in resp.iter_lines():
            if not line:
                if block:
                    blocks.append(block)
                block = {}
            elif line.startswith(":"):
                blocks.append({"comment": line})
            else:
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                block[key] = f"{block[key]}\n{value}" if key in block else value
    return blocks


def job_events(blocks: list[dict[str, str]]) -> list[dict]:
    assert blocks[-1] == {"event": "end", "data": "{}"}, blocks[-3:]
    jobs = [json.loads(b["data"]) for b in blocks if b.get("event") == "job"]
    assert [int(b["id"]) for b in blocks if b.get("event") == "job"] == [j["revision"] for j in jobs]
    return jobs


def watch(client: httpx.Client, job_id: str) -> list[dict]:
    return job_events(read_stream(client, f"{API}/jobs/{job_id}/events"))


def ply_count(data: bytes) -> int:
    header = data[: data.index(b"end_header")].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\n"), header[:60]
    [line] = [ln for ln in header.splitlines() if ln.startswith("element vertex ")]
    return int(line.split()[-1])


def check_download(fmt: str, data: bytes, n: int) -> None:
    if fmt == "ply":
        assert ply_count(data) == n and read_ply(data).num_gaussians == n
    elif fmt == "splat":
        assert len(data) == 32 * n and read_splat(data).num_gaussians == n
    else:
        magic, version, length = struct.unpack("<4sII", data[:12])
        assert (magic, version, length) == (b"glTF", 2, len(data))
        gltf = GLTF2.load_from_bytes(data)
        [primitive] = gltf.meshes[0].primitives
        assert gltf.accessors[primitive.attributes.POSITION].count == n


def raw_request(port: int, head: str, body_parts: Iterator[bytes], timeout_s: float = 20.0) -> tuple[int, dict]:
    """Send a request by hand (head, then body parts until the server answers or stops reading) and
    return the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(body[: _length(data)])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# ---- the stack's gateway over HTTP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def http(stack) -> Iterator[httpx.Client]:
    assert stack.http_url is not None
    with httpx.Client(base_url=stack.http_url, headers={TENANT_HEADER: TENANT}, timeout=60.0) as client:
        yield client


@dataclass(frozen=True)
class Run:
    created: httpx.Response
    events: list[dict]  # the jobs streamed right after creation, until the stream ended

    @property
    def id(self) -> str:
        return self.created.json()["id"]

    @property
    def final(self) -> dict:
        return self.events[-1]


@pytest.fixture(scope="module")
def first(http) -> Run:
    created = create(http, seed=7, display_name="sample", request_id=str(uuid.uuid4()))
    assert created.status_code == 201, created.text
    return Run(created, watch(http, created.json()["id"]))


def test_health_spec_and_ready_file(stack, http):
    assert http.get(f"{API}/healthz").json() == {"status": "ok"}
    served = http.get(f"{API}/openapi.json")
    assert served.status_code == 200 and served.json() == json.loads(SPEC.read_text())
    ready = json.loads((stack.state_dir / "gateway.ready.json").read_text())
    assert {"port", "metrics_port", "http_port", "pid"} <= ready.keys()
    assert stack.http_url == f"http://127.0.0.1:{ready['http_port']}" and ready["port"] == stack.ports["gateway"]
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_create_streams_events_until_succeeded(http, first):
    assert first.created.headers["location"] == f"{API}/jobs/{first.id}"
    created = first.created.json()
    assert JOB_KEYS <= created.keys()
    assert created["state"] in ("QUEUED", "RUNNING") and not created["done"] and created["versions"] == []
    assert (created["display_name"], created["tenant"], created["name"]) == ("sample", TENANT, f"jobs/{first.id}")
    assert created["options"] == {"novel_views": 0, "enhance_rounds": 0, "prompt": "", "seed": 7, "resolution": RES,
                                  "matte_points": []}
    datetime.fromisoformat(created["create_time"])

    events = first.events
    assert all(e["id"] == first.id for e in events)
    assert [e["done"] for e in events] == [False] * (len(events) - 1) + [True]
    assert {"matting_depth", "reconstruct"} <= {e["progress"]["stage"] for e in events}
    fractions = [e["progress"]["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(set(revisions))

    job = first.final
    assert job["state"] == "SUCCEEDED" and job["error"] is None and job["pending_rounds"] == 0
    [v1] = job["versions"]
    assert VERSION_KEYS <= v1.keys()
    assert (v1["number"], v1["parent"], v1["kind"], v1["camera"], v1["report"]) == (1, None, "initial", None, None)
    assert v1["num_gaussians"] == v1["metrics"]["num_gaussians"] > 100 and v1["metrics"]["input_view_psnr_db"] > 10
    assert v1["downloads"] == {f: f"{API}/jobs/{first.id}/versions/1/download?format={f}&tenant={TENANT}"
                               for f in ("ply", "splat", "glb", "spz", "sog", "obj", "mesh-glb")}

    assert http.get(f"{API}/jobs/{first.id}").json() == job
    assert http.get(f"{API}/jobs/{first.id}/versions").json() == {"versions": job["versions"]}
    assert watch(http, first.id) == [job]  # a done job: its snapshot, then the end of the stream


def test_photo_comes_back_as_uploaded(stack, http, first):
    resp = http.get(f"{API}/jobs/{first.id}/photo")
    assert resp.status_code == 200 and resp.content == SAMPLE_BYTES
    assert resp.headers["content-type"] == "image/png"
    assert first.final["photo_url"] == f"{API}/jobs/{first.id}/photo?tenant={TENANT}"
    # links carry the tenant, for browsers that cannot send the header
    assert httpx.get(f"{stack.http_url}{first.final['photo_url']}").content == SAMPLE_BYTES


@pytest.mark.parametrize("fmt", ["ply", "splat", "glb"])
def test_download_each_format(http, first, fmt):
    v1 = first.final["versions"][0]
    resp = http.get(v1["downloads"][fmt])
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == MEDIA_TYPES[fmt]
    assert resp.headers["content-disposition"] == f'attachment; filename="{first.id}-v1.{fmt}"'
    assert resp.headers["x-glimpse3d-version"] == "1"
    check_download(fmt, resp.content, v1["num_gaussians"])


def test_list_jobs_pages_newest_first(http, first):
    second = create(http, encoded("JPEG", quality=90), display_name="jpeg")
    assert second.status_code == 201, second.text
    assert http.post(f"{API}/jobs/{second.json()['id']}/cancel").json()["state"] == "CANCELLED"
    page1 = http.get(f"{API}/jobs", params={"page_size": 1}).json()
    assert [j["id"] for j in page1["jobs"]] == [second.json()["id"]] and page1["next_page_token"]
    page2 = http.get(f"{API}/jobs", params={"page_size": 1, "page_token": page1["next_page_token"]}).json()
    assert [j["id"] for j in page2["jobs"]] == [first.id] and page2["next_page_token"] == ""
    everything = http.get(f"{API}/jobs").json()
    assert [j["id"] for j in everything["jobs"]] == [second.json()["id"], first.id]
    other = http.get(f"{API}/jobs", headers={TENANT_HEADER: f"other-{TENANT}"}).json()
    assert other == {"jobs": [], "next_page_token": ""}
    expect_error(http.get(f"{API}/jobs", params={"page_token": "bogus"}), 400, "INVALID_ARGUMENT", "page_token")
    expect_error(http.get(f"{API}/jobs", params={"page_size": -1}), 400, "INVALID_ARGUMENT", "page_size")
    expect_error(http.get(f"{API}/jobs", params={"page_size": "many"}), 400, "INVALID_ARGUMENT", "page_size")


def test_enhance_camera_and_auto_add_versions(http, first):
    v1_ply = http.get(f"{API}/jobs/{first.id}/versions/1/download").content
    camera = {"position": EAST, "target": [0, 0, 0], "up": [0, 1, 0], "fov_y_deg": 40, "width": RES, "height": RES}
    explicit = {"camera": camera, "seed": 3, "request_id": f"cam-{first.id}"}
    started = http.post(f"{API}/jobs/{first.id}/enhance", json=explicit)
    assert started.status_code == 202, started.text
    assert started.json()["state"] == "RUNNING" and started.json()["pending_rounds"] == 1
    assert not started.json()["done"]
    queued = http.post(f"{API}/jobs/{first.id}/enhance", json={"auto": True, "seed": 4})
    assert queued.status_code == 202 and queued.json()["pending_rounds"] == 2  # the running one and this one
    retry = http.post(f"{API}/jobs/{first.id}/enhance", json=explicit)  # same request_id: no other round
    assert retry.status_code == 202 and retry.json()["pending_rounds"] == 2

    events = watch(http, first.id)
    assert {"enhance", "refine"} <= {e["progress"]["stage"] for e in events}
    job = events[-1]
    assert job["state"] == "SUCCEEDED" and job["error"] is None, job["error"]
    v1, v2, v3 = job["versions"]
    assert v1 == first.final["versions"][0]
    for version, number in ((v2, 2), (v3, 3)):
        assert (version["number"], version["parent"], version["kind"]) == (number, number - 1, "enhance")
        metrics = version["metrics"]
        assert 0.0 <= metrics["accepted_fraction"] <= 1.0
        assert 0.0 <= metrics["enhanced_view_error_after"] <= metrics["enhanced_view_error_before"] + 1e-6
        assert version["report"]["accepted_fraction"] == metrics["accepted_fraction"]
        assert version["num_gaussians"] >= v1["num_gaussians"]  # read from the splat's header; rounds may grow it
        assert (version["camera"]["width"], version["camera"]["height"]) == (RES, RES)
    np.testing.assert_allclose(v2["camera"]["position"], EAST, atol=1e-9)
    np.testing.assert_allclose(v2["camera"]["target"], [0, 0, 0], atol=1e-9)
    assert v2["camera"]["fov_y_deg"] == pytest.approx(40.0)
    expected = orbit_camera(90.0, 10.0, 2.7, width=RES, height=RES)
    np.testing.assert_allclose(np.reshape(v2["camera"]["world_to_camera"], (4, 4)), expected.world_to_camera,
                               atol=1e-9)
    assert np.linalg.norm(v3["camera"]["position"]) == pytest.approx(2.7)  # "auto" picks an orbit view

    latest = http.get(f"{API}/jobs/{first.id}/versions/latest/download", params={"format": "ply"})
    assert latest.headers["x-glimpse3d-version"] == "3" and latest.headers["cache-control"] == "no-cache"
    assert latest.content == http.get(v3["downloads"]["ply"]).content != v1_ply
    assert http.get(f"{API}/jobs/{first.id}/versions/1/download").content == v1_ply  # versions never change


def test_full_round_queue_is_429_and_cancel_stops_the_round(http, first):
    before = http.get(f"{API}/jobs/{first.id}").json()
    answers = [http.post(f"{API}/jobs/{first.id}/enhance", json={"auto": True, "seed": 10 + i}) for i in range(5)]
    assert [a.status_code for a in answers] == [202] * 4 + [429], [a.text for a in answers]
    error = expect_error(answers[-1], 429, "RESOURCE_EXHAUSTED", None)
    assert error["reason"] == "OVERLOADED" and answers[-1].headers["retry-after"] == "1"
    cancelled = http.post(f"{API}/jobs/{first.id}/cancel")
    assert cancelled.status_code == 200
    job = cancelled.json()
    # a cancelled round returns the job to SUCCEEDED, drops the queued rounds, keeps the versions
    assert job["state"] == "SUCCEEDED" and job["done"] and job["pending_rounds"] == 0
    assert job["error"]["code"] == "CANCELLED" and "cancelled" in job["error"]["message"]
    assert len(job["versions"]) == len(before["versions"])


BAD_ENHANCE = {
    "empty": ({}, "camera", "camera"),
    "auto-false": ({"auto": False}, "camera", "auto: true"),
    "both": ({"auto": True, "camera": {"position": [0, 0, 2.7]}}, "auto", "not both"),
    "short-position": ({"camera": {"position": [0, 0]}}, "camera.position", "camera.position"),
    "text-coordinate": ({"camera": {"position": ["far", 0, 2.7]}}, "camera.position[0]", "number"),
    "far-away": ({"camera": {"position": [0, 0, 2.7], "target": [0, -1e9, 0]}}, "camera.target[1]", "1000000"),
    "target-on-camera": ({"camera": {"position": [0, 0, 2.7], "target": [0, 0, 2.7]}}, "camera.target", "differ"),
    "up-along-view": ({"camera": {"position": [0, 2.7, 0]}}, "camera.up", "parallel"),
    "zero-up": ({"camera": {"position": [0, 0, 2.7], "up": [0, 0, 0]}}, "camera.up", "zero"),
    "fov-0": ({"camera": {"position": [0, 0, 2.7], "fov_y_deg": 0}}, "camera.fov_y_deg", "camera.fov_y_deg"),
    "width-0": ({"camera": {"position": [0, 0, 2.7], "width": 0}}, "camera.width", "camera.width"),
    "too-tall": ({"camera": {"position": [0, 0, 2.7], "height": 10_000}}, "camera.height", "8192"),
    "unknown-key": ({"camera": {"position": [0, 0, 2.7], "fov": 40}}, "camera.fov", "camera.fov"),
    "strength-2": ({"auto": True, "strength": 2}, "strength", "strength"),
    "negative-seed": ({"auto": True, "seed": -1}, "seed", "seed"),
    "long-prompt": ({"auto": True, "prompt": "x" * 1001}, "prompt", "prompt"),
}


@pytest.mark.parametrize("case", list(BAD_ENHANCE))
def test_enhance_rejects_bad_requests(http, first, case):
    body, field, needle = BAD_ENHANCE[case]
    expect_error(http.post(f"{API}/jobs/{first.id}/enhance", json=body), 400, "INVALID_ARGUMENT", field, needle)
    assert http.get(f"{API}/jobs/{first.id}").json()["done"]  # no round started


@pytest.mark.parametrize(("raw", "field"), [(b'{"camera": {"position": [NaN, 0, 2.7]}}', "camera.position[0]"),
                                            (b'{"camera": ', "body"), (b"", "body")])
def test_enhance_rejects_unparsable_json(http, first, raw, field):
    resp = http.post(f"{API}/jobs/{first.id}/enhance", content=raw, headers={"content-type": "application/json"})
    expect_error(resp, 400, "INVALID_ARGUMENT", field)


def job_requests(job_id: str) -> dict[str, tuple[str, str, dict]]:
    base = f"{API}/jobs/{job_id}"
    return {"get": ("GET", base, {}), "events": ("GET", f"{base}/events", {}),
            "versions": ("GET", f"{base}/versions", {}), "download": ("GET", f"{base}/versions/1/download", {}),
            "latest": ("GET", f"{base}/versions/latest/download", {}), "photo": ("GET", f"{base}/photo", {}),
            "enhance": ("POST", f"{base}/enhance", {"json": {"auto": True}}), "cancel": ("POST", f"{base}/cancel", {})}


@pytest.mark.parametrize("endpoint", list(job_requests("x")))
def test_unknown_and_malformed_jobs(http, first, endpoint):
    method, path, kwargs = job_requests("0123456789abcdef")[endpoint]
    expect_error(http.request(method, path, **kwargs), 404, "NOT_FOUND", "job_id", "jobs/0123456789abcdef")
    method, path, kwargs = job_requests("bad.id")[endpoint]
    expect_error(http.request(method, path, **kwargs), 400, "INVALID_ARGUMENT", "job_id", "bad.id")
    method, path, kwargs = job_requests(first.id)[endpoint]
    other = http.request(method, path, headers={TENANT_HEADER: f"other-{TENANT}"}, **kwargs)
    expect_error(other, 404, "NOT_FOUND", "job_id")  # another tenant's job does not exist for it


def test_bad_tenant_and_unknown_endpoints(stack, http, first):
    expect_error(http.get(f"{API}/jobs", headers={TENANT_HEADER: "no spaces"}), 400, "INVALID_ARGUMENT",
                 "x-glimpse3d-tenant")
    assert http.get(f"{API}/jobs/{first.id}", headers={TENANT_HEADER: "default"}).status_code == 404
    assert httpx.get(f"{stack.http_url}{API}/jobs/{first.id}", params={"tenant": TENANT}).status_code == 200
    expect_error(http.get(f"{API}/nope"), 404, "NOT_FOUND", None, "no such endpoint")
    expect_error(http.delete(f"{API}/jobs/{first.id}"), 404, "NOT_FOUND", None, "DELETE")


@pytest.mark.parametrize(("number", "params", "status", "field"), [
    ("1", {"format": "stl"}, 400, "format"), ("0", {}, 400, "number"), ("01", {}, 400, "number"),
    ("first", {}, 400, "number"), ("99", {}, 404, "number")])
def test_download_rejects_bad_versions_and_formats(http, first, number, params, status, field):
    resp = http.get(f"{API}/jobs/{first.id}/versions/{number}/download", params=params)
    expect_error(resp, status, "INVALID_ARGUMENT" if status == 400 else "NOT_FOUND", field)


def test_webp_upload_is_stored_as_png_and_cancel_makes_enhance_409(http):
    webp = encoded("WEBP", lossless=True)
    created = create(http, webp, display_name="webp")
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    cancelled = http.post(f"{API}/jobs/{job_id}/cancel").json()
    assert cancelled["state"] == "CANCELLED" and cancelled["error"]["code"] == "CANCELLED"
    photo = http.get(f"{API}/jobs/{job_id}/photo")
    assert photo.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_image(photo.content), np.asarray(Image.open(io.BytesIO(webp))))
    error = expect_error(http.post(f"{API}/jobs/{job_id}/enhance", json={"auto": True}), 409,
                         "FAILED_PRECONDITION", "job_id", "CANCELLED")
    assert error["reason"] == "FAILED_PRECONDITION"
    expect_error(http.get(f"{API}/jobs/{job_id}/versions/latest/download"), 409, "FAILED_PRECONDITION", "number")


def truncated_png() -> bytes:
    return SAMPLE_BYTES[: len(SAMPLE_BYTES) // 2]


BAD_CREATES = {
    "no-photo": ({"data": {"display_name": "x"}}, 400, "photo", "required"),
    "photo-as-text": ({"data": {"photo": "not a file"}}, 400, "photo", "file"),
    "text-file": ({"files": photo_files(b"hello, world", "a.png")}, 415, "photo", "PNG, JPEG or WebP"),
    "gif": ({"files": photo_files(encoded("GIF"), "a.gif")}, 415, "photo", "PNG, JPEG or WebP"),
    "empty": ({"files": photo_files(b"", "a.png")}, 400, "photo", "empty"),
    "truncated-png": ({"files": photo_files(truncated_png())}, 400, "photo", "photo"),
    "bad-webp": ({"files": photo_files(b"RIFF\x10\x00\x00\x00WEBPVP8 junk", "a.webp")}, 400, "photo", "WebP"),
    "novel-views-text": ({"files": photo_files(), "data": {"novel_views": "some"}}, 400, "novel_views", "integer"),
    "novel-views-99": ({"files": photo_files(), "data": {"novel_views": "99"}}, 400, "novel_views", "0..16"),
    "negative-seed": ({"files": photo_files(), "data": {"seed": "-1"}}, 400, "seed", "seed"),
    "bad-resolution": ({"files": photo_files(), "data": {"resolution": "8"}}, 400, "resolution", "resolution"),
    "long-name": ({"files": photo_files(), "data": {"display_name": "n" * 201}}, 400, "display_name", "200"),
    "unknown-field": ({"files": photo_files(), "data": {"colour": "red"}}, 400, "colour", "unknown"),
    "json-body": ({"json": {"photo": "x"}}, 415, "photo", "multipart/form-data"),
}


@pytest.mark.parametrize("case", list(BAD_CREATES))
def test_create_rejects_bad_uploads(http, case):
    kwargs, status, field, needle = BAD_CREATES[case]
    before = http.get(f"{API}/jobs").json()["jobs"]
    expect_error(http.post(f"{API}/jobs", **kwargs), status, "INVALID_ARGUMENT", field, needle)
    assert http.get(f"{API}/jobs").json()["jobs"] == before


def multipart_head(port: int, length: int | None) -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {API}/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{TENANT_HEADER}: {TENANT}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\n{framing}\r\n\r\n")


PART_HEAD = b'--xyz\r\nContent-Disposition: form-data; name="photo"; filename="big.png"\r\n\r\n'


def test_too_large_upload_is_refused_before_its_body_is_read(stack, http):
    port = int(stack.http_url.rsplit(":", 1)[1])
    # announced too large (more than a photo, a drawn mask and the form): the answer comes after 1 KiB
    head = multipart_head(port, body_limit() + (1 << 20))
    status, body = raw_request(port, head, iter([PART_HEAD + b"\0" * 1024]))
    assert status == 413 and body["error"]["field"] == "photo" and body["error"]["reason"] == "PAYLOAD_TOO_LARGE"

    # chunked, no length: counted while it streams, refused once past the limit
    def chunks() -> Iterator[bytes]:
        piece = b"\0" * (1 << 20)
        yield b"%x\r\n%s\r\n" % (len(PART_HEAD), PART_HEAD)
        for _ in range(body_limit() // len(piece) + 2):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    status, body = raw_request(port, multipart_head(port, None), chunks())
    assert status == 413 and body["error"]["code"] == "INVALID_ARGUMENT" and body["error"]["field"] == "photo"
    # every other body is limited too (1 MiB): an enhance announcing 2 MiB is refused at once
    head = (f"POST {API}/jobs/some-job/enhance HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {2 << 20}\r\n\r\n")
    status, body = raw_request(port, head, iter([b'{"auto": true, "prompt": "' + b"x" * 1024]))
    assert status == 413 and body["error"]["field"] == "body" and body["error"]["reason"] == "PAYLOAD_TOO_LARGE"
    # a file one byte over the limit inside a request under the body limit
    over = http.post(f"{API}/jobs", files=photo_files(b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_IMAGE_BYTES - 7)))
    expect_error(over, 413, "INVALID_ARGUMENT", "photo", str(MAX_IMAGE_BYTES))
    assert http.get(f"{API}/healthz").status_code == 200


# ---- an in-process gateway embedding the facade -------------------------------------------------


class LoopThread:
    """An asyncio loop in a thread; ``run(coro)`` waits for the coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Embedded:
    loop: LoopThread
    app: GatewayApp
    context: HttpContext
    server: HttpServer
    url: str


@pytest.fixture(scope="module")
def embedded(stack, tmp_path_factory) -> Iterator[Embedded]:
    """The real GatewayApp and pipeline (one worker, one queue slot) over the stack's services and
    artifact store, served by HttpServer on port 0 in this process, with 0.2 s heartbeats."""
    tmp = tmp_path_factory.mktemp("http-gateway")
    addrs = {f"{s}_addr": stack.addr(s) for s in SERVICES}
    artifacts_dir = stack.state_dir / "artifacts"  # the services read and write artifacts there
    config = GatewayConfig(db_path=tmp / "jobs.sqlite3", artifacts_url=str(artifacts_dir), workers=1,
                           queue_size=1, http_port=0, http_heartbeat_s=0.2, **addrs)
    loop = LoopThread()
    store = JobStore(config.db_path)
    artifacts = FileArtifactStore(artifacts_dir)

    async def start() -> tuple[GatewayApp, ServiceClients, HttpContext, HttpServer]:
        clients = ServiceClients(config)
        app = GatewayApp(config, store, artifacts, ServicePipeline(config, clients, artifacts))
        await app.start()
        context = HttpContext(app, artifacts, heartbeat_s=config.http_heartbeat_s)
        server = HttpServer(create_app(context, web_dir=tmp / "no-web"), "127.0.0.1", 0, streams=context.streams,
                            grace_s=2.0)
        await server.start()
        return app, clients, context, server

    app, clients, context, server = loop.run(start())
    try:
        yield Embedded(loop, app, context, server, f"http://127.0.0.1:{server.port}")
    finally:
        async def stop() -> None:
            await server.stop()
            await app.close()
            await clients.close()

        loop.run(stop())
        loop.close()
        store.close()


def test_embedded_full_queue_answers_429(embedded):
    with httpx.Client(base_url=embedded.url, timeout=60.0) as client:
        answers = [create(client, display_name=f"q{i}") for i in range(3)]
        statuses = [a.status_code for a in answers]
        try:
            # one worker busy with the first job and one waiting slot: the third is refused at the latest
            assert statuses[0] == 201 and statuses.count(429) >= 1 and set(statuses) <= {201, 429}, statuses
            refused = answers[statuses.index(429)]
            expect_error(refused, 429, "RESOURCE_EXHAUSTED", None, "queue")
            assert refused.headers["retry-after"] == "1"
        finally:
            for answer in answers:
                if answer.status_code == 201:
                    client.post(f"{API}/jobs/{answer.json()['id']}/cancel")


def test_embedded_stream_has_heartbeats_and_stopping_ends_it(embedded):
    """A second HttpServer over the same app: streams get heartbeats while a job runs, and stopping
    the server ends the open stream with `event: end` at once instead of waiting for the job."""
    second = HttpServer(create_app(embedded.context), "127.0.0.1", 0, streams=embedded.context.streams, grace_s=2.0)
    port = embedded.loop.run(second.start())
    seen: list[str] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as client:
        # long enough (seconds) to outlast several 0.2 s heartbeats: a bare 64 px job can finish first
        job = create(client, display_name="stream", novel_views=2, enhance_rounds=2)
        assert job.status_code == 201, job.text
        try:
            with client.stream("GET", f"{API}/jobs/{job.json()['id']}/events") as resp:
                lines = resp.iter_lines()
                for line in lines:  # up to the first heartbeat, while the job runs
                    seen.append(line)
                    if line.startswith(":"):
                        break
                stopped = asyncio.run_coroutine_threadsafe(second.stop(), embedded.loop.loop)
                rest = list(lines)
                stopped.result(30)
        finally:
            httpx.post(f"{embedded.url}{API}/jobs/{job.json()['id']}/cancel", timeout=60.0)
    assert seen[0] == "retry: 2000" and "event: job" in seen and seen[-1] == HEARTBEAT.strip()
    assert "event: end" in rest and len(embedded.context.streams) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}{API}/healthz")


def test_embedded_http_port_in_use_is_a_config_error(embedded):
    port = embedded.server.port
    taken = HttpServer(create_app(), "127.0.0.1", port)
    with pytest.raises(InvalidInput) as info:
        embedded.loop.run(taken.start())
    assert info.value.field == "http_port" and "GLIMPSE3D_HTTP_PORT" in info.value.message


# ---- pieces with known answers --------------------------------------------------------------------


@pytest.mark.parametrize(("azimuth", "elevation"), [(0.0, 0.0), (90.0, 10.0), (200.0, -30.0), (315.0, 60.0)])
def test_look_at_camera_equals_orbit_camera(azimuth, elevation):
    """A camera at the orbit position looking at the origin with +y up is the project's orbit camera."""
    position = orbit_eye(azimuth, elevation, 2.7)
    camera = camera_from_view(CameraView(position=list(position), width=256, height=256))
    expected = orbit_camera(azimuth, elevation, 2.7)
    np.testing.assert_allclose(camera.world_to_camera, expected.world_to_camera, atol=1e-12)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == pytest.approx(
        (expected.fx, expected.fy, expected.cx, expected.cy))
    back = camera_to_view(camera)
    np.testing.assert_allclose(back.position, position, atol=1e-12)
    np.testing.assert_allclose(back.target, [0, 0, 0], atol=1e-12)
    assert back.fov_y_deg == pytest.approx(40.0) and (back.width, back.height) == (256, 256)


def test_front_camera_by_hand():
    """position (0, 0, 2.7) looking at the origin: OpenCV axes x = +x, y = -y, z = -z of the world."""
    camera = camera_from_view(CameraView(position=[0, 0, 2.7], width=256, height=256))
    np.testing.assert_allclose(camera.world_to_camera, [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]],
                               atol=1e-12)
    np.testing.assert_allclose(camera.world_to_camera, orbit_camera(0, 0, 2.7).world_to_camera, atol=1e-12)
    (u_up, v_up), (u_right, v_right) = camera.project(np.array([[0, 0.5, 0], [0.5, 0, 0]]))[0]
    assert u_up == pytest.approx(128) and v_up < 128  # world +y is up in the image
    assert u_right > 128 and v_right == pytest.approx(128)  # world +x is to the right


def test_up_vector_rolls_the_camera_and_target_is_kept():
    camera = camera_from_view(CameraView(position=[0, 0, 2.7], up=[1, 0, 0], width=64, height=64))
    (u, v), = camera.project(np.array([[0.5, 0, 0]]))[0]
    assert u == pytest.approx(32) and v < 32  # world +x is now up in the image
    off_centre = camera_from_view(CameraView(position=[1, 1, 3], target=[0.5, 0.2, 0.1], width=64, height=64))
    (u, v), = off_centre.project(np.array([[0.5, 0.2, 0.1]]))[0]
    assert (u, v) == pytest.approx((32, 32))  # the target is at the image centre
    np.testing.assert_allclose(off_centre.position, [1, 1, 3], atol=1e-12)


@pytest.mark.parametrize(("error", "status", "code"), [
    (InvalidInput("bad x", field="x"), 400, "INVALID_ARGUMENT"), (NotFound("no job"), 404, "NOT_FOUND"),
    (AlreadyExists("twice"), 409, "ALREADY_EXISTS"), (FailedPrecondition("state"), 409, "FAILED_PRECONDITION"),
    (Unavailable("down"), 503, "UNAVAILABLE"), (NotReady("loading"), 503, "UNAVAILABLE"),
    (Overloaded("full"), 429, "RESOURCE_EXHAUSTED"), (Cancelled("stop"), 499, "CANCELLED"),
    (DeadlineExceeded("slow"), 504, "DEADLINE_EXCEEDED"), (IntegrityError("sha"), 500, "DATA_LOSS")])
def test_domain_errors_map_like_grpc(error, status, code):
    resp = error_response(error)
    body = json.loads(resp.body)["error"]
    assert resp.status_code == status and body["code"] == code and body["reason"] == error.reason
    assert body["message"] == error.message and body["field"] == error.field


def test_unexpected_errors_are_500_without_details(caplog):
    resp = error_response(RuntimeError("secret path /etc/x"))
    body = json.loads(resp.body)["error"]
    assert resp.status_code == 500 and body["code"] == "INTERNAL" and "secret" not in body["message"]
    assert body["message"].startswith("internal error (ref ") and "secret path" in caplog.text


def test_event_stream_heartbeats_order_and_cleanup():
    """The event response driven as ASGI: retry first, heartbeats, `event: end`; the source is closed
    when the client leaves and when the registry is closed (shutdown)."""
    closed: list[str] = []

    async def source() -> Any:
        try:
            await asyncio.sleep(0.25)
            yield "b"
            await asyncio.sleep(0.25)
            yield "c"
        finally:
            closed.append("source")

    async def encode(item: str) -> ServerSentEvent:
        return job_event("job", item)

    async def collect(limit: int | None = None, close_after: float | None = None) -> list[str]:
        registry = StreamRegistry()
        response = event_response("a", source(), encode, heartbeat_s=0.1, registry=registry)
        chunks: list[str] = []
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"].decode())
                if limit is not None and len(chunks) == limit:
                    gone.set()

        if close_after is not None:
            asyncio.get_running_loop().call_later(close_after, registry.close_all)
        await asyncio.wait_for(response({"type": "http", "method": "GET", "headers": []}, receive, send), 10)
        await asyncio.sleep(0.05)
        assert len(registry) == 0
        return chunks

    chunks = asyncio.run(collect())
    assert chunks[:2] == ["retry: 2000\n\n", "event: job\ndata: a\n\n"] and chunks[-1] == "event: end\ndata: {}\n\n"
    items = [c for c in chunks if c != HEARTBEAT]
    assert items[2:-1] == ["event: job\ndata: b\n\n", "event: job\ndata: c\n\n"]
    assert chunks.count(HEARTBEAT) >= 2 and closed == ["source"]
    closed.clear()
    early = asyncio.run(collect(limit=3))  # the client leaves: the source is closed too
    assert early[2] == HEARTBEAT and closed == ["source"]
    closed.clear()
    shutdown = asyncio.run(collect(close_after=0.15))  # shutdown ends the stream before the source does
    assert shutdown[-1] == "event: end\ndata: {}\n\n" and "event: job\ndata: c\n\n" not in shutdown
    assert closed == ["source"]


@pytest.fixture
def web_dir(tmp_path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>workspace</title>")
    (tmp_path / "assets" / "app.js").write_text("console.log('glimpse3d')")
    (tmp_path.parent / "secret.txt").write_text("not served")
    return tmp_path


def test_web_workspace_is_served_as_a_single_page_app(web_dir):
    client = TestClient(create_app(web_dir=web_dir))
    index = client.get("/")
    assert index.status_code == 200 and "workspace" in index.text and index.headers["cache-control"] == "no-cache"
    script = client.get("/assets/app.js")
    assert script.status_code == 200 and script.text == "console.log('glimpse3d')"
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    for route in ("/jobs/abc", "/jobs/abc/versions/2", "/settings"):
        assert client.get(route).text == index.text  # client-side routes survive a reload
    expect_error(client.get("/assets/missing.js"), 404, "NOT_FOUND", None)
    expect_error(client.get("/..%2fsecret.txt"), 404, "NOT_FOUND", None)
    expect_error(client.get("/api/v1/unknown"), 404, "NOT_FOUND", None, "no such endpoint")
    assert client.get("/api/v1/healthz").json() == {"status": "ok"}


def test_without_a_build_the_root_says_how_to_build_it(tmp_path):
    client = TestClient(create_app(web_dir=tmp_path / "dist"))
    page = client.get("/")
    assert page.status_code == 200 and "make web" in page.text and page.headers["content-type"].startswith("text/html")
    assert "make web" in client.get("/jobs/abc").text
    expect_error(client.get("/app.js"), 404, "NOT_FOUND", None)
    expect_error(client.get("/api/v1/jobs"), 503, "UNAVAILABLE", None)  # a spec-only app has no gateway


def test_committed_openapi_spec_is_up_to_date(tmp_path):
    assert SPEC.read_text() == openapi_text(), "run: python -m glimpse3d.gateway.http --write-openapi"
    spec = json.loads(SPEC.read_text())
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}/events", "/api/v1/jobs/{job_id}/enhance",
            "/api/v1/jobs/{job_id}/versions/{number}/download"} <= spec["paths"].keys()
    assert "422" not in json.dumps(spec["paths"])  # errors are 400 in this API's own shape
    fresh, stale = tmp_path / "fresh.json", tmp_path / "stale.json"
    stale.write_text("{}")
    assert spec_cli(["--check", str(SPEC)]) == 0 and spec_cli(["--check", str(stale)]) == 1
    assert spec_cli(["--write-openapi", str(fresh)]) == 0 and fresh.read_text() == SPEC.read_text()


def test_matte_preview_and_a_job_with_corrections_over_http(http):
    """POST /matte answers the matte (a PNG data URL and its check); the user's points change it; a job
    takes the points (matte_points, JSON) or a drawn mask (file field ``mask``); bad ones name the field."""
    import base64
    import json

    plain = http.post(f"{API}/matte", files=photo_files(), data={"resolution": str(RES)})
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["mask"].startswith("data:image/png;base64,") and (body["width"], body["height"]) == (RES, RES)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"].split(",", 1)[1]))))
    assert mask.shape == (RES, RES) and 0.05 < body["coverage"] < 0.9 and body["warning"] == ""
    removed = http.post(f"{API}/matte", files=photo_files(),
                        data={"resolution": str(RES), "matte_points": json.dumps([[0.5, 0.5, False]])}).json()
    assert removed["coverage"] < body["coverage"]
    expect_error(http.post(f"{API}/matte", files=photo_files(), data={"matte_points": "[[2, 0.5, true]]"}),
                 400, "INVALID_ARGUMENT", "matte_points", "must be a fraction in [0, 1]")
    expect_error(http.post(f"{API}/matte", files=photo_files(), data={"matte_points": "[[0.5, 0.5]]"}),
                 400, "INVALID_ARGUMENT", "matte_points", "[[x, y, keep], ...]")

    job = create(http, matte_points=json.dumps([[0.5, 0.5, True]]))
    assert job.status_code == 201, job.text
    assert job.json()["options"]["matte_points"] == [[0.5, 0.5, True]]
    w, h = Image.open(io.BytesIO(SAMPLE_BYTES)).size
    drawn = np.zeros((h, w), np.uint8)
    drawn[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG")
    with_mask = http.post(f"{API}/jobs", files={**photo_files(), "mask": ("mask.png", buf.getvalue(), "image/png")},
                          data={"resolution": str(RES)})
    assert with_mask.status_code == 201, with_mask.text
    done = watch(http, with_mask.json()["id"])[-1]
    assert done["state"] == "SUCCEEDED" and done["versions"][0]["metrics"]["matte_coverage"] == pytest.approx(
        0.25, abs=0.03)
    expect_error(http.post(f"{API}/jobs", files={**photo_files(), "mask": ("m.txt", b"hello", "text/plain")}),
                 415, "INVALID_ARGUMENT", "mask", "not a PNG or JPEG")
    assert watch(http, job.json()["id"])[-1]["state"] == "SUCCEEDED"
    empty = http.post(f"{API}/jobs", files={**photo_files(), "mask": ("", b"", "application/octet-stream")},
                      data={"resolution": str(RES)})
    assert empty.status_code == 201, empty.text  # an empty file field (a form left blank) is no mask
