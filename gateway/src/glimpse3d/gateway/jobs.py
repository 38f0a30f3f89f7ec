"""The gateway's job records (jobs, versions, rounds) and their JSON form in the job store.

Frozen dataclasses without protobuf, shared by the gRPC servicer and the HTTP facade
(:mod:`glimpse3d.gateway.convert` turns them into messages). Constructors raise
:class:`~glimpse3d.core.errors.InvalidInput` naming the request field (e.g. ``options.num_views``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from glimpse3d.core.artifacts import ArtifactRef
from glimpse3d.core.artifacts.base import check_tenant_name
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import InvalidInput, NotFound, shorten
from glimpse3d.core.rpc.errors import reason_and_field, to_rpc_status
from glimpse3d.gateway.states import JobState

MAX_NUM_VIEWS = 16
MAX_ENHANCE_ROUNDS = 10
MAX_PROMPT_CHARS = 1000
MAX_REQUEST_ID_CHARS = 128
MAX_DISPLAY_NAME_CHARS = 200
MIN_RESOLUTION, MAX_RESOLUTION, DEFAULT_RESOLUTION = 64, 1024, 256
MAX_SEED = 2**64 - 1

DEFAULT_TENANT = "default"
TENANT_HEADER = "x-glimpse3d-tenant"

JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_JOB_NAME_RE = re.compile(rf"jobs/({JOB_ID_PATTERN})")
_VERSION_NAME_RE = re.compile(rf"jobs/({JOB_ID_PATTERN})/versions/([1-9][0-9]{{0,8}})")


def _check_int(value: int, lo: int, hi: int, field_name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{field_name} must be an integer in {lo}..{hi}, got {shorten(value)}", field=field_name)


def check_text(value: str, limit: int, field_name: str) -> None:
    """``value`` must be a str of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field_name} must be a string", field=field_name)
    if len(value) > limit:
        raise InvalidInput(
            f"{field_name} has {len(value)} characters; the limit is {limit}", field=field_name
        )


