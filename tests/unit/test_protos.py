"""The contracts: generated code is fresh, every RPC exists, conversions validate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glimpse3d.core import convert
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.protogen import check
from glimpse3d.v1 import (
    backprojection_pb2,
    common_pb2,
    depth_pb2,
    diffusion_pb2,
    glimpse3d_pb2,
    multiview_pb2,
    reconstruction_pb2,
)


def test_generated_code_matches_protos(repo_root):
    assert check(repo_root / "protos", repo_root / "shared" / "src") == []


def test_stale_generation_is_detected(repo_root, tmp_path):
    """A generated file edited by hand (or left over from an older .proto) fails the check."""
    import shutil

    out = tmp_path / "src"
    shutil.copytree(repo_root / "shared" / "src" / "glimpse3d" / "v1", out / "glimpse3d" / "v1")
    target = out / "glimpse3d" / "v1" / "depth_pb2.pyi"
    target.write_text(target.read_text() + "\n# edited\n")
    (out / "glimpse3d" / "v1" / "old_pb2.py").write_text("")
    problems = check(repo_root / "protos", out)
    assert any("depth_pb2.pyi differs" in p for p in problems)
    assert any("old_pb2.py" in p for p in problems)


def _methods(module, service: str) -> set[str]:
    return set(module.DESCRIPTOR.services_by_name[service].methods_by_name)


def test_services_and_methods():
    assert _methods(depth_pb2, "Depth") == {"Estimate", "Matte"}
    assert _methods(reconstruction_pb2, "Reconstruction") == {"Reconstruct", "Render", "ExportMesh"}
    assert _methods(multiview_pb2, "Multiview") == {"Generate"}
    assert _methods(diffusion_pb2, "Diffusion") == {"Enhance"}
    assert _methods(backprojection_pb2, "Backprojection") == {"Refine", "Pose"}
    api = glimpse3d_pb2.DESCRIPTOR.services_by_name["Glimpse3D"]
    assert set(api.methods_by_name) == {
        "CreateJob", "GetJob", "ListJobs", "WatchJob", "CancelJob", "Enhance", "Export", "PreviewMatte",
        "DeleteTenantData", "AddPhoto", "RestoreVersion",
    }
    assert api.methods_by_name["WatchJob"].server_streaming
    assert not api.methods_by_name["GetJob"].server_streaming


def test_api_follows_aip_conventions():
    fields = glimpse3d_pb2.CreateJobRequest.DESCRIPTOR.fields_by_name
    assert "request_id" in fields  # AIP-155
    assert "request_id" in glimpse3d_pb2.EnhanceRequest.DESCRIPTOR.fields_by_name
    list_fields = glimpse3d_pb2.ListJobsRequest.DESCRIPTOR.fields_by_name
    assert {"page_size", "page_token"} <= set(list_fields)  # AIP-158
    assert "next_page_token" in glimpse3d_pb2.ListJobsResponse.DESCRIPTOR.fields_by_name
    job = glimpse3d_pb2.Job.DESCRIPTOR.fields_by_name
    assert job["error"].message_type.full_name == "google.rpc.Status"  # AIP-151/193
    assert {"name", "done", "state"} <= set(job)
    ref = common_pb2.ArtifactRef.DESCRIPTOR.fields_by_name
    assert set(ref) == {"uri", "sha256", "size", "media_type"}


def test_camera_round_trip():
    cam = orbit_camera(30.0, 15.0, 2.5, width=320, height=240)
    back = convert.camera_from_proto(convert.camera_to_proto(cam))
    assert np.allclose(back.world_to_camera, cam.world_to_camera)
    assert (back.fx, back.cx, back.width, back.height) == (cam.fx, cam.cx, 320, 240)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.world_to_camera.__setitem__(3, math.nan), "views[0].camera.world_to_camera"),
        (lambda m: m.world_to_camera.pop(), "views[0].camera.world_to_camera"),
        (lambda m: setattr(m.intrinsics, "fx", math.inf), "views[0].camera.intrinsics.fx"),
        (lambda m: setattr(m.intrinsics, "fx", -1.0), "views[0].camera.intrinsics.fx"),
        (lambda m: setattr(m.intrinsics, "width", 0), "views[0].camera.intrinsics.width"),
        (lambda m: m.world_to_camera.__setitem__(0, 2.0), "views[0].camera.world_to_camera"),
    ],
)
def test_bad_camera_names_the_field(mutate, field):
    msg = convert.camera_to_proto(orbit_camera(0.0, 0.0, 2.0))
    mutate(msg)
    with pytest.raises(InvalidInput) as exc:
        convert.view_from_proto(common_pb2.ViewSpec(camera=msg), "views[0]")
    assert exc.value.field == field
    assert field.split(".")[0] in str(exc.value)


def test_orbit_view_defaults_and_validation():
    cam = convert.view_from_proto(common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=450.0)))
    assert cam.width == convert.DEFAULT_VIEW_SIZE
    assert np.linalg.norm(cam.position - [convert.DEFAULT_ORBIT_RADIUS, 0, 0]) < 1e-6  # 450 = 90 deg: +x
    with pytest.raises(InvalidInput) as exc:
        convert.view_from_proto(common_pb2.ViewSpec(orbit=common_pb2.OrbitView(elevation_deg=95.0)), "v")
    assert exc.value.field == "v.orbit.elevation_deg"
    with pytest.raises(InvalidInput) as exc:
        convert.view_from_proto(common_pb2.ViewSpec(orbit=common_pb2.OrbitView(radius=math.nan)), "v")
    assert exc.value.field == "v.orbit.radius"
    with pytest.raises(InvalidInput) as exc:
        convert.view_from_proto(common_pb2.ViewSpec(orbit=common_pb2.OrbitView(width=100_000)), "v")
    assert exc.value.field == "v.orbit.width"
    with pytest.raises(InvalidInput, match="either camera or orbit"):
        convert.view_from_proto(common_pb2.ViewSpec(), "v")


def test_round_report_has_the_fields_of_refine_report():
    """The gateway's RoundReport, from which its proto conversion and the HTTP schema are built, has
    RefineReport's fields by name, and None only for its optional ones: a new field cannot be forgotten."""
    from dataclasses import fields

    from glimpse3d.gateway.http.schemas import RoundReportOut
    from glimpse3d.gateway.jobs import RoundReport

    proto = backprojection_pb2.RefineReport.DESCRIPTOR.fields
    assert [f.name for f in fields(RoundReport)] == [f.name for f in proto]
    assert list(RoundReportOut.model_fields) == [f.name for f in proto]
    assert {f.name for f in fields(RoundReport) if f.default is None} == {f.name for f in proto if f.has_presence}
