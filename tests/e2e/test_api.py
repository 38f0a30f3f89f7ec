"""The public API (glimpse3d.v1.Glimpse3D) over a real gRPC channel against the real stack: the five
services and the gateway as separate processes (the session ``stack`` fixture), no in-process fake.

Every RPC is exercised, bad input included. Every error must be INVALID_ARGUMENT / NOT_FOUND (or
FAILED_PRECONDITION) with a message naming the problem, carry the AIP-193 rich status (ErrorInfo in
the "glimpse3d.v1" domain, a BadRequest field violation naming the request field), and leave the
gateway serving. The tests use a tenant of their own, so the lists see only this file's jobs, and a
64 px working resolution with 64 px round views so that the whole file takes a few minutes on two
CPU cores.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image
from plyfile import PlyData
from pygltflib import GLTF2

from glimpse3d.core.formats import read_ply, read_splat
from glimpse3d.gateway.stack import REQUIRED_SERVICES as SERVICES
from glimpse3d.v1 import common_pb2, glimpse3d_pb2_grpc
from glimpse3d.v1 import glimpse3d_pb2 as pb

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.png"
SAMPLE_BYTES = SAMPLE.read_bytes()
RES = 64  # working resolution of every job, and the size of every round's view
RPC_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 300.0
TENANT_HEADER = "x-glimpse3d-tenant"
DOMAIN = "glimpse3d.v1"
State = pb.Job.State
Code = grpc.StatusCode
FORMATS = {"ply": pb.ExportRequest.PLY, "splat": pb.ExportRequest.SPLAT, "glb": pb.ExportRequest.GLB}
MEDIA_TYPES = {"ply": "application/x-glimpse3d-splat+ply", "splat": "application/x-glimpse3d-splat",
               "glb": "model/gltf-binary"}
REASONS = {Code.INVALID_ARGUMENT: "INVALID_INPUT", Code.NOT_FOUND: "NOT_FOUND",
           Code.FAILED_PRECONDITION: "FAILED_PRECONDITION", Code.ALREADY_EXISTS: "REQUEST_ID_REUSED"}
THREEDGS_PREFIX = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
THREEDGS_SUFFIX = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
# A camera on the -x axis, 2.7 from the centre, looking at it (+y up): x_cam = +z, y_cam = -y,
# z_cam = +x, so the object centre lands at depth 2.7. Built by hand, not with the library.
LEFT_W2C = [0.0, 0.0, 1.0, 0.0,  0.0, -1.0, 0.0, 0.0,  1.0, 0.0, 0.0, 2.7,  0.0, 0.0, 0.0, 1.0]
FOCAL = (RES / 2) / math.tan(math.radians(20.0))  # a 40 degree vertical field of view


def camera_msg(w2c: list[float] = LEFT_W2C, fx: float = FOCAL) -> common_pb2.Camera:
    intrinsics = common_pb2.Intrinsics(fx=fx, fy=FOCAL, cx=RES / 2, cy=RES / 2, width=RES, height=RES)
    return common_pb2.Camera(intrinsics=intrinsics, world_to_camera=w2c)


def orbit(azimuth: float, elevation: float) -> common_pb2.ViewSpec:
    return common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=azimuth, elevation_deg=elevation,
                                                          width=RES, height=RES))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png() -> bytes:
    """A well-formed PNG (correct CRCs) whose IHDR claims 20000x20000 RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(
        b"IEND", b"")


def encoded(fmt: str) -> bytes:
    """The sample photo re-encoded as ``fmt`` (e.g. JPEG, GIF)."""
    buf = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


HTTP_BASE: list[str] = []  # the stack's HTTP facade, set by the channel fixture


def download(url: str) -> bytes:
    """The bytes behind an Export download URL: a link to the HTTP facade's download route (the file
    store, which has no URL of its own; relative to the facade) or a pre-signed http(s) URL (S3)."""
    if url.startswith("/api/v1/"):
        assert HTTP_BASE, "the stack serves no HTTP facade"
        url = HTTP_BASE[0] + url
    parsed = urllib.parse.urlparse(url)
    assert parsed.scheme in ("http", "https"), url
    with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as resp:
        return resp.read()