def check_seed(value: int, field_name: str) -> None:
    _check_int(value, 0, MAX_SEED, field_name)


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is 1..63 characters of letters, digits, '.', '_' or '-' (starting with a
    letter or digit); InvalidInput naming the metadata key otherwise."""
    return check_tenant_name(tenant, field=TENANT_HEADER)  # the artifact store's rule: one tenant name everywhere


# ---- resource names -------------------------------------------------------------------------------


def job_name(job_id: str) -> str:
    return f"jobs/{job_id}"


def version_name(job_id: str, number: int) -> str:
    return f"jobs/{job_id}/versions/{number}"


def parse_job_name(name: str, field_name: str = "name") -> str:
    """The job id of ``jobs/{id}``; InvalidInput for anything else."""
    match = _JOB_NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise InvalidInput(f"{field_name} must look like 'jobs/{{job_id}}', got {shorten(name)}", field=field_name)
    return match.group(1)


def parse_export_name(name: str, field_name: str = "name") -> tuple[str, int | None]:
    """(job id, version number or None for the latest) of ``jobs/{id}[/versions/{n}]``."""
    if isinstance(name, str) and (match := _VERSION_NAME_RE.fullmatch(name)):
        return match.group(1), int(match.group(2))
    if isinstance(name, str) and (match := _JOB_NAME_RE.fullmatch(name)):
        return match.group(1), None
    raise InvalidInput(
        f"{field_name} must look like 'jobs/{{job_id}}' or 'jobs/{{job_id}}/versions/{{n}}', got {shorten(name)}",
        field=field_name,
    )


# ---- options, progress, errors --------------------------------------------------------------------


MAX_MATTE_POINTS = 64


@dataclass(frozen=True)
class MattePoint:
    """A user's correction of the matte: (x, y) as fractions of the photo's width and height from the
    top-left corner; ``keep`` True marks object, False background."""

    x: float
    y: float
    keep: bool = True

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise InvalidInput(f"matte point {name} must be a fraction in [0, 1], got {shorten(v)}",
                                   field=f"options.matte_points.{name}")
            object.__setattr__(self, name, float(v))
        if not isinstance(self.keep, bool):
            raise InvalidInput(f"matte point keep must be true or false, got {shorten(self.keep)}",
                               field="options.matte_points.keep")

    def to_json(self) -> list[Any]:
        return [self.x, self.y, self.keep]


@dataclass(frozen=True)
class JobOptions:
    """Validated ``JobOptions``; the ranges are those documented in glimpse3d.proto."""

    num_views: int = 0
    enhance_rounds: int = 0
    prompt: str = ""
    seed: int = 0
    resolution: int = 0  # 0 = DEFAULT_RESOLUTION
    matte_points: tuple[MattePoint, ...] = ()

    def __post_init__(self) -> None:
        points = tuple(self.matte_points)
        if len(points) > MAX_MATTE_POINTS:
            raise InvalidInput(f"at most {MAX_MATTE_POINTS} matte points, got {len(points)}",
                               field="options.matte_points")
        if not all(isinstance(p, MattePoint) for p in points):
            raise InvalidInput("matte_points must be MattePoint values", field="options.matte_points")
        object.__setattr__(self, "matte_points", points)
        _check_int(self.num_views, 0, MAX_NUM_VIEWS, "options.num_views")
        _check_int(self.enhance_rounds, 0, MAX_ENHANCE_ROUNDS, "options.enhance_rounds")
        check_text(self.prompt, MAX_PROMPT_CHARS, "options.prompt")
        check_seed(self.seed, "options.seed")
        if self.resolution != 0:
            _check_int(self.resolution, MIN_RESOLUTION, MAX_RESOLUTION, "options.resolution")

    @property
    def effective_resolution(self) -> int:
        return self.resolution or DEFAULT_RESOLUTION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_views": self.num_views, "enhance_rounds": self.enhance_rounds,
                               "prompt": self.prompt, "seed": self.seed, "resolution": self.resolution}
        if self.matte_points:
            out["matte_points"] = [p.to_json() for p in self.matte_points]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobOptions:
        values = dict(data)
        values["matte_points"] = tuple(MattePoint(*p) for p in values.get("matte_points", ()))
        return cls(**values)


@dataclass(frozen=True)
class Progress:
    stage: str = ""
    fraction: float = 0.0  # [0, 1]
    message: str = ""


@dataclass(frozen=True)
class JobError:
    """Why a job (or its last round) failed: a google.rpc.Status in plain form."""

    code: int  # google.rpc.Code number
    message: str
    reason: str  # google.rpc.ErrorInfo.reason, e.g. "UNAVAILABLE"
    field: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        """The status the shared error mapping gives ``exc`` (unexpected errors are logged there
        with a reference id and become INTERNAL with a generic message)."""
        status = to_rpc_status(exc, method="gateway.job")
        reason, field_path = reason_and_field(status)
        return cls(status.code, status.message, reason, field_path)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "reason": self.reason, "field": self.field}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobError:
        return cls(**data)


# ---- rounds and versions --------------------------------------------------------------------------


def camera_to_json(camera: Camera) -> dict[str, Any]:
    return {"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy,
            "width": camera.width, "height": camera.height,
            "world_to_camera": [float(v) for v in camera.world_to_camera.reshape(-1)]}


def camera_from_json(data: Mapping[str, Any]) -> Camera:
    w2c = np.asarray(data["world_to_camera"], dtype=np.float64).reshape(4, 4)
    return Camera(data["fx"], data["fy"], data["cx"], data["cy"], data["width"], data["height"], w2c)


def artifact_to_json(ref: ArtifactRef) -> dict[str, Any]:
    return {"uri": ref.uri, "sha256": ref.sha256, "size": ref.size, "media_type": ref.media_type}


def artifact_from_json(data: Mapping[str, Any]) -> ArtifactRef:
    return ArtifactRef(**data)


MAX_EXTRA_PHOTOS = 8  # extra photos one CreateJob may carry


@dataclass(frozen=True)
class ExtraPhoto:
    """An extra photo of the job's object as a request gives it: image bytes and an optional hint (degrees)."""

    image_data: bytes
    azimuth_deg: float | None = None
    elevation_deg: float | None = None


