# ruff: noqa: N802 - gRPC method names are CamelCase
"""``glimpse3d.v1.Glimpse3D`` over gRPC: a thin adapter from messages to :class:`GatewayApp` calls.

The tenant is the authenticated caller's (:class:`~glimpse3d.gateway.auth.AuthInterceptor`); the
``x-glimpse3d-tenant`` request metadata may name it and nothing else. Without authentication (loopback
only) it is the tenant named there (``default`` when absent). Domain
errors propagate unchanged; the shared server interceptor turns them into rich statuses.

Every call runs in the artifact store's ``tenant_scope`` of its tenant: a reference to another tenant's
artifact (``CreateJob.image``) is PERMISSION_DENIED, decided from the reference alone (the tenant is part
of its key), so the answer says nothing about whether the artifact exists. Export's ``download_url`` is
the store's pre-signed URL (S3), or, for the file store, which has none, a link to the HTTP facade's
download route, relative to the facade's address and signed for minutes (``?sig=``) when the gateway
authenticates its callers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np

from glimpse3d.core.artifacts import ArtifactRef, outside_tenant, tenant_scope
from glimpse3d.core.convert import artifact_from_proto, view_from_proto
from glimpse3d.core.errors import InvalidInput, PermissionDenied
from glimpse3d.core.images import encode_png
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.auth import TicketSigner, current_principal, resolve_tenant
from glimpse3d.gateway.convert import (
    event_to_proto,
    export_to_proto,
    format_from_proto,
    job_to_proto,
    options_from_proto,
    points_from_proto,
)
from glimpse3d.gateway.http.mapping import download_url
from glimpse3d.gateway.jobs import TENANT_HEADER, ExtraPhoto, parse_export_name
from glimpse3d.gateway.tenants import check_deletion_confirmed
from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc

SERVICE_NAME = glimpse3d_pb2.DESCRIPTOR.services_by_name["Glimpse3D"].full_name


def extra_photo_from_proto(msg: glimpse3d_pb2.ExtraPhoto) -> ExtraPhoto:
    return ExtraPhoto(msg.image_data, msg.azimuth_deg if msg.HasField("azimuth_deg") else None,
                      msg.elevation_deg if msg.HasField("elevation_deg") else None)


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant: the authenticated one, or the one the metadata names (validated)."""
    requested = None
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_HEADER:
            requested = value if isinstance(value, str) else ""
            break
    return resolve_tenant(current_principal(), requested)