class Client:
    """The Glimpse3D stub of one tenant: ``client.GetJob(request)`` sends the tenant metadata and a
    deadline; a server-streaming call (WatchJob) returns the iterator."""

    def __init__(self, channel: grpc.Channel, tenant: str) -> None:
        self.stub = glimpse3d_pb2_grpc.Glimpse3DStub(channel)
        self.tenant = tenant

    def __getattr__(self, method: str):
        rpc = getattr(self.stub, method)
        metadata = ((TENANT_HEADER, self.tenant),)
        return lambda request, timeout=RPC_TIMEOUT_S: rpc(request, metadata=metadata, timeout=timeout)

    def get(self, name: str) -> pb.Job:
        return self.GetJob(pb.GetJobRequest(name=name))

    def create(self, image: bytes = SAMPLE_BYTES, **options: int) -> pb.Job:
        options.setdefault("resolution", RES)
        return self.CreateJob(pb.CreateJobRequest(image_data=image, options=pb.JobOptions(**options)))

    def watch(self, name: str) -> Iterator[pb.JobEvent]:
        """WatchJob's events; the deadline bounds the whole stream."""
        return self.WatchJob(pb.WatchJobRequest(name=name), timeout=JOB_TIMEOUT_S)

    def wait(self, name: str) -> pb.Job:
        """The job once done: the last event of WatchJob, which must end the stream by itself."""
        events = list(self.watch(name))
        assert events[-1].job.done, events[-1]
        return events[-1].job

    def export(self, name: str, fmt: str) -> tuple[pb.ExportResponse, bytes]:
        resp = self.Export(pb.ExportRequest(name=name, format=FORMATS[fmt]))
        return resp, download(resp.download_url)

    def list_all(self, page_size: int = 0) -> list[list[str]]:
        """Every page of the tenant's job names, following next_page_token to the end."""
        pages, token = [], ""
        while len(pages) < 100:
            resp = self.ListJobs(pb.ListJobsRequest(page_size=page_size, page_token=token))
            pages.append([job.name for job in resp.jobs])
            token = resp.next_page_token
            if not token:
                return pages
        raise AssertionError("ListJobs never returned an empty next_page_token")


def unpack(status, kind: type[Message]) -> Message | None:
    """The first detail of type ``kind`` in a google.rpc.Status, or None."""
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            msg = kind()
            detail.Unpack(msg)
            return msg
    return None


def expect_error(client: Client, method: str, request: Message, code: grpc.StatusCode, *needles: str,
                 field: str) -> str:
    """``method(request)`` fails with ``code``, a message containing every needle and the rich status
    (ErrorInfo, and a BadRequest violation naming ``field``); the gateway serves the next call."""
    with pytest.raises(grpc.RpcError) as info:
        result = getattr(client, method)(request)
        if isinstance(result, Iterator):  # server streaming: the status comes with the first read
            list(result)
    err = info.value
    assert err.code() == code, err.details()
    message = err.details()
    for needle in needles:
        assert needle in message, message
    status = rpc_status.from_call(err)  # also checks the status matches the call's code and message
    assert status is not None, "no google.rpc.Status in the trailers"
    error_info = unpack(status, error_details_pb2.ErrorInfo)
    assert error_info is not None and error_info.domain == DOMAIN and error_info.reason == REASONS[code]
    bad_request = unpack(status, error_details_pb2.BadRequest)
    assert bad_request is not None and [v.field for v in bad_request.field_violations] == [field]
    client.stub.ListJobs(pb.ListJobsRequest(page_size=1), timeout=RPC_TIMEOUT_S)  # still serving
    return message


def name_requests(name: str) -> dict[str, Message]:
    """A request naming job ``name`` for every RPC that takes one."""
    return {
        "GetJob": pb.GetJobRequest(name=name),
        "WatchJob": pb.WatchJobRequest(name=name),
        "CancelJob": pb.CancelJobRequest(name=name),
        "Enhance": pb.EnhanceRequest(name=name, auto=True),
        "Export": pb.ExportRequest(name=name, format=pb.ExportRequest.PLY),
    }


NAMED_METHODS = list(name_requests(""))


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(stack):
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    HTTP_BASE[:] = [stack.http_url] if stack.http_url else []
    with grpc.insecure_channel(stack.gateway_addr, options=options) as ch:
        grpc.channel_ready_future(ch).result(timeout=RPC_TIMEOUT_S)
        yield ch