@dataclass(frozen=True)
class RoundSpec:
    """One requested enhancement round. ``camera`` None means "auto": the pipeline picks the view.

    With ``photo`` (an extra photo of the object, stored) the round fuses that photo instead of an
    enhanced view, posed from the hint (``hint_azimuth_deg``/``hint_elevation_deg``, None: searched);
    ``photo_field`` is how errors name it (``extra_photos[i]`` or ``photo``). With ``restore_version``
    the round computes nothing: the new version is a copy of that earlier one (:func:`lineage`)."""

    camera: Camera | None = None
    prompt: str = ""
    strength: float = 0.0  # [0, 1]; 0 = the pipeline's default
    seed: int = 0
    request_id: str = ""
    photo: ArtifactRef | None = None
    photo_field: str = "photo"
    hint_azimuth_deg: float | None = None
    hint_elevation_deg: float | None = None
    restore_version: int | None = None

    def __post_init__(self) -> None:
        check_text(self.prompt, MAX_PROMPT_CHARS, "prompt")
        if self.restore_version is not None and not (isinstance(self.restore_version, int)
                                                     and not isinstance(self.restore_version, bool)
                                                     and self.restore_version >= 1):
            raise InvalidInput(f"the version to restore must be a number from 1, got {shorten(self.restore_version)}",
                               field="name")
        if not (isinstance(self.strength, int | float) and math.isfinite(self.strength)
                and 0.0 <= self.strength <= 1.0):
            raise InvalidInput(f"strength must be in [0, 1], got {shorten(self.strength)}", field="strength")
        check_seed(self.seed, "seed")
        check_text(self.request_id, MAX_REQUEST_ID_CHARS, "request_id")
        for name in ("hint_azimuth_deg", "hint_elevation_deg"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v)):
                raise InvalidInput(f"{self.photo_field}.{name.removeprefix('hint_')} must be finite, got {shorten(v)}",
                                   field=f"{self.photo_field}.{name.removeprefix('hint_')}")
        if self.hint_elevation_deg is not None and not -80.0 <= self.hint_elevation_deg <= 80.0:
            raise InvalidInput(f"{self.photo_field}.elevation_deg must be in [-80, 80], got "
                               f"{self.hint_elevation_deg:g}", field=f"{self.photo_field}.elevation_deg")
        if self.hint_elevation_deg is not None and self.hint_azimuth_deg is None:
            raise InvalidInput(f"{self.photo_field}: an elevation hint needs an azimuth hint too",
                               field=f"{self.photo_field}.azimuth_deg")

    def to_json(self) -> dict[str, Any]:
        out = {"camera": None if self.camera is None else camera_to_json(self.camera),
               "prompt": self.prompt, "strength": self.strength, "seed": self.seed,
               "request_id": self.request_id,
               "photo": None if self.photo is None else artifact_to_json(self.photo), "photo_field": self.photo_field,
               "hint_azimuth_deg": self.hint_azimuth_deg, "hint_elevation_deg": self.hint_elevation_deg}
        if self.restore_version is not None:  # absent otherwise: the stored request hashes of other rounds stay valid
            out["restore_version"] = self.restore_version
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundSpec:
        camera = data.get("camera")
        photo = data.get("photo")  # absent in rounds stored before extra photos
        return cls(camera=None if camera is None else camera_from_json(camera), prompt=data["prompt"],
                   strength=data["strength"], seed=data["seed"], request_id=data["request_id"],
                   photo=None if photo is None else artifact_from_json(photo),
                   photo_field=data.get("photo_field", "photo"), hint_azimuth_deg=data.get("hint_azimuth_deg"),
                   hint_elevation_deg=data.get("hint_elevation_deg"), restore_version=data.get("restore_version"))


