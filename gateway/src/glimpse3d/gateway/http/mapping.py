"""Job records to JSON shapes, and the web's look-at cameras to and from the project's :class:`Camera`.

A web camera is ``position``, ``target`` and ``up`` in the world frame (right-handed, +y up); a
:class:`Camera` uses OpenCV axes (x right, y down, z forward): z_cam points from position to target,
x_cam = z_cam x up, y_cam = z_cam x x_cam. A Camera does not keep its target, so the JSON gives the
point on its viewing axis nearest the world origin, where the object is centred.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from urllib.parse import quote

import numpy as np
from google.rpc import code_pb2

from glimpse3d.core.cameras import Camera, intrinsics_from_fov, look_at
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import format_names, get_format
from glimpse3d.gateway.auth import LINK_PARAM
from glimpse3d.gateway.http.schemas import (
    CameraOut,
    CameraView,
    Downloads,
    ErrorDetail,
    JobOptionsOut,
    JobOut,
    ProgressOut,
    RoundReportOut,
    VersionOut,
)
from glimpse3d.gateway.jobs import DEFAULT_TENANT, Job, JobError, Version, restored_from

API_PREFIX = "/api/v1"
_MIN_NORM = 1e-9
_MIN_SINE = 1e-6  # up closer than ~0.00006 degrees to the viewing direction is "parallel"


# ---- cameras --------------------------------------------------------------------------------------


def camera_from_view(view: CameraView, field: str = "camera") -> Camera:
    """The project's Camera for a look-at view; InvalidInput names ``camera.<key>`` when the view is
    degenerate (target on the camera, ``up`` along the viewing direction)."""
    eye = np.asarray(view.position, np.float64)
    target = np.asarray(view.target, np.float64)
    up = np.asarray(view.up, np.float64)
    forward = target - eye
    if not np.isfinite(forward).all() or np.linalg.norm(forward) < _MIN_NORM:
        raise InvalidInput(f"{field}.target must differ from {field}.position", field=f"{field}.target")
    if np.linalg.norm(up) < _MIN_NORM:
        raise InvalidInput(f"{field}.up must not be the zero vector", field=f"{field}.up")
    sine = np.linalg.norm(np.cross(forward / np.linalg.norm(forward), up / np.linalg.norm(up)))
    if sine < _MIN_SINE:
        raise InvalidInput(f"{field}.up must not be parallel to the viewing direction (target - position)",
                           field=f"{field}.up")
    try:
        fx, fy, cx, cy = intrinsics_from_fov(view.fov_y_deg, view.width, view.height)
        return Camera(fx, fy, cx, cy, view.width, view.height, look_at(eye, target, up))
    except InvalidInput as err:
        name = (err.field or "").removeprefix("camera.") or "position"
        raise InvalidInput(f"{field}: {err.message}", field=f"{field}.{name}") from None


def camera_to_view(camera: Camera) -> CameraOut:
    """A Camera as the web's look-at view (see the module docstring for the target)."""
    rotation = camera.rotation
    position = camera.position
    forward, up = rotation[2], -rotation[1]
    distance = float(-position @ forward)
    target = position + (distance if distance > _MIN_NORM else 1.0) * forward
    fov_y = math.degrees(2.0 * math.atan(camera.height / (2.0 * camera.fy)))
    return CameraOut(position=_vec(position), target=_vec(target), up=_vec(up), fov_y_deg=fov_y,
                     width=camera.width, height=camera.height,
                     world_to_camera=[float(v) for v in camera.world_to_camera.reshape(-1)])


def _vec(v: np.ndarray) -> list[float]:
    return [float(x) for x in v]


# ---- errors ---------------------------------------------------------------------------------------


def code_name(code: int) -> str:
    """google.rpc.Code number -> its name (``UNKNOWN`` for numbers outside the enum)."""
    try:
        return code_pb2.Code.Name(code)
    except ValueError:
        return "UNKNOWN"


def job_error_to_json(error: JobError) -> ErrorDetail:
    return ErrorDetail(code=code_name(error.code), message=error.message, field=error.field, reason=error.reason)


