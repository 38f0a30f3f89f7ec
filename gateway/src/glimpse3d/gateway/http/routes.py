"""The ``/api/v1`` routes: thin adapters from HTTP requests to :class:`GatewayApp` calls.

Each route authenticates the caller (``Authorization: Bearer <jwt>``, ``X-API-Key``; the job watch also
takes a short-lived ``?ticket=``, the photo and downloads a short-lived signed ``?sig=``) and works in its
tenant, inside the artifact store's ``tenant_scope`` (no other tenant's artifact can be read or written);
``X-Glimpse3D-Tenant`` (else the ``tenant``
query parameter) may name that tenant and no other. Without authentication (a loopback-only gateway)
the named tenant is used (``default`` when none). It calls the application layer and maps the result
with :mod:`.mapping`. Errors raised by the application layer keep their type; :class:`ApiRoute` turns
them into the JSON error shape, after renaming the gRPC request fields they name to this API's (``name``
-> ``job_id``, ``image_data`` -> ``photo``, ``options.num_views`` -> ``novel_views``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from glimpse3d.core.artifacts import ArtifactRef, tenant_scope
from glimpse3d.core.errors import FailedPrecondition, Glimpse3DError, InvalidInput, NotFound, Unavailable
from glimpse3d.core.formats import DEFAULT_FORMAT, formats, get_format
from glimpse3d.core.images import MAX_IMAGE_BYTES, encode_png
from glimpse3d.gateway.auth import LINK_PARAM, Principal, resolve_tenant
from glimpse3d.gateway.events import JobEvent
from glimpse3d.gateway.http.context import HttpContext
from glimpse3d.gateway.http.errors import error_response
from glimpse3d.gateway.http.mapping import (
    API_PREFIX,
    camera_from_view,
    download_filename,
    job_url,
    version_to_json,
)
from glimpse3d.gateway.http.schemas import (
    EnhanceRequest,
    ErrorResponse,
    EventTicket,
    ExportFormatName,
    Health,
    JobList,
    JobOut,
    MattePreviewOut,
    RestoreRequest,
    TenantDeletionOut,
    VersionList,
)
from glimpse3d.gateway.http.sse import event_response, job_event
from glimpse3d.gateway.http.uploads import (
    EXTRA_FIELD,
    PHOTO_FIELD,
    parse_extra_hints,
    parse_matte_points,
    read_photo_form,
)
from glimpse3d.gateway.jobs import (
    JOB_ID_PATTERN,
    MAX_DISPLAY_NAME_CHARS,
    MAX_ENHANCE_ROUNDS,
    MAX_EXTRA_PHOTOS,
    MAX_NUM_VIEWS,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_RESOLUTION,
    MAX_SEED,
    MIN_RESOLUTION,
    ExtraPhoto,
    JobOptions,
    MattePoint,
    job_name,
    version_name,
)
from glimpse3d.gateway.tenants import check_deletion_confirmed

logger = logging.getLogger(__name__)

_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
_CREATE_FIELDS = {"image_data": PHOTO_FIELD, "image": PHOTO_FIELD, "options.num_views": "novel_views",
                  "options.seed": "seed", "options.enhance_rounds": "enhance_rounds",
                  "options.prompt": "prompt", "options.resolution": "resolution",
                  "options.matte_points": "matte_points", "options.matte_points.x": "matte_points",
                  "options.matte_points.y": "matte_points", "options.matte_points.keep": "matte_points",
                  "mask_data": "mask",
                  **{f"extra_photos[{i}].{name}": f"extra_hints[{i}]" if name != "image_data" else f"extra_photos[{i}]"
                     for i in range(MAX_EXTRA_PHOTOS) for name in ("image_data", "azimuth_deg", "elevation_deg")}}
_JOB_FIELDS = {"name": "job_id"}
_ENHANCE_FIELDS = {"name": "job_id", "view": "camera"}
_ADD_PHOTO_FIELDS = {"name": "job_id", "photo.image_data": PHOTO_FIELD, "photo.azimuth_deg": "azimuth_deg",
                     "photo.elevation_deg": "elevation_deg"}
_IMMUTABLE = "private, max-age=31536000, immutable"


class ApiRoute(APIRoute):
    """Turns every exception of a route (the project's errors and unexpected ones) into the JSON
    error shape; FastAPI's own request errors go to the app's handlers."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except (RequestValidationError, StarletteHTTPException):
                raise
            except Exception as exc:
                return error_response(exc, request)

        return run


@contextmanager
def renamed_fields(mapping: Mapping[str, str]) -> Iterator[None]:
    """Re-raise the project's errors with this API's field names (message included)."""
    try:
        yield
    except Glimpse3DError as err:
        new = mapping.get(err.field or "")
        if new is not None:
            if err.message.startswith(err.field or ""):
                err.message = new + err.message[len(err.field or ""):]
                err.args = (err.message,)
            err.field = new
        raise


# ---- dependencies ---------------------------------------------------------------------------------


def context_of(request: Request) -> HttpContext:
    context = request.app.state.context
    if context is None:
        raise Unavailable("this HTTP app has no gateway behind it")
    return context


Context = Annotated[HttpContext, Depends(context_of)]
# Documentation of the credentials (the security schemes of the spec); the check reads the headers itself.
_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="an OIDC access token (JWT)")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                        description="a service account's API key")
RequestedTenant = Annotated[str | None, Header(
    alias="X-Glimpse3D-Tenant", description="the caller's tenant; must be the authenticated one")]