@pytest.fixture(scope="module")
def client(channel) -> Client:
    return Client(channel, f"api-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def other(channel) -> Client:
    return Client(channel, f"other-{uuid.uuid4().hex[:12]}")


@dataclass(frozen=True)
class Run:
    request: pb.CreateJobRequest
    created: pb.Job  # what CreateJob answered
    events: list[pb.JobEvent]  # what WatchJob streamed right after, until it ended

    @property
    def name(self) -> str:
        return self.created.name

    @property
    def v1(self) -> str:
        return f"{self.name}/versions/1"


@pytest.fixture(scope="module")
def first(client) -> Run:
    """The sample photo to a coarse splat, watched from creation to the end of the stream."""
    request = pb.CreateJobRequest(image_data=SAMPLE_BYTES, options=pb.JobOptions(resolution=RES, seed=7),
                                  request_id=str(uuid.uuid4()), display_name="sample")
    created = client.CreateJob(request)
    return Run(request, created, list(client.watch(created.name)))


# ---- health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [*SERVICES, "gateway"])
def test_health_reports_serving(stack, target):
    named = "glimpse3d.v1.Glimpse3D" if target == "gateway" else f"glimpse3d.v1.{target.capitalize()}"
    with grpc.insecure_channel(stack.addr(target)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", named):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT_S)
        assert info.value.code() == Code.NOT_FOUND


# ---- CreateJob, WatchJob, GetJob ------------------------------------------------------------------


def test_create_job_streams_progress_until_succeeded(client, first):
    created = first.created
    assert created.name.startswith("jobs/") and created.state in (State.QUEUED, State.RUNNING)
    assert not created.done and not created.versions
    assert (created.tenant, created.request_id, created.display_name) == (
        client.tenant, first.request.request_id, "sample")
    assert created.options.resolution == RES and created.options.seed == 7
    ref = created.input_image
    assert (ref.sha256, ref.size, ref.media_type) == (hashlib.sha256(SAMPLE_BYTES).hexdigest(), len(SAMPLE_BYTES),
                                                      "image/png")

    events = first.events
    assert events[0].kind == "snapshot"
    assert all(e.job.name == created.name for e in events)
    assert [e.job.done for e in events] == [False] * (len(events) - 1) + [True]  # ends once done
    assert {"matting_depth", "reconstruct"} <= {e.job.progress.stage for e in events}
    assert {"progress", "version"} <= {e.kind for e in events}
    fractions = [e.job.progress.fraction for e in events]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == pytest.approx(1.0)
    times = [e.event_time.ToNanoseconds() for e in events]
    assert times == sorted(times)

    job = events[-1].job
    assert job.state == State.SUCCEEDED and not job.HasField("error"), job.error
    [v1] = job.versions
    assert (v1.name, v1.number) == (first.v1, 1)
    assert v1.metrics["input_view_psnr_db"] > 10.0 and v1.metrics["num_gaussians"] > 100
    assert v1.splat.media_type == MEDIA_TYPES["ply"] and v1.splat.size > 0
    assert not v1.HasField("camera") and not v1.HasField("report")

    assert client.get(created.name) == job
    [snapshot] = client.watch(created.name)  # a done job: one snapshot, then the stream ends
    assert snapshot.kind == "snapshot" and snapshot.job == job


def test_create_job_is_idempotent(client, first):
    before = client.list_all()
    # The same request again (a client retry after a lost answer): the first job, nothing new.
    again = client.CreateJob(first.request)
    assert (again.name, again.create_time, again.display_name) == (first.name, first.created.create_time, "sample")
    assert again.options.resolution == RES
    # The same request_id with another body is a client bug: refused, naming request_id.
    other = pb.CreateJobRequest(image_data=encoded("JPEG"), options=pb.JobOptions(resolution=96),
                                request_id=first.request.request_id, display_name="retry")
    expect_error(client, "CreateJob", other, Code.ALREADY_EXISTS, "request_id", field="request_id")
    assert client.list_all() == before


def test_create_job_from_jpeg_and_from_artifact(client, first):
    jpeg = client.create(encoded("JPEG"))
    assert jpeg.input_image.media_type == "image/jpeg"
    by_ref = client.CreateJob(pb.CreateJobRequest(image=first.created.input_image, options=pb.JobOptions(
        resolution=RES)))
    assert by_ref.input_image == first.created.input_image
    for job in (jpeg, by_ref):
        done = client.wait(job.name)
        assert done.state == State.SUCCEEDED and len(done.versions) == 1, done.error


def test_create_job_from_missing_artifact(client, first):
    missing = common_pb2.ArtifactRef()
    missing.CopyFrom(first.created.input_image)
    missing.sha256 = "0" * 64
    missing.uri = f"{missing.uri.rsplit('/sha256/', 1)[0]}/sha256/00/{missing.sha256}"
    expect_error(client, "CreateJob", pb.CreateJobRequest(image=missing), Code.NOT_FOUND, missing.uri,
                 field="image.uri")


# ---- ListJobs -------------------------------------------------------------------------------------


def test_list_jobs_pages(client, first):
    older = client.create()  # at least three jobs: first, this one and the next
    newer = client.create()
    [everything] = client.list_all()
    pages = client.list_all(page_size=1)
    assert all(len(page) == 1 for page in pages)
    assert [page[0] for page in pages] == everything  # same jobs, same order, none twice
    assert len(everything) >= 3 and len(set(everything)) == len(everything) and first.name in everything
    assert everything[:2] == [newer.name, older.name]  # newest first
    assert client.list_all(page_size=2000) == [everything]  # clamped to 1000, one page
    for job in (older, newer):
        assert client.wait(job.name).state == State.SUCCEEDED


def test_list_jobs_rejects_bad_page_tokens(client, other, first):
    token = client.ListJobs(pb.ListJobsRequest(page_size=1)).next_page_token
    assert token
    for forged in ("Zm9yZ2Vk", "not base64 at all!", token[:-2] + ("AA" if token[-2:] != "AA" else "BB")):
        expect_error(client, "ListJobs", pb.ListJobsRequest(page_size=1, page_token=forged), Code.INVALID_ARGUMENT,
                     "page_token", field="page_token")
    # a real token is bound to its tenant
    expect_error(other, "ListJobs", pb.ListJobsRequest(page_size=1, page_token=token), Code.INVALID_ARGUMENT,
                 "page_token", field="page_token")
    expect_error(client, "ListJobs", pb.ListJobsRequest(page_size=-1), Code.INVALID_ARGUMENT, "page_size",
                 field="page_size")


def test_tenants_are_isolated(channel, client, other, first):
    for method, request in name_requests(first.name).items():
        expect_error(other, method, request, Code.NOT_FOUND, first.name, field="name")
    assert list(other.ListJobs(pb.ListJobsRequest()).jobs) == []
    assert other.list_all(page_size=1) == [[]]
    job = client.get(first.name)  # the other tenant's CancelJob and Enhance did nothing
    assert job.state == State.SUCCEEDED and not job.HasField("error")
    nameless = Client(channel, "not a tenant!")
    expect_error(nameless, "GetJob", pb.GetJobRequest(name=first.name), Code.INVALID_ARGUMENT, TENANT_HEADER,
                 field=TENANT_HEADER)


# ---- Enhance --------------------------------------------------------------------------------------


def camera_position(camera: common_pb2.Camera) -> np.ndarray:
    w2c = np.array(camera.world_to_camera).reshape(4, 4)
    return -w2c[:3, :3].T @ w2c[:3, 3]


def check_round(version: pb.Version, number: int) -> None:
    assert version.number == number and version.HasField("camera") and version.HasField("report")
    report = version.report
    assert 0.0 <= report.accepted_fraction <= 1.0
    before, after = report.photometric_error_before, report.photometric_error_after
    assert math.isfinite(before) and math.isfinite(after) and 0.0 <= after <= before + 1e-6, report
    assert report.steps > 0 and 0.0 <= report.mean_confidence <= 1.0
    assert version.metrics["accepted_fraction"] == pytest.approx(report.accepted_fraction)
    assert (version.camera.intrinsics.width, version.camera.intrinsics.height) == (RES, RES)


def test_enhance_orbit_camera_and_auto_add_versions(client, first):
    name = first.name
    v1_export, v1_bytes = client.export(first.v1, "ply")
    targets = [{"view": orbit(90.0, 10.0)}, {"view": common_pb2.ViewSpec(camera=camera_msg())}, {"auto": True}]
    requests = [pb.EnhanceRequest(name=name, seed=i, request_id=f"round-{i}", **target)
                for i, target in enumerate(targets)]
    for request in requests:  # the first starts a round, the others queue behind it
        job = client.Enhance(request)
        assert job.state == State.RUNNING and not job.done and len(job.versions) == 1
    assert client.Enhance(requests[0]).state == State.RUNNING  # a retry starts no other round

    job = client.wait(name)
    assert job.state == State.SUCCEEDED and not job.HasField("error"), job.error
    assert [v.name for v in job.versions] == [f"{name}/versions/{n}" for n in (1, 2, 3, 4)]
    for number, version in enumerate(job.versions[1:], start=2):
        check_round(version, number)
    orbit_pos = 2.7 * np.array([math.cos(math.radians(10.0)), math.sin(math.radians(10.0)), 0.0])
    np.testing.assert_allclose(camera_position(job.versions[1].camera), orbit_pos, atol=1e-6)
    np.testing.assert_allclose(job.versions[2].camera.world_to_camera, LEFT_W2C, atol=1e-9)
    assert job.versions[2].camera.intrinsics.fx == pytest.approx(FOCAL)
    assert np.linalg.norm(camera_position(job.versions[3].camera)) == pytest.approx(2.7)

    # older versions stay readable and unchanged
    again, again_bytes = client.export(first.v1, "ply")
    assert again.artifact == v1_export.artifact and again_bytes == v1_bytes
    assert job.versions[0] == first.events[-1].job.versions[0]
    latest, latest_bytes = client.export(name, "ply")
    assert latest.version == f"{name}/versions/4" and latest.artifact == job.versions[3].splat
    assert read_ply(latest_bytes).num_gaussians >= read_ply(v1_bytes).num_gaussians  # rounds may grow Gaussians
    assert latest.artifact.sha256 != v1_export.artifact.sha256


BAD_VIEWS = {
    "nan-camera": ({"view": common_pb2.ViewSpec(camera=camera_msg([math.nan, *LEFT_W2C[1:]]))},
                   ["world_to_camera", "non-finite"], "view.camera.world_to_camera"),
    "15-values": ({"view": common_pb2.ViewSpec(camera=camera_msg(LEFT_W2C[:15]))}, ["world_to_camera", "16 values"],
                  "view.camera.world_to_camera"),
    "not-rigid": ({"view": common_pb2.ViewSpec(camera=camera_msg([2 * v for v in LEFT_W2C[:12]] + LEFT_W2C[12:]))},
                  ["world_to_camera", "rigid"], "view.camera.world_to_camera"),
    "negative-focal": ({"view": common_pb2.ViewSpec(camera=camera_msg(fx=-1.0))}, ["focal"],
                       "view.camera.intrinsics.fx"),
    "elevation-95": ({"view": orbit(0.0, 95.0)}, ["elevation_deg", "95"], "view.orbit.elevation_deg"),
    "orbit-too-wide": ({"view": common_pb2.ViewSpec(orbit=common_pb2.OrbitView(width=100_000))}, ["width", "8192"],
                       "view.orbit.width"),
    "infinite-azimuth": ({"view": orbit(math.inf, 0.0)}, ["azimuth_deg", "finite"], "view.orbit.azimuth_deg"),
    "empty-view": ({"view": common_pb2.ViewSpec()}, ["camera or orbit"], "view"),
    "no-target": ({}, ["auto"], "view"),
    "auto-false": ({"auto": False}, ["auto"], "view"),
    "strength-2": ({"auto": True, "strength": 2.0}, ["strength"], "strength"),
    "long-prompt": ({"auto": True, "prompt": "x" * 1001}, ["prompt", "1000"], "prompt"),
}


@pytest.mark.parametrize("case", list(BAD_VIEWS))
def test_enhance_rejects_bad_views(client, first, case):
    fields, needles, field = BAD_VIEWS[case]
    request = pb.EnhanceRequest(name=first.name, **fields)
    expect_error(client, "Enhance", request, Code.INVALID_ARGUMENT, *needles, field=field)
    assert client.get(first.name).done  # no round started


# ---- Export ---------------------------------------------------------------------------------------


def check_ply(data: bytes, n: int) -> None:
    assert read_ply(data).num_gaussians == n
    ply = PlyData.read(io.BytesIO(data))
    assert ply.text is False and ply.byte_order == "<" and ply["vertex"].count == n
    names = [p.name for p in ply["vertex"].properties]
    assert names[:9] == THREEDGS_PREFIX and names[-8:] == THREEDGS_SUFFIX
    assert all(name.startswith("f_rest_") for name in names[9:-8])


def check_splat(data: bytes, n: int) -> None:
    assert len(data) == 32 * n
    assert read_splat(data).num_gaussians == n


def check_glb(data: bytes, n: int) -> None:
    gltf = GLTF2.load_from_bytes(data)
    assert "KHR_gaussian_splatting" in gltf.extensionsUsed
    [primitive] = gltf.meshes[0].primitives
    assert "KHR_gaussian_splatting" in primitive.extensions and primitive.mode == 0  # POINTS
    assert gltf.accessors[primitive.attributes.POSITION].count == n


@pytest.mark.parametrize("fmt", ["ply", "splat", "glb"])
def test_export_formats(client, first, fmt):
    resp, data = client.export(first.v1, fmt)
    assert resp.version == first.v1
    artifact = resp.artifact
    assert (artifact.size, artifact.sha256, artifact.media_type) == (len(data), hashlib.sha256(data).hexdigest(),
                                                                     MEDIA_TYPES[fmt])
    assert resp.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    n = int(first.events[-1].job.versions[0].metrics["num_gaussians"])
    {"ply": check_ply, "splat": check_splat, "glb": check_glb}[fmt](data, n)


@pytest.mark.parametrize("fmt", [pb.ExportRequest.FORMAT_UNSPECIFIED, 42])
def test_export_rejects_unknown_formats(client, first, fmt):
    expect_error(client, "Export", pb.ExportRequest(name=first.name, format=fmt), Code.INVALID_ARGUMENT, "format",
                 field="format")


def test_export_unknown_version(client, first):
    missing = f"{first.name}/versions/99"
    expect_error(client, "Export", pb.ExportRequest(name=missing, format=pb.ExportRequest.PLY), Code.NOT_FOUND,
                 missing, field="name")


# ---- CancelJob ------------------------------------------------------------------------------------


def test_cancel_running_job(client):
    """Two novel views make the initial run long (multiview, then one MVCRM fusion per view), so a
    cancel sent once the job reports the refine stage lands while a fusion is computing."""
    job = client.create(num_views=2)
    events, cancelled = [], None
    for event in client.watch(job.name):
        events.append(event)
        if cancelled is None and event.job.progress.stage == "refine":
            for method in ("Enhance", "Export"):  # nothing to enhance or export before version 1
                expect_error(client, method, name_requests(job.name)[method], Code.FAILED_PRECONDITION,
                             "no version yet", field="name")
            time.sleep(1.0)  # past the depth call that starts the stage, into the fusion (seconds long)
            cancelled = client.CancelJob(pb.CancelJobRequest(name=job.name))
    assert cancelled is not None, [e.job.progress for e in events]
    assert cancelled.state == State.CANCELLED and cancelled.done and not cancelled.versions
    assert cancelled.error.code == code_pb2.CANCELLED and "cancelled" in cancelled.error.message
    assert unpack(cancelled.error, error_details_pb2.ErrorInfo).reason == "CANCELLED"
    assert events[-1].job.state == State.CANCELLED  # the watch saw it and ended
    assert client.get(job.name) == cancelled
    assert client.CancelJob(pb.CancelJobRequest(name=job.name)) == cancelled  # a no-op now
    expect_error(client, "Enhance", pb.EnhanceRequest(name=job.name, auto=True), Code.FAILED_PRECONDITION,
                 "CANCELLED", field="name")
    expect_error(client, "Export", pb.ExportRequest(name=job.name, format=pb.ExportRequest.PLY),
                 Code.FAILED_PRECONDITION, "no version", field="name")


def test_cancel_finished_job_is_a_no_op(client, first):
    before = client.get(first.name)
    assert before.state == State.SUCCEEDED
    assert client.CancelJob(pb.CancelJobRequest(name=first.name)) == before
    assert client.get(first.name) == before


# ---- bad input ------------------------------------------------------------------------------------

BAD_CREATES = {
    "not-an-image": ({"image_data": b"hello, I am not a picture"}, ["image_data", "not a PNG or JPEG"],
                     "image_data"),
    "empty-upload": ({"image_data": b""}, ["image_data", "empty"], "image_data"),
    "no-image": ({}, ["image_data", "PNG or JPEG"], "image_data"),
    "truncated-png": ({"image_data": SAMPLE_BYTES[: len(SAMPLE_BYTES) // 2]}, ["image_data", "truncated"],
                      "image_data"),
    "truncated-png-with-iend": ({"image_data": SAMPLE_BYTES[: len(SAMPLE_BYTES) // 2] + png_chunk(b"IEND", b"")},
                                ["image_data", "truncated"], "image_data"),
    "truncated-jpeg": ({"image_data": encoded("JPEG")[:1000]}, ["image_data", "truncated"], "image_data"),
    "20000-px-png": ({"image_data": huge_png()}, ["image_data", "20000x20000", "8192"], "image_data"),
    "gif": ({"image_data": encoded("GIF")}, ["GIF", "PNG and JPEG"], "image_data"),
    "num-views-99": ({"options": pb.JobOptions(num_views=99)}, ["options.num_views", "0..16", "99"],
                     "options.num_views"),
    "enhance-rounds-11": ({"options": pb.JobOptions(enhance_rounds=11)}, ["options.enhance_rounds"],
                          "options.enhance_rounds"),
    "resolution-32": ({"options": pb.JobOptions(resolution=32)}, ["options.resolution", "64..1024"],
                      "options.resolution"),
    "long-prompt": ({"options": pb.JobOptions(prompt="x" * 1001)}, ["options.prompt", "1000"], "options.prompt"),
    "long-request-id": ({"request_id": "r" * 129}, ["request_id", "128"], "request_id"),
    "long-display-name": ({"display_name": "d" * 201}, ["display_name", "200"], "display_name"),
}


@pytest.mark.parametrize("case", list(BAD_CREATES))
def test_create_job_rejects_bad_input(client, case):
    fields, needles, field = BAD_CREATES[case]
    request = pb.CreateJobRequest(**{"image_data": SAMPLE_BYTES, "options": pb.JobOptions(resolution=RES), **fields})
    if case == "no-image":
        request.ClearField("image_data")
    before = client.list_all()
    expect_error(client, "CreateJob", request, Code.INVALID_ARGUMENT, *needles, field=field)
    assert client.list_all() == before  # no job was created


def test_create_job_takes_uploads_up_to_32_mib(client):
    """Past gRPC's 4 MiB default message size, up to the documented 32 MiB, then a clear refusal."""
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG", compress_level=0)
    assert len(buf.getvalue()) > 5 << 20
    job = client.create(buf.getvalue())
    assert client.wait(job.name).state == State.SUCCEEDED
    too_big = pb.CreateJobRequest(image_data=SAMPLE_BYTES + bytes(32 << 20))
    expect_error(client, "CreateJob", too_big, Code.INVALID_ARGUMENT, "image_data", str(32 << 20),
                 field="image_data")


@pytest.mark.parametrize("method", NAMED_METHODS)
def test_unknown_job_is_not_found(client, method):
    name = "jobs/doesnotexist"
    expect_error(client, method, name_requests(name)[method], Code.NOT_FOUND, name, field="name")


@pytest.mark.parametrize("method", NAMED_METHODS)
@pytest.mark.parametrize("name", ["nope", "", "jobs/", "jobs/a/b", "jobs/../x"])
def test_malformed_name_is_invalid(client, method, name):
    message = expect_error(client, method, name_requests(name)[method], Code.INVALID_ARGUMENT, "jobs/{job_id}",
                           repr(name), field="name")
    assert message.startswith("name")


# ---- the matte: preview, the user's corrections, a drawn mask ----------------------------------------


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_preview_matte_and_the_users_corrections(client):
    plain = client.PreviewMatte(pb.PreviewMatteRequest(image_data=SAMPLE_BYTES, resolution=RES))
    mask = np.asarray(Image.open(io.BytesIO(plain.mask_png)))
    assert mask.shape == (RES, RES) and mask.dtype == np.uint8
    assert plain.coverage == pytest.approx(float((mask >= 128).mean()), abs=0.02) and 0.05 < plain.coverage < 0.9
    assert plain.fragments >= 1 and 0.0 <= plain.border_fraction <= 1.0
    # A remove click in the middle of the object takes that part out; the preview follows the points.
    removed = client.PreviewMatte(pb.PreviewMatteRequest(image_data=SAMPLE_BYTES, resolution=RES, matte_points=[
        common_pb2.MattePoint(x=0.5, y=0.5, keep=False)]))
    after = np.asarray(Image.open(io.BytesIO(removed.mask_png)))
    assert mask[RES // 2, RES // 2] >= 128 and after[RES // 2, RES // 2] < 128
    assert removed.coverage < plain.coverage
    expect_error(client, "PreviewMatte", pb.PreviewMatteRequest(image_data=SAMPLE_BYTES, matte_points=[
        common_pb2.MattePoint(x=1.5, y=0.5, keep=True)]), Code.INVALID_ARGUMENT, "must be a fraction in [0, 1]",
        field="matte_points")
    expect_error(client, "PreviewMatte", pb.PreviewMatteRequest(), Code.INVALID_ARGUMENT, "image_data is required",
                 field="image_data")
    expect_error(client, "PreviewMatte", pb.PreviewMatteRequest(image_data=SAMPLE_BYTES, matte_points=[
        common_pb2.MattePoint(x=0.5, y=0.5, keep=True)] * 65), Code.INVALID_ARGUMENT, "at most 64",
        field="matte_points")
    expect_error(client, "PreviewMatte", pb.PreviewMatteRequest(image_data=SAMPLE_BYTES, resolution=5),
                 Code.INVALID_ARGUMENT, "resolution", field="resolution")


def test_corrections_that_leave_no_object_fail_the_job_naming_them(client):
    """A plain grey photo and one remove click: the click's colour region is the whole photo, so the
    corrected matte has no object; the job fails with INVALID_ARGUMENT naming matte_points."""
    grey = _png(np.full((48, 64, 3), 128, np.uint8))
    job = client.create(image=grey, matte_points=[common_pb2.MattePoint(x=0.5, y=0.5, keep=False)])
    done = client.wait(job.name)
    assert done.state == State.FAILED and "leave no object" in done.error.message, done.error


def test_a_job_takes_the_users_points_or_drawn_mask(client):
    points = [common_pb2.MattePoint(x=0.5, y=0.5, keep=True), common_pb2.MattePoint(x=0.05, y=0.05, keep=False)]
    job = client.create(matte_points=points)
    assert list(job.options.matte_points) == points
    done = client.wait(job.name)
    assert done.state == State.SUCCEEDED and list(done.options.matte_points) == points
    # A drawn mask (a centred rectangle, a quarter of the photo) becomes the matte the job works with.
    w, h = Image.open(SAMPLE).size
    drawn = np.zeros((h // 2, w // 2), np.uint8)  # any size: resized to the photo
    drawn[h // 8:3 * h // 8, w // 8:3 * w // 8] = 255
    job = client.CreateJob(pb.CreateJobRequest(image_data=SAMPLE_BYTES, mask_data=_png(drawn),
                                               options=pb.JobOptions(resolution=RES)))
    done = client.wait(job.name)
    assert done.state == State.SUCCEEDED, done.error.message
    assert done.versions[0].metrics["matte_coverage"] == pytest.approx(0.25, abs=0.03)
    for bad, needle in ((np.zeros((8, 8), np.uint8), "marks no object"),
                        (np.full((8, 8), 255, np.uint8), "whole photo as object")):
        expect_error(client, "CreateJob", pb.CreateJobRequest(image_data=SAMPLE_BYTES, mask_data=_png(bad)),
                     Code.INVALID_ARGUMENT, needle, field="mask_data")
    expect_error(client, "CreateJob", pb.CreateJobRequest(image_data=SAMPLE_BYTES, mask_data=b"not a png"),
                 Code.INVALID_ARGUMENT, "mask_data", field="mask_data")