@dataclass(frozen=True)
class RoundReport:
    """The MVCRM report of a round: the fields of glimpse3d.v1.RefineReport, by the same names (None for
    an absent optional field). The proto conversion and the HTTP schema are built from these fields."""

    accepted_fraction: float = 0.0
    photometric_error_before: float = 0.0
    photometric_error_after: float = 0.0
    clip_score: float | None = None
    clip_note: str = ""
    rejected: bool = False
    steps: int = 0
    mean_confidence: float = 0.0
    relift_replaced: int = 0
    relift_added: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundReport:
        return cls(**data)


@dataclass(frozen=True)
class VersionResult:
    """What a pipeline run produces: the next version of the splat (see :class:`Pipeline`)."""

    splat: ArtifactRef  # 3DGS .ply
    confidence: ArtifactRef | None = None  # float32 [N] .npy
    camera: Camera | None = None  # the round's camera; None for version 1
    report: RoundReport | None = None  # None for version 1
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Version:
    job_id: str
    number: int
    splat: ArtifactRef
    confidence: ArtifactRef | None
    camera: Camera | None
    report: RoundReport | None
    metrics: Mapping[str, float]
    create_time: datetime

    @property
    def name(self) -> str:
        return version_name(self.job_id, self.number)


RESTORED_FROM = "restored_from"  # the metric of a version made by RestoreVersion: the number it copies
# What a restored version copies of the version it restores: the splat's own figures against the photo
# (the same splat, so the same figures), not those of the round that made it.
RESTORED_METRICS = frozenset({
    "num_gaussians", "photo_psnr_db", "photo_consistency_db", "photo_consistency_coverage", "input_view_psnr_db",
    "input_view_ssim", "matte_coverage", "matte_border_fraction", "matte_fragments", "matte_implausible"})


def restored(job: Job, number: int) -> VersionResult:
    """The version a RestoreVersion round adds: a copy of version ``number`` (the same stored splat and
    confidence, its figures against the photo), marked ``restored_from``; later rounds go on from it
    (:func:`lineage`). NOT_FOUND when the job has no such version."""
    if not 1 <= number <= len(job.versions):
        raise NotFound(f"version {version_name(job.id, number)} not found", field="name")
    source = job.versions[number - 1]
    kept = {k: v for k, v in source.metrics.items() if k in RESTORED_METRICS}
    return VersionResult(splat=source.splat, confidence=source.confidence, camera=None, report=None,
                         metrics={**kept, RESTORED_FROM: float(number)})


def restored_from(version: Version) -> int | None:
    """The number of the earlier version ``version`` is a copy of (metric ``restored_from``), or None:
    not a restored version, or a mark that names no earlier version."""
    value = version.metrics.get(RESTORED_FROM)
    if value is None or not math.isfinite(value) or value != int(value) or not 1 <= value < version.number:
        return None
    return int(value)


def lineage(versions: Sequence[Version]) -> list[Version]:
    """The versions the latest one descends from, oldest first, itself included: a version restored from
    version n (metric ``restored_from``) descends from n, not from the version before it. What later rounds
    take from earlier versions (the cameras of extra photos, the views already enhanced) comes from these."""
    out: list[Version] = []
    i = len(versions) - 1
    while i >= 0:
        v = versions[i]
        out.append(v)
        source = restored_from(v)
        i = source - 1 if source is not None else i - 1
    return out[::-1]


@dataclass(frozen=True)
class Job:
    """A snapshot of one job. ``revision`` grows by one with every stored change."""

    id: str
    tenant: str
    request_id: str
    display_name: str
    state: JobState
    progress: Progress
    options: JobOptions
    input_image: ArtifactRef
    error: JobError | None
    pending_rounds: tuple[RoundSpec, ...]
    versions: tuple[Version, ...]
    create_time: datetime
    update_time: datetime
    revision: int

    @property
    def name(self) -> str:
        return job_name(self.id)

    @property
    def done(self) -> bool:
        return self.state.done

    @property
    def latest_version(self) -> Version | None:
        return self.versions[-1] if self.versions else None
