"""The JSON shapes of the HTTP/JSON facade (pydantic models, hence the OpenAPI spec).

Responses mirror the records of :mod:`glimpse3d.gateway.jobs` in the form a browser wants: enums as
strings, RFC 3339 times, look-at cameras, download URLs. Requests refuse unknown fields (a misspelt key
is a 400 naming it).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from glimpse3d.core.cameras import MAX_IMAGE_SIDE
from glimpse3d.core.convert import DEFAULT_FOV_Y_DEG, DEFAULT_VIEW_SIZE
from glimpse3d.core.formats import formats
from glimpse3d.gateway.jobs import MAX_PROMPT_CHARS, MAX_REQUEST_ID_CHARS, MAX_SEED, RoundReport

MAX_COORDINATE = 1e6  # world units; objects are normalised to a radius of about 1
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Vec3 = Annotated[list[Coordinate], Field(min_length=3, max_length=3, description="x, y, z in the world frame")]
JobStateName = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
# The format registry as it is when this module is imported: formats registered later are not in the API.
if TYPE_CHECKING:  # a Literal built at run time; type checkers see the str it narrows
    ExportFormatName = str
else:
    ExportFormatName = Literal[tuple(f.name for f in formats())]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---- cameras --------------------------------------------------------------------------------------


class CameraView(_Request):
    """A look-at camera in the world frame (right-handed, +y up, the frame of the exported splat):
    the camera sits at ``position``, looks at ``target``, with ``up`` pointing up in the image."""

    position: Vec3
    target: Vec3 = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    up: Vec3 = Field(default_factory=lambda: [0.0, 1.0, 0.0])
    fov_y_deg: float = Field(DEFAULT_FOV_Y_DEG, ge=1.0, le=170.0, description="vertical field of view, degrees")
    width: int = Field(DEFAULT_VIEW_SIZE, ge=1, le=MAX_IMAGE_SIDE, description="image width, pixels")
    height: int = Field(DEFAULT_VIEW_SIZE, ge=1, le=MAX_IMAGE_SIDE, description="image height, pixels")


class CameraOut(BaseModel):
    """A version's round camera as a look-at view, plus the exact OpenCV-convention matrix."""

    position: Vec3
    target: Vec3 = Field(description="the point on the viewing axis nearest the world origin "
                                     "(one unit ahead when the origin is behind the camera)")
    up: Vec3
    fov_y_deg: float
    width: int
    height: int
    world_to_camera: list[float] = Field(
        min_length=16, max_length=16,
        description="row-major 4x4, camera axes x right, y down, z forward (the project's Camera)")


# ---- jobs and versions ----------------------------------------------------------------------------


class ProgressOut(BaseModel):
    stage: str = Field(description="matting_depth, reconstruct, multiview, enhance, refine, export or empty")
    fraction: float = Field(ge=0.0, le=1.0, description="of the whole run the worker is doing")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="canonical code name, e.g. INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE")
    message: str
    field: str | None = Field(None, description="the request field at fault, when there is one")
    reason: str = Field("", description="the stable reason of the project's error, e.g. INVALID_INPUT")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# The fields of the one RoundReport definition, all required here (an absent optional one is null).
_REPORT_FIELDS: dict[str, Any] = {f.name: (get_type_hints(RoundReport)[f.name], ...)
                                  for f in dataclasses.fields(RoundReport)}


class RoundReportOut(create_model("_RoundReportFields", **_REPORT_FIELDS)):
    pass


_DOWNLOAD_FIELDS: dict[str, Any] = {
    f.name: (str, Field(description=f"{f.media_type}: {f.description}")) for f in formats()
}


class Downloads(create_model("_DownloadFields", **_DOWNLOAD_FIELDS)):
    """The version's download URL in every export format."""


class VersionOut(BaseModel):
    number: int
    parent: int | None = Field(description="the version this one refined (or, restored, copies); null for version 1")
    kind: Literal["initial", "enhance", "restore"] = Field(
        description="initial: version 1; enhance: a round (an enhanced view or an extra photo); restore: a copy of "
                    "an earlier version (its parent), from which later rounds go on")
    camera: CameraOut | None = Field(description="the round's view; null for version 1 and a restored version")
    metrics: dict[str, float | None] = Field(
        description="every per-version metric of the gateway and the round report's numbers")
    num_gaussians: int | None
    report: RoundReportOut | None = Field(description="the refinement report of an enhancement round")
    create_time: datetime
    downloads: Downloads


class JobOptionsOut(BaseModel):
    novel_views: int
    enhance_rounds: int
    prompt: str
    seed: int
    resolution: int
    matte_points: list[tuple[float, float, bool]] = Field(
        default_factory=list, description="the user's matte corrections: [x, y, keep], x and y fractions of the photo")


class JobOut(BaseModel):
    id: str
    name: str = Field(description="the resource name, jobs/{id}")
    display_name: str
    state: JobStateName
    done: bool = Field(description="no work is running or queued (SUCCEEDED, FAILED or CANCELLED)")
    progress: ProgressOut
    error: ErrorDetail | None = Field(description="why the job, or its last enhancement round, failed")
    versions: list[VersionOut]
    pending_rounds: int = Field(description="enhancement rounds requested and not finished, the running one included")
    create_time: datetime
    update_time: datetime
    options: JobOptionsOut
    request_id: str
    tenant: str
    revision: int = Field(description="grows by one with every stored change")
    photo_url: str


class JobList(BaseModel):
    jobs: list[JobOut]
    next_page_token: str


class VersionList(BaseModel):
    versions: list[VersionOut]


class Health(BaseModel):
    """``ok`` (200); ``draining`` (503) once the gateway is shutting down and takes no new work."""

    status: Literal["ok", "draining"]


class TenantDeletionOut(BaseModel):
    """What ``DELETE /tenant`` deleted of the caller's tenant."""

    tenant: str
    jobs_cancelled: int = Field(description="queued or running jobs cancelled before the deletion")
    jobs_deleted: int
    versions_deleted: int
    artifacts_deleted: int = Field(description="blobs removed from the artifact store")
    api_keys_deleted: int = Field(description="API keys revoked (only with delete_api_keys=true)")


class EventTicket(BaseModel):
    """A short-lived ticket to watch one job with ``EventSource`` (which cannot send headers)."""

    ticket: str = Field(description="pass as ?ticket= to the job's events URL; bound to this job and tenant")
    expires_in_s: int = Field(description="seconds the ticket is accepted for")
    events_url: str = Field(description="the job's events URL with the ticket")


class MattePreviewOut(BaseModel):
    """The matte a job would use for the photo (with the user's corrections)."""

    mask: str = Field(description="data: URL of a greyscale PNG, white = object, at the working resolution")
    width: int
    height: int
    coverage: float = Field(description="share of the photo that is object")
    border_fraction: float = Field(description="share of the photo's border that is object")
    fragments: int = Field(description="object components holding at least 1 % of the object")
    warning: str = Field(description="a sentence when the matte looks implausible, else empty")


# ---- requests -------------------------------------------------------------------------------------


class RestoreRequest(_Request):
    request_id: str = Field("", max_length=MAX_REQUEST_ID_CHARS, description="repeating it restores no second time")


class EnhanceRequest(_Request):
    """Exactly one of ``camera`` and ``auto: true``."""

    camera: CameraView | None = None
    auto: bool = False
    strength: float = Field(0.0, ge=0.0, le=1.0, description="0 = the pipeline's default")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="empty = the job's prompt")
    request_id: str = Field("", max_length=MAX_REQUEST_ID_CHARS, description="repeating it starts no other round")
