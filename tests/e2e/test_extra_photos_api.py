"""Extra photos through the gateway's gRPC API against the real stack: CreateJob with an extra photo
and AddPhoto each add a version whose camera was posed by the backprojection service and whose
round was fused as a real view; bad extra photos are refused naming ``extra_photos[i]``."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import cast

import grpc
import httpx2 as httpx
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc

SAMPLE_BYTES = (Path(__file__).resolve().parents[2] / "assets" / "sample.png").read_bytes()
RES = 64
TENANT_HEADER = "x-glimpse3d-tenant"
RPC_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def call(stack):
    tenant = f"extra-{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        stub = glimpse3d_pb2_grpc.Glimpse3DStub(channel)

        def invoke(method: str, request, timeout: float = RPC_TIMEOUT_S):
            return getattr(stub, method)(request, metadata=((TENANT_HEADER, tenant),), timeout=timeout)

        yield invoke


def _wait(call, name: str) -> pb.Job:
    events = list(call("WatchJob", pb.WatchJobRequest(name=name), timeout=JOB_TIMEOUT_S))
    assert events[-1].job.done, events[-1]
    return events[-1].job


def _bad_field(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(cast(grpc.Call, err))  # a failed call's error is also its Call
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            info = error_details_pb2.BadRequest()
            detail.Unpack(info)
            return info.field_violations[0].field
    raise AssertionError(f"no BadRequest detail in {status}")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_an_extra_photo_adds_a_posed_version(call):
    request = pb.CreateJobRequest(image_data=SAMPLE_BYTES, options=pb.JobOptions(resolution=RES, seed=3),
                                  extra_photos=[pb.ExtraPhoto(image_data=SAMPLE_BYTES, azimuth_deg=20.0)])
    job = _wait(call, call("CreateJob", request).name)
    assert job.state == pb.Job.SUCCEEDED and not job.HasField("error"), job.error
    assert len(job.versions) == 2
    v2 = job.versions[1]
    assert v2.metrics["extra_photo"] == 1.0 and v2.metrics["pose_silhouette_iou"] > 0.9
    # the same photo again: posed where the first one was taken (azimuth 0), whatever the hint said
    assert min(v2.metrics["pose_azimuth_deg"], 360.0 - v2.metrics["pose_azimuth_deg"]) < 5.0
    assert v2.HasField("camera") and v2.report.accepted_fraction > 0.5 and not v2.report.rejected
    # it shows the side the first photo observed: nothing is re-lifted
    assert v2.report.relift_replaced == v2.report.relift_added == 0 and v2.metrics["relift_replaced"] == 0.0

    # the photo mirrored, as a photo from behind: it shows the guessed back, which it replaces
    back = _png(np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(SAMPLE_BYTES)).convert("RGB"))[:, ::-1]))
    added = call("AddPhoto", pb.AddPhotoRequest(name=job.name, photo=pb.ExtraPhoto(image_data=back, azimuth_deg=180.0)))
    assert added.name == job.name
    job = _wait(call, job.name)
    assert len(job.versions) == 3 and job.versions[2].metrics["extra_photo"] == 1.0, job.error
    v3 = job.versions[2]
    assert v3.report.relift_replaced > 0 and v3.report.relift_added > 0, v3.report
    assert v3.metrics["pose_hint_kept"] == 1.0 and v3.metrics["pose_azimuth_deg"] == pytest.approx(180.0, abs=1e-3)
    assert v2.metrics["pose_hint_kept"] == 0.0  # the front: the input photo showed it, the splat decides
    assert v3.metrics["relift_added"] == v3.report.relift_added

    blank = _png(np.full((RES, RES, 3), 255, np.uint8))
    call("AddPhoto", pb.AddPhotoRequest(name=job.name, photo=pb.ExtraPhoto(image_data=blank)))
    job = _wait(call, job.name)
    assert len(job.versions) == 3 and job.HasField("error")  # refused: no version added
    assert "photo" in job.error.message, job.error

    # back to version 2 (before the back photo): the back photo's camera is no longer one of the job's
    # photos there, so the same photo again re-lifts the same guessed back
    call("RestoreVersion", pb.RestoreVersionRequest(name=f"{job.name}/versions/2", request_id=uuid.uuid4().hex))
    job = _wait(call, job.name)
    v4 = job.versions[3]
    assert v4.metrics["restored_from"] == 2.0 and v4.splat.sha256 == v2.splat.sha256 and not job.HasField("error")
    call("AddPhoto", pb.AddPhotoRequest(name=job.name, photo=pb.ExtraPhoto(image_data=back, azimuth_deg=180.0)))
    job = _wait(call, job.name)
    v5 = job.versions[4]
    assert v5.metrics["pose_hint_kept"] == 1.0 and v5.report.relift_replaced == v3.report.relift_replaced > 0, v5


@pytest.mark.parametrize(("photos", "field"), [
    ([pb.ExtraPhoto(image_data=SAMPLE_BYTES)] * 9, "extra_photos"),
    ([pb.ExtraPhoto(image_data=SAMPLE_BYTES), pb.ExtraPhoto(image_data=b"not an image")], "extra_photos[1].image_data"),
    ([pb.ExtraPhoto(image_data=SAMPLE_BYTES, azimuth_deg=10.0, elevation_deg=89.0)], "extra_photos[0].elevation_deg"),
])
def test_bad_extra_photos_are_refused_naming_the_field(call, photos, field):
    request = pb.CreateJobRequest(image_data=SAMPLE_BYTES, options=pb.JobOptions(resolution=RES),
                                  extra_photos=photos)
    with pytest.raises(grpc.RpcError) as info:
        call("CreateJob", request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_field(info.value) == field


def _poll(client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["done"]:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not done in {JOB_TIMEOUT_S} s")


def test_extra_photos_over_http(stack):
    assert stack.http_url is not None
    tenant = f"extra-http-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=stack.http_url, headers={"X-Glimpse3D-Tenant": tenant}, timeout=60.0) as client:
        files = [("photo", ("a.png", SAMPLE_BYTES, "image/png")),
                 ("extra_photos", ("b.png", SAMPLE_BYTES, "image/png"))]
        created = client.post("/api/v1/jobs", files=files, data={"resolution": str(RES), "extra_hints": "[[15]]"})
        assert created.status_code == 201, created.text
        job = _poll(client, created.json()["id"])
        assert len(job["versions"]) == 2 and job["versions"][1]["metrics"]["extra_photo"] == 1.0, job

        added = client.post(f"/api/v1/jobs/{job['id']}/photos", files=[("photo", ("c.png", SAMPLE_BYTES, "image/png"))],
                            data={"azimuth_deg": "10"})
        assert added.status_code == 202, added.text
        job = _poll(client, job["id"])
        assert len(job["versions"]) == 3, job

        restored = client.post(f"/api/v1/jobs/{job['id']}/versions/1/restore", json={"request_id": "undo"})
        assert restored.status_code == 202, restored.text
        job = _poll(client, job["id"])
        last = job["versions"][-1]
        assert (len(job["versions"]), last["kind"], last["parent"], last["camera"]) == (4, "restore", 1, None), last
        assert last["metrics"]["restored_from"] == 1.0
        for number, status, field in (("9", 404, "number"), ("latest", 400, "number"), ("0", 400, "number")):
            bad = client.post(f"/api/v1/jobs/{job['id']}/versions/{number}/restore")
            assert bad.status_code == status and bad.json()["error"]["field"] == field, bad.text
        missing = client.post("/api/v1/jobs/nojob/versions/1/restore")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "job_id", missing.text

        bad = client.post("/api/v1/jobs", files=[*files, ("extra_photos", ("x.png", b"junk", "image/png"))],
                          data={"resolution": str(RES)})
        assert bad.status_code == 415 and bad.json()["error"]["field"] == "extra_photos[1]", bad.text
        hints = client.post("/api/v1/jobs", files=files, data={"resolution": str(RES), "extra_hints": "[[1, 2, 3]]"})
        assert hints.status_code == 400 and hints.json()["error"]["field"] == "extra_hints[0]", hints.text