class Glimpse3DServicer(glimpse3d_pb2_grpc.Glimpse3DServicer):
    """``tickets``: signs the file store's download links; give it the HTTP facade's signer (the same
    ``auth_ticket_secret``) so that the facade accepts them (the default shares the process's random key,
    which the facade's signer also uses when no secret is set). ``http_base``: the facade's address as
    clients reach it (``https://host:port``, read when a link is made, so it may be known only once the
    facade listens); the links are relative to it, and relative when it gives None."""

    def __init__(self, app: GatewayApp, tickets: TicketSigner | None = None,
                 http_base: Callable[[], str | None] | None = None) -> None:
        self._app = app
        self._tickets = tickets or TicketSigner()
        self._http_base = http_base

    async def CreateJob(
        self, request: glimpse3d_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.Job:
        tenant = tenant_of(context)
        source = request.WhichOneof("image_source")
        if source == "image_data":
            image: bytes | ArtifactRef = request.image_data
        elif source == "image":
            image = artifact_from_proto(request.image, "image")
        else:
            raise InvalidInput("set image_data (PNG or JPEG bytes) or image (an artifact)", field="image_data")
        try:
            with tenant_scope(tenant):
                job = await self._app.create_job(
                    tenant, image, options_from_proto(request.options),
                    request_id=request.request_id, display_name=request.display_name, mask=request.mask_data or None,
                    extra_photos=[extra_photo_from_proto(p) for p in request.extra_photos],
                )
        except PermissionDenied as err:  # the store refused the image's key before reading anything
            if isinstance(image, ArtifactRef) and err.field == "uri":
                raise outside_tenant(image.uri, tenant, "image.uri") from None
            raise
        return job_to_proto(job)

    async def AddPhoto(
        self, request: glimpse3d_pb2.AddPhotoRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.Job:
        tenant = tenant_of(context)
        with tenant_scope(tenant):
            job = await self._app.add_photo(tenant, request.name, extra_photo_from_proto(request.photo),
                                            request_id=request.request_id)
        return job_to_proto(job)

    async def PreviewMatte(
        self, request: glimpse3d_pb2.PreviewMatteRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.PreviewMatteResponse:
        if not request.image_data:
            raise InvalidInput("image_data is required (PNG or JPEG bytes)", field="image_data")
        tenant = tenant_of(context)
        try:  # the options' names (options.matte_points, options.resolution) are this request's own fields here
            with tenant_scope(tenant):
                preview = await self._app.preview_matte(tenant, request.image_data,
                                                        points_from_proto(request.matte_points), request.resolution)
        except InvalidInput as err:
            if err.field and err.field.startswith("options."):
                name = err.field.removeprefix("options.").split(".")[0]
                raise InvalidInput(err.message.replace("options.", ""), field=name) from None
            raise
        png = await asyncio.to_thread(encode_png, np.round(preview.mask * 255.0).astype(np.uint8))
        return glimpse3d_pb2.PreviewMatteResponse(
            mask_png=png, coverage=preview.coverage, border_fraction=preview.border_fraction,
            fragments=preview.fragments, warning=preview.warning)

    async def GetJob(
        self, request: glimpse3d_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.Job:
        return job_to_proto(await self._app.get_job(tenant_of(context), request.name))

    async def ListJobs(
        self, request: glimpse3d_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.ListJobsResponse:
        jobs, token = await self._app.list_jobs(tenant_of(context), request.page_size, request.page_token)
        return glimpse3d_pb2.ListJobsResponse(jobs=[job_to_proto(job) for job in jobs], next_page_token=token)

    async def WatchJob(
        self, request: glimpse3d_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[glimpse3d_pb2.JobEvent]:
        # When the client goes away grpc cancels this generator, which unsubscribes the watch.
        async for event in self._app.watch_job(tenant_of(context), request.name):
            yield event_to_proto(event)

    async def CancelJob(
        self, request: glimpse3d_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.Job:
        return job_to_proto(await self._app.cancel_job(tenant_of(context), request.name))

    async def DeleteTenantData(
        self, request: glimpse3d_pb2.DeleteTenantDataRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.DeleteTenantDataResponse:
        """The caller's own tenant only (the authenticated one), confirmed by naming it in ``confirm``."""
        tenant = tenant_of(context)
        check_deletion_confirmed(tenant, request.confirm)
        result = await self._app.delete_tenant_data(tenant, delete_api_keys=request.delete_api_keys)
        return glimpse3d_pb2.DeleteTenantDataResponse(
            tenant=tenant, jobs_cancelled=len(result.cancelled), jobs_deleted=len(result.jobs),
            versions_deleted=result.versions, artifacts_deleted=result.artifacts, api_keys_deleted=result.api_keys)

    async def Enhance(
        self, request: glimpse3d_pb2.EnhanceRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.Job:
        tenant = tenant_of(context)
        target = request.WhichOneof("target")
        if target == "view":
            camera = view_from_proto(request.view, "view")
        elif target == "auto" and request.auto:
            camera = None
        else:
            raise InvalidInput("set view (a camera or orbit view) or auto = true", field="view")
        with tenant_scope(tenant):
            job = await self._app.enhance(
                tenant, request.name, camera=camera, prompt=request.prompt, strength=request.strength,
                seed=request.seed, request_id=request.request_id,
            )
        return job_to_proto(job)

    async def RestoreVersion(
        self, request: glimpse3d_pb2.RestoreVersionRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.Job:
        tenant = tenant_of(context)
        with tenant_scope(tenant):
            job = await self._app.restore_version(tenant, request.name, request_id=request.request_id)
        return job_to_proto(job)

    async def Export(
        self, request: glimpse3d_pb2.ExportRequest, context: grpc.aio.ServicerContext
    ) -> glimpse3d_pb2.ExportResponse:
        tenant = tenant_of(context)
        fmt = format_from_proto(request.format)
        with tenant_scope(tenant):
            result = await self._app.export(tenant, request.name, fmt)
        if not result.download_url.startswith(("https://", "http://")):  # the file store: no URL of its own
            job_id, number = parse_export_name(result.version)
            base = (self._http_base() if self._http_base is not None else None) or ""
            if current_principal() is None:  # a gateway without authentication (loopback only): a plain link
                link = download_url(job_id, number or 1, fmt, tenant)
                result = dataclasses.replace(result, download_url=base.rstrip("/") + link)
            else:
                sig = self._tickets.mint_link(tenant, job_id)
                link = download_url(job_id, number or 1, fmt, tenant, sig)
                result = dataclasses.replace(result, download_url=base.rstrip("/") + link,
                                             expire_time=self._tickets.expiry(sig))
        return export_to_proto(result)