# ---- jobs and versions ----------------------------------------------------------------------------


def tenant_query(tenant: str, sig: str | None = None) -> str:
    """``tenant=...`` for links a browser follows without headers (empty for the default tenant), and
    ``sig=...`` when the link is signed (a gateway that authenticates: see ``TicketSigner.mint_link``)."""
    parts = ([] if tenant == DEFAULT_TENANT else [f"tenant={quote(tenant)}"]) + (
        [] if sig is None else [f"{LINK_PARAM}={quote(sig)}"])
    return "&".join(parts)


def job_url(job_id: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def download_url(job_id: str, number: int | str, fmt: str, tenant: str = DEFAULT_TENANT, sig: str | None = None,
                 ) -> str:
    query = "&".join(q for q in (f"format={fmt}", tenant_query(tenant, sig)) if q)
    return f"{job_url(job_id)}/versions/{number}/download?{query}"


def download_filename(job_id: str, number: int, fmt: str) -> str:
    return f"{job_id}-v{number}{get_format(fmt).extension}"


def _report_metrics(version: Version) -> dict[str, float]:
    """The round report's numbers (not its flags or notes; an absent optional number is left out)."""
    report = version.report
    if report is None:
        return {}
    values = ((f.name, getattr(report, f.name)) for f in dataclasses.fields(report))
    return {name: float(v) for name, v in values if isinstance(v, int | float) and not isinstance(v, bool)}


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def version_to_json(version: Version, tenant: str, num_gaussians: int | None = None, sig: str | None = None,
                    ) -> VersionOut:
    """``num_gaussians``: the count when known otherwise (the splat's header); the version's own
    ``num_gaussians`` metric wins. ``sig``: signs the download links."""
    metrics = {**_report_metrics(version), **version.metrics}
    if "num_gaussians" in metrics and math.isfinite(metrics["num_gaussians"]):
        num_gaussians = int(metrics["num_gaussians"])
    report = version.report
    restored = restored_from(version)
    return VersionOut(
        number=version.number,
        parent=restored if restored is not None else version.number - 1 if version.number > 1 else None,
        kind="initial" if version.number == 1 else "enhance" if restored is None else "restore",
        camera=None if version.camera is None else camera_to_view(version.camera),
        metrics={name: _finite_or_none(value) for name, value in sorted(metrics.items())},
        num_gaussians=num_gaussians,
        report=None if report is None else RoundReportOut(**dataclasses.asdict(report)),
        create_time=version.create_time,
        downloads=Downloads(**{fmt: download_url(version.job_id, version.number, fmt, tenant, sig)
                               for fmt in format_names()}),
    )


def job_to_json(job: Job, counts: Mapping[str, int] | None = None, sig: str | None = None) -> JobOut:
    """``counts``: Gaussian counts by splat sha256, for versions whose metrics lack one; ``sig``: signs
    the photo and download links."""
    counts = counts or {}
    photo_query = tenant_query(job.tenant, sig)
    options = job.options
    return JobOut(
        id=job.id,
        name=job.name,
        display_name=job.display_name,
        state=job.state.value,
        done=job.done,
        progress=ProgressOut(stage=job.progress.stage, fraction=job.progress.fraction, message=job.progress.message),
        error=None if job.error is None else job_error_to_json(job.error),
        versions=[version_to_json(v, job.tenant, counts.get(v.splat.sha256), sig) for v in job.versions],
        pending_rounds=len(job.pending_rounds),
        create_time=job.create_time,
        update_time=job.update_time,
        options=JobOptionsOut(novel_views=options.num_views, enhance_rounds=options.enhance_rounds,
                              prompt=options.prompt, seed=options.seed, resolution=options.resolution,
                              matte_points=[(p.x, p.y, p.keep) for p in options.matte_points]),
        request_id=job.request_id,
        tenant=job.tenant,
        revision=job.revision,
        photo_url=f"{job_url(job.id)}/photo" + (f"?{photo_query}" if photo_query else ""),
    )