TenantQuery = Annotated[str | None, Query(
    description="the tenant, for clients that cannot set headers (links, EventSource); the header wins")]


async def principal_of(request: Request, ctx: Context, _bearer: Annotated[object, Depends(_BEARER)],
                       _key: Annotated[object, Depends(_API_KEY)]) -> Principal | None:
    """The authenticated caller (UNAUTHENTICATED without valid credentials); None when the gateway
    does not authenticate."""
    return None if ctx.auth is None else await ctx.auth.authenticate_async(request.headers)


def tenant_of(principal: Annotated[Principal | None, Depends(principal_of)],
              x_glimpse3d_tenant: RequestedTenant = None, tenant: TenantQuery = None) -> str:
    return resolve_tenant(principal, x_glimpse3d_tenant if x_glimpse3d_tenant is not None else tenant)


async def _signed_or_caller_tenant(request: Request, ctx: HttpContext, signed: Any, header: str | None,
                                   query: str | None) -> str:
    """The tenant of a signed ticket or link (already verified for the job), else of the caller's credentials."""
    requested = header if header is not None else query
    if signed is not None:
        return resolve_tenant(signed, requested)
    principal = None if ctx.auth is None else await ctx.auth.authenticate_async(request.headers)
    return resolve_tenant(principal, requested)


async def stream_tenant_of(
    job_id: str, request: Request, ctx: Context, x_glimpse3d_tenant: RequestedTenant = None,
    tenant: TenantQuery = None,
    ticket: Annotated[str | None, Query(description="a ticket from POST .../events/ticket, for EventSource "
                                                    "(which cannot send the Authorization header)")] = None,
) -> str:
    """The job watch's tenant: from a ticket for this job, else as for every route."""
    signed = ctx.tickets.verify(ticket, job_id) if ticket is not None else None
    return await _signed_or_caller_tenant(request, ctx, signed, x_glimpse3d_tenant, tenant)


async def link_tenant_of(
    job_id: str, request: Request, ctx: Context, _bearer: Annotated[object, Depends(_BEARER)],
    _key: Annotated[object, Depends(_API_KEY)], x_glimpse3d_tenant: RequestedTenant = None,
    tenant: TenantQuery = None,
    sig: Annotated[str | None, Query(alias=LINK_PARAM, description=(
        "the signature of a link from a Job (photo_url, downloads), for <img src> and download links "
        "(which cannot send the Authorization header); valid for minutes"))] = None,
) -> str:
    """The tenant of a photo or download: from the link's signature for this job, else as for every route."""
    signed = ctx.tickets.verify_link(sig, job_id) if sig is not None else None
    return await _signed_or_caller_tenant(request, ctx, signed, x_glimpse3d_tenant, tenant)


Tenant = Annotated[str, Depends(tenant_of)]
StreamTenant = Annotated[str, Depends(stream_tenant_of)]
LinkTenant = Annotated[str, Depends(link_tenant_of)]


def job_name_of(job_id: str) -> str:
    if not _JOB_ID_RE.fullmatch(job_id):
        raise InvalidInput(f"job_id must be 1..64 letters, digits, '_' or '-', got {job_id[:80]!r}", field="job_id")
    return job_name(job_id)


