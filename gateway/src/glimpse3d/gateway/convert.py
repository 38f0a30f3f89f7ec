"""Conversions between the gateway's records (:mod:`glimpse3d.gateway.jobs`) and glimpse3d.v1 messages.

Artifacts and cameras convert with the shared :mod:`glimpse3d.core.convert`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from glimpse3d.core.convert import artifact_to_proto, camera_to_proto
from glimpse3d.core.formats import format_for_proto
from glimpse3d.core.rpc.errors import DOMAIN
from glimpse3d.gateway.app import ExportResult
from glimpse3d.gateway.events import JobEvent
from glimpse3d.gateway.jobs import Job, JobError, JobOptions, MattePoint, RoundReport, Version
from glimpse3d.v1 import backprojection_pb2, common_pb2, glimpse3d_pb2


def timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


def points_from_proto(points: Iterable[common_pb2.MattePoint]) -> tuple[MattePoint, ...]:
    return tuple(MattePoint(p.x, p.y, p.keep) for p in points)


def points_to_proto(points: Iterable[MattePoint]) -> list[common_pb2.MattePoint]:
    return [common_pb2.MattePoint(x=p.x, y=p.y, keep=p.keep) for p in points]


def options_from_proto(msg: glimpse3d_pb2.JobOptions) -> JobOptions:
    """Validated options (InvalidInput names e.g. ``options.num_views``)."""
    return JobOptions(num_views=msg.num_views, enhance_rounds=msg.enhance_rounds, prompt=msg.prompt,
                      seed=msg.seed, resolution=msg.resolution, matte_points=points_from_proto(msg.matte_points))


def options_to_proto(options: JobOptions) -> glimpse3d_pb2.JobOptions:
    return glimpse3d_pb2.JobOptions(num_views=options.num_views, enhance_rounds=options.enhance_rounds,
                                    prompt=options.prompt, seed=options.seed, resolution=options.resolution,
                                    matte_points=points_to_proto(options.matte_points))


def format_from_proto(value: int) -> str:
    """``ExportRequest.Format`` -> the registry's name ("ply", ...); InvalidInput when unset or unknown."""
    return format_for_proto(value).name


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_to_status(error: JobError) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo (and BadRequest when a field is named), as RPC errors carry."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN))]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message, reason=error.reason)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    return status_pb2.Status(code=error.code, message=error.message, details=details)


REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(RoundReport))
"""The fields of :class:`RoundReport`, named as in ``RefineReport`` (tests/test_protos.py checks)."""


def report_to_proto(report: RoundReport) -> backprojection_pb2.RefineReport:
    msg = backprojection_pb2.RefineReport()
    for name in REPORT_FIELDS:
        value = getattr(report, name)
        if value is not None:  # None: an optional field left absent
            setattr(msg, name, value)
    return msg


def report_from_proto(msg: backprojection_pb2.RefineReport) -> RoundReport:
    """For pipelines: the backprojection service's report as the gateway stores it."""
    fields = msg.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {name: getattr(msg, name) if not fields[name].has_presence or msg.HasField(name)
                              else None for name in REPORT_FIELDS}
    return RoundReport(**values)


def version_to_proto(version: Version) -> glimpse3d_pb2.Version:
    msg = glimpse3d_pb2.Version(name=version.name, number=version.number, splat=artifact_to_proto(version.splat),
                                metrics=dict(version.metrics), create_time=timestamp(version.create_time))
    if version.confidence is not None:
        msg.confidence.CopyFrom(artifact_to_proto(version.confidence))
    if version.camera is not None:
        msg.camera.CopyFrom(camera_to_proto(version.camera))
    if version.report is not None:
        msg.report.CopyFrom(report_to_proto(version.report))
    return msg


def job_to_proto(job: Job) -> glimpse3d_pb2.Job:
    msg = glimpse3d_pb2.Job(
        name=job.name,
        display_name=job.display_name,
        # protoc's stubs type enum fields as the enum class, but Value() as returning a plain int
        state=cast(glimpse3d_pb2.Job.State, glimpse3d_pb2.Job.State.Value(job.state.value)),
        done=job.done,
        progress=common_pb2.Progress(stage=job.progress.stage, fraction=job.progress.fraction,
                                     message=job.progress.message),
        options=options_to_proto(job.options),
        input_image=artifact_to_proto(job.input_image),
        versions=[version_to_proto(v) for v in job.versions],
        create_time=timestamp(job.create_time),
        update_time=timestamp(job.update_time),
        request_id=job.request_id,
        tenant=job.tenant,
    )
    if job.error is not None:
        msg.error.CopyFrom(error_to_status(job.error))
    return msg


def event_to_proto(event: JobEvent) -> glimpse3d_pb2.JobEvent:
    return glimpse3d_pb2.JobEvent(event_time=timestamp(event.event_time), job=job_to_proto(event.job),
                                  kind=event.kind)


def export_to_proto(result: ExportResult) -> glimpse3d_pb2.ExportResponse:
    return glimpse3d_pb2.ExportResponse(artifact=artifact_to_proto(result.artifact), download_url=result.download_url,
                                        expire_time=timestamp(result.expire_time), version=result.version)