def _version_number(number: str) -> int | None:
    """None for ``latest``, else a positive version number; InvalidInput naming ``number``."""
    if number == "latest":
        return None
    if not (number.isascii() and number.isdigit()) or number.startswith("0") or len(number) > 9:
        raise InvalidInput(f"number must be a version number (1, 2, ...) or 'latest', got {number[:40]!r}",
                           field="number")
    return int(number)


# ---- OpenAPI descriptions -------------------------------------------------------------------------


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {400: "bad request (error.field names the field)", 401: "missing or invalid credentials",
                 403: "the credentials are for another tenant or job", 404: "no such job or version",
                 409: "the job is in the wrong state", 413: "the photo is larger than the limit",
                 415: "the photo is not PNG, JPEG or WebP", 429: "queue full; retry later",
                 503: "the gateway cannot serve now"}
    every = sorted({*codes, 401, 403})  # every API route authenticates its caller
    return {code: {"model": ErrorResponse, "description": described[code]} for code in every}


def _multipart_body(properties: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a multipart upload: the photo, then ``properties``."""
    photo = {"type": "string", "format": "binary", "description": f"PNG, JPEG or WebP, at most {MAX_IMAGE_BYTES} bytes"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [PHOTO_FIELD], "properties": {PHOTO_FIELD: photo, **properties}}}}}}


_UPLOAD_BODY: dict[str, Any] = _multipart_body({
                "display_name": {"type": "string", "maxLength": MAX_DISPLAY_NAME_CHARS},
                "novel_views": {"type": "integer", "minimum": 0, "maximum": MAX_NUM_VIEWS,
                                "description": "generated views fused before version 1 (0 = none)"},
                "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                "enhance_rounds": {"type": "integer", "minimum": 0, "maximum": MAX_ENHANCE_ROUNDS,
                                   "description": "automatic enhancement rounds after version 1"},
                "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
                "resolution": {"type": "integer", "description":
                               f"working resolution, 0 (default) or {MIN_RESOLUTION}..{MAX_RESOLUTION}"},
                "request_id": {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS,
                               "description": "idempotency key: a repeat returns the job it created"},
                "matte_points": {"type": "string", "description":
                                 "the user's matte corrections, JSON [[x, y, keep], ...]: x, y fractions of the "
                                 "photo's width and height from the top-left, keep true for object"},
                "mask": {"type": "string", "format": "binary", "description":
                         "optional matte drawn by the user (PNG, white or opaque = object); replaces the "
                         "estimated one"},
                EXTRA_FIELD: {"type": "array", "maxItems": MAX_EXTRA_PHOTOS,
                              "items": {"type": "string", "format": "binary"}, "description":
                              "more photos of the object (PNG, JPEG or WebP; together at most "
                              f"{MAX_IMAGE_BYTES} bytes), each posed and fused as a version after the first"},
                "extra_hints": {"type": "string", "description":
                                "where each extra photo was taken, JSON [[azimuth, elevation] or [azimuth] or "
                                "null, ...] in degrees (azimuth 0 = the photo's side); absent: searched"},
})
_ADD_PHOTO_BODY: dict[str, Any] = _multipart_body({
                "azimuth_deg": {"type": "number", "description": "hint: where it was taken (0 = the photo's side)"},
                "elevation_deg": {"type": "number", "description": "hint: its elevation (needs azimuth_deg)"},
                "request_id": {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS,
                               "description": "idempotency key: a repeat does not add the photo twice"},
})
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_EVENTS = {200: {"description": "`event: job` blocks whose data is a Job, heartbeat comments, then `event: end`",
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
_DOWNLOAD = {200: {"description": "the version's splat in the requested format",
                   "content": {f.media_type: _BINARY for f in formats()}}}
_FORMAT_HELP = "; ".join(f"{f.name}: {f.description}" for f in formats())
_PHOTO = {200: {"description": "the uploaded photo (WebP uploads are stored as PNG)",
                "content": {"image/png": _BINARY, "image/jpeg": _BINARY}}}


# ---- routes ---------------------------------------------------------------------------------------


def _operation_id(route: APIRoute) -> str:
    """OpenAPI operationId = the endpoint's name (create_job, enhance, ...), for generated clients."""
    return route.name


def api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, route_class=ApiRoute, generate_unique_id_function=_operation_id)

    @router.get("/healthz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def healthz(request: Request, response: Response) -> Health:
        """200 while the gateway takes work; 503 ``draining`` after SIGTERM (readiness probes and load
        balancers then send new work to another replica; reads are still answered)."""
        context = request.app.state.context  # None: the facade alone (static files, the spec), which is up
        if context is not None and context.gateway.draining:
            response.status_code = 503
            return Health(status="draining")
        return Health(status="ok")

    @router.post("/jobs", status_code=201, tags=["jobs"], response_model=JobOut, openapi_extra=_UPLOAD_BODY,
                 responses=_errors(400, 413, 415, 429))
    async def create_job(request: Request, response: Response, ctx: Context, tenant: Tenant) -> JobOut:
        """Upload a photo and start a job; the job comes back QUEUED."""
        form = await read_photo_form(request)
        if form.transcoded_from:
            logger.info("photo converted from %s to PNG", form.transcoded_from, extra={"tenant": tenant})
        with renamed_fields(_CREATE_FIELDS), tenant_scope(tenant):
            points = tuple(MattePoint(*p) for p in parse_matte_points(form.text.get("matte_points", "")))
            options = JobOptions(num_views=form.ints.get("novel_views", 0),
                                 enhance_rounds=form.ints.get("enhance_rounds", 0),
                                 prompt=form.text.get("prompt", ""), seed=form.ints.get("seed", 0),
                                 resolution=form.ints.get("resolution", 0), matte_points=points)
            hints = parse_extra_hints(form.text.get("extra_hints", ""), len(form.extras))
            extras = [ExtraPhoto(data, az, el) for data, (az, el) in zip(form.extras, hints, strict=True)]
            job = await ctx.gateway.create_job(tenant, form.photo, options,
                                               request_id=form.text.get("request_id", ""),
                                               display_name=form.text.get("display_name", ""), mask=form.mask,
                                               extra_photos=extras)
        response.headers["Location"] = job_url(job.id)
        with tenant_scope(tenant):
            return await ctx.job_json(job)

    @router.post("/matte", tags=["jobs"], response_model=MattePreviewOut, openapi_extra=_UPLOAD_BODY,
                 responses=_errors(400, 413, 415))
    async def preview_matte(request: Request, ctx: Context, tenant: Tenant) -> MattePreviewOut:
        """The matte a job would use for the photo, with the user's ``matte_points`` (and ``resolution``),
        to show and correct it before creating the job. Only ``photo``, ``matte_points`` and ``resolution``
        are read."""
        form = await read_photo_form(request)
        with renamed_fields(_CREATE_FIELDS), tenant_scope(tenant):
            points = tuple(MattePoint(*p) for p in parse_matte_points(form.text.get("matte_points", "")))
            preview = await ctx.gateway.preview_matte(tenant, form.photo, points, form.ints.get("resolution", 0))
        mask = np.round(np.clip(preview.mask, 0.0, 1.0) * 255.0).astype(np.uint8)
        png = await asyncio.to_thread(encode_png, mask)
        return MattePreviewOut(mask="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                               width=int(mask.shape[1]), height=int(mask.shape[0]), coverage=preview.coverage,
                               border_fraction=preview.border_fraction, fragments=preview.fragments,
                               warning=preview.warning)

    @router.get("/jobs", response_model=JobList, tags=["jobs"], responses=_errors(400))
    async def list_jobs(
        ctx: Context, tenant: Tenant,
        page_size: Annotated[int, Query(ge=0, description="0 = the default (50); at most 1000")] = 0,
        page_token: Annotated[str, Query(description="next_page_token of the previous page")] = "",
    ) -> JobList:
        """The tenant's jobs, newest first."""
        with tenant_scope(tenant):
            jobs, token = await ctx.gateway.list_jobs(tenant, page_size, page_token)
            return JobList(jobs=[await ctx.job_json(job) for job in jobs], next_page_token=token)

    @router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_errors(400, 404))
    async def get_job(job_id: str, ctx: Context, tenant: Tenant) -> JobOut:
        with renamed_fields(_JOB_FIELDS), tenant_scope(tenant):
            job = await ctx.gateway.get_job(tenant, job_name_of(job_id))
            return await ctx.job_json(job)

    @router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, tags=["jobs"],
                responses={**_EVENTS, **_errors(400, 404)})
    async def watch_job(job_id: str, ctx: Context, tenant: StreamTenant) -> EventSourceResponse:
        """The job now, then on every change, until it is done with no round running or queued."""
        with renamed_fields(_JOB_FIELDS):
            events = ctx.gateway.watch_job(tenant, job_name_of(job_id))
            try:
                first = await anext(events)
            except BaseException:
                await events.aclose()
                raise

        async def encode(event: JobEvent) -> ServerSentEvent:
            with tenant_scope(tenant):
                job = await ctx.job_json(event.job)
            return job_event("job", job.model_dump_json(), str(event.job.revision))

        return event_response(first, events, encode, heartbeat_s=ctx.heartbeat_s, registry=ctx.streams)

    @router.post("/jobs/{job_id}/events/ticket", response_model=EventTicket, tags=["jobs"],
                 responses=_errors(400, 404))
    async def event_ticket(job_id: str, ctx: Context, tenant: Tenant) -> EventTicket:
        """A ticket that lets ``EventSource`` watch this job for a minute without credentials in the URL
        (the stream, once open, lasts; a reconnect after the ticket expired needs a new one)."""
        with renamed_fields(_JOB_FIELDS):
            job = await ctx.gateway.get_job(tenant, job_name_of(job_id))
        ticket = ctx.tickets.mint(tenant, job.id)
        return EventTicket(ticket=ticket, expires_in_s=int(ctx.tickets.ttl_s),
                           events_url=f"{job_url(job.id)}/events?ticket={ticket}")

    @router.post("/jobs/{job_id}/enhance", status_code=202, response_model=JobOut, tags=["jobs"],
                 responses=_errors(400, 404, 409, 429))
    async def enhance(job_id: str, body: EnhanceRequest, ctx: Context, tenant: Tenant) -> JobOut:
        """Start (or queue) one enhancement round from a camera or the least confident view."""
        if body.camera is not None and body.auto:
            raise InvalidInput("set camera or auto: true, not both", field="auto")
        if body.camera is None and not body.auto:
            raise InvalidInput("set camera (a look-at view) or auto: true", field="camera")
        camera = None if body.camera is None else camera_from_view(body.camera)
        with renamed_fields(_ENHANCE_FIELDS), tenant_scope(tenant):
            job = await ctx.gateway.enhance(tenant, job_name_of(job_id), camera=camera, prompt=body.prompt,
                                            strength=body.strength, seed=body.seed, request_id=body.request_id)
            return await ctx.job_json(job)

    @router.post("/jobs/{job_id}/photos", status_code=202, response_model=JobOut, tags=["jobs"],
                 openapi_extra=_ADD_PHOTO_BODY, responses=_errors(400, 404, 409, 413, 415, 429))
    async def add_photo(job_id: str, request: Request, ctx: Context, tenant: Tenant) -> JobOut:
        """Add another photo of the object: posed against the latest version (from the hint when given)
        and fused as a real view; it adds a version. Only ``photo``, ``azimuth_deg``, ``elevation_deg`` and
        ``request_id`` are read."""
        form = await read_photo_form(request)
        photo = ExtraPhoto(form.photo, form.floats.get("azimuth_deg"), form.floats.get("elevation_deg"))
        with renamed_fields(_ADD_PHOTO_FIELDS), tenant_scope(tenant):
            job = await ctx.gateway.add_photo(tenant, job_name_of(job_id), photo,
                                              request_id=form.text.get("request_id", ""))
            return await ctx.job_json(job)

    @router.post("/jobs/{job_id}/versions/{number}/restore", status_code=202, response_model=JobOut,
                 tags=["versions"], responses=_errors(400, 404, 409, 429))
    async def restore_version(job_id: str, number: str, ctx: Context, tenant: Tenant,
                              body: RestoreRequest | None = None) -> JobOut:
        """Go back to an earlier version: a version that is a copy of it is added (``kind`` restore, its
        ``parent`` the version restored), and later rounds go on from it. Nothing is deleted."""
        wanted = _version_number(number)
        if wanted is None:
            raise InvalidInput("number must be the version to restore (1, 2, ...), not 'latest'", field="number")
        with renamed_fields(_JOB_FIELDS):
            job = await ctx.gateway.get_job(tenant, job_name_of(job_id))
        if wanted > len(job.versions):
            raise NotFound(f"version {version_name(job.id, wanted)} not found", field="number")
        with renamed_fields(_JOB_FIELDS), tenant_scope(tenant):  # the version was checked above
            job = await ctx.gateway.restore_version(tenant, version_name(job.id, wanted),
                                                    request_id=body.request_id if body is not None else "")
            return await ctx.job_json(job)

    @router.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"], responses=_errors(400, 404))
    async def cancel(job_id: str, ctx: Context, tenant: Tenant) -> JobOut:
        """Cancel the running work; a no-op for a done job."""
        with renamed_fields(_JOB_FIELDS), tenant_scope(tenant):
            job = await ctx.gateway.cancel_job(tenant, job_name_of(job_id))
            return await ctx.job_json(job)

    @router.delete("/tenant", response_model=TenantDeletionOut, tags=["tenant"], responses=_errors(400, 409))
    async def delete_tenant_data(
        ctx: Context, tenant: Tenant,
        confirm: Annotated[str, Query(description="the caller's tenant name again, to confirm")] = "",
        delete_api_keys: Annotated[bool, Query(description="also revoke the tenant's API keys")] = False,
    ) -> TenantDeletionOut:
        """Delete every job, version, queued round and artifact of the caller's own tenant (queued and
        running jobs are cancelled first); its API keys stay unless ``delete_api_keys``. Cannot be undone."""
        check_deletion_confirmed(tenant, confirm)
        result = await ctx.gateway.delete_tenant_data(tenant, delete_api_keys=delete_api_keys)
        return TenantDeletionOut(tenant=tenant, jobs_cancelled=len(result.cancelled), jobs_deleted=len(result.jobs),
                                 versions_deleted=result.versions, artifacts_deleted=result.artifacts,
                                 api_keys_deleted=result.api_keys)

    @router.get("/jobs/{job_id}/versions", response_model=VersionList, tags=["versions"], responses=_errors(400, 404))
    async def list_versions(job_id: str, ctx: Context, tenant: Tenant) -> VersionList:
        with renamed_fields(_JOB_FIELDS), tenant_scope(tenant):
            job = await ctx.gateway.get_job(tenant, job_name_of(job_id))
            counts = await ctx.counts.for_job(job)
        sig = ctx.link_sig(job)
        return VersionList(versions=[version_to_json(v, tenant, counts.get(v.splat.sha256), sig)
                                     for v in job.versions])

    @router.get("/jobs/{job_id}/versions/{number}/download", response_class=Response, tags=["versions"],
                responses={**_DOWNLOAD, **_errors(400, 404, 409)})
    async def download(
        job_id: str, number: str, ctx: Context, tenant: LinkTenant,
        fmt: Annotated[ExportFormatName, Query(alias="format", description=_FORMAT_HELP)] = DEFAULT_FORMAT,
    ) -> Response:
        """A version (a number, or ``latest``) as a file to save."""
        wanted = _version_number(number)
        with renamed_fields(_JOB_FIELDS):
            job = await ctx.gateway.get_job(tenant, job_name_of(job_id))
        if wanted is None and not job.versions:
            raise FailedPrecondition(f"job {job.name} has no version yet", field="number")
        if wanted is not None and wanted > len(job.versions):
            raise NotFound(f"version {version_name(job.id, wanted)} not found", field="number")
        resolved = wanted or len(job.versions)
        with tenant_scope(tenant):
            result = await ctx.gateway.export(tenant, version_name(job.id, resolved), fmt)
            data = await _read(ctx, result.artifact)
        headers = {
            "Content-Disposition": f'attachment; filename="{download_filename(job.id, resolved, fmt)}"',
            "ETag": f'"{result.artifact.sha256}"',
            "Cache-Control": _IMMUTABLE if wanted is not None else "no-cache",
            "X-Glimpse3D-Version": str(resolved),
        }
        return Response(data, media_type=get_format(fmt).media_type, headers=headers)

    @router.get("/jobs/{job_id}/photo", response_class=Response, tags=["jobs"],
                responses={**_PHOTO, **_errors(400, 404)})
    async def photo(job_id: str, ctx: Context, tenant: LinkTenant) -> Response:
        """The photo the job was created from."""
        with renamed_fields(_JOB_FIELDS):
            job = await ctx.gateway.get_job(tenant, job_name_of(job_id))
        ref = job.input_image
        extension = "png" if ref.media_type == "image/png" else "jpg"
        headers = {"Content-Disposition": f'inline; filename="{job.id}-photo.{extension}"',
                   "ETag": f'"{ref.sha256}"', "Cache-Control": _IMMUTABLE}
        with tenant_scope(tenant):
            data = await _read(ctx, ref)
        return Response(data, media_type=ref.media_type, headers=headers)

    return router


async def _read(ctx: HttpContext, ref: ArtifactRef) -> bytes:
    return await asyncio.to_thread(ctx.artifacts.get, ref)
