"""The gateway's application layer, shared by the gRPC servicer and the HTTP facade.

:class:`GatewayApp` validates requests, persists jobs in the :class:`~glimpse3d.gateway.store.JobStore`,
queues work on a bounded :class:`~glimpse3d.gateway.workqueue.WorkQueue` served by ``workers`` tasks and
delegates the model work to a :class:`Pipeline`; domain errors propagate for the RPC layer to map. A job
runs version 1, its automatic rounds, then Enhance rounds queued in the store; a failed or cancelled
round returns it to SUCCEEDED with ``error`` set, a rejected round (:class:`RoundRejected`) adds no version.
Each active job is held by one replica's lease, renewed every ``lease_s / 3``; orphaned jobs are adopted.
docs/http-api.md and docs/deploy-state.md give the full semantics.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as MetricCounter

from glimpse3d.core.artifacts import ArtifactRef, ArtifactStore
from glimpse3d.core.cameras import Camera, check_sees, check_view_camera
from glimpse3d.core.decodegate import process_gate
from glimpse3d.core.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    RoundRejected,
    Unavailable,
    shorten,
)
from glimpse3d.core.formats import DEFAULT_FORMAT, SplatFormat, get_format, read_ply
from glimpse3d.core.images import MAX_IMAGE_BYTES, decode_image, encode_png, resize_longest
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.events import EventHub, JobEvent
from glimpse3d.gateway.jobs import (
    MAX_DISPLAY_NAME_CHARS,
    MAX_EXTRA_PHOTOS,
    MAX_REQUEST_ID_CHARS,
    MAX_RESOLUTION,
    MAX_SEED,
    ExtraPhoto,
    Job,
    JobError,
    JobOptions,
    MattePoint,
    Progress,
    RoundSpec,
    Version,
    VersionResult,
    check_tenant,
    check_text,
    job_name,
    parse_export_name,
    parse_job_name,
    restored,
    version_name,
)
from glimpse3d.gateway.store import DatabaseUnavailable, JobStore, RoundOutcome, request_hash
from glimpse3d.gateway.tenants import TenantDeletion, active_job_ids, delete_tenant_data
from glimpse3d.gateway.workqueue import Slot, WorkQueue

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXPORT_CACHE_SIZE = 1024  # (tenant, splat sha256, format) -> exported artifact ref (a few hundred bytes each)
EXPORT_THREADS = 2  # splat-format conversions (spz, sog: about 1.5 s of CPU each) at once, off the DB threads

ProgressReporter = Callable[[str, float, str], Awaitable[None]]
"""``await report(stage, fraction, message)``: ``stage`` one of :class:`~glimpse3d.gateway.states.Stage`,
``fraction`` in [0, 1] of the piece of work being run (clamped), ``message`` for humans."""


class Pipeline(Protocol):
    """The model work of a job, implemented by calling the five services.

    Both methods run inside the job's asyncio task: they must propagate ``CancelledError``
    (cancelling the downstream call in flight) and raise domain errors for failures. The job they
    receive is a snapshot; ``job.latest_version`` is what a round enhances.
    """

    async def run_initial(self, job: Job, report: ProgressReporter) -> VersionResult:
        """Photo -> version 1: matting and depth, reconstruction, the optional multiview stage."""
        ...

    async def run_round(self, job: Job, round_spec: RoundSpec, report: ProgressReporter) -> VersionResult:
        """One enhancement round on ``job.latest_version``: render the round's view (the pipeline
        picks it when ``round_spec.camera`` is None and returns it), enhance, depth, refine."""
        ...

    # Optional, looked up with getattr: ``preview_matte(image, points, side)`` and
    # ``export_mesh(splat, fmt) -> ArtifactRef`` (an export-only format, made by the reconstruction
    # service in the caller's tenant_scope); without it those formats answer FAILED_PRECONDITION.


@dataclass(frozen=True, eq=False)
class MattePreview:
    mask: np.ndarray  # float32 [H, W] in [0, 1]
    coverage: float
    border_fraction: float
    fragments: int
    warning: str


MAX_MASK_BYTES = 8 * 1024 * 1024


def with_matte(image: bytes, mask: bytes) -> bytes:
    """``image`` as a PNG whose alpha channel is ``mask`` (its alpha when it has one that is not all
    opaque, else its luminance; resized to the image, which is first brought to at most the largest
    working resolution, MAX_RESOLUTION a side). InvalidInput naming ``mask_data`` when the mask
    is unreadable, too large, or marks no object or nothing but object."""
    photo = decode_image(image, field="image_data")
    if max(photo.shape[:2]) > MAX_RESOLUTION:  # the pipeline never works above it; keeps the PNG small
        photo = resize_longest(photo, MAX_RESOLUTION)
    drawn = decode_image(mask, field="mask_data", max_bytes=MAX_MASK_BYTES)
    if drawn.shape[2] == 4 and int(drawn[..., 3].min()) < 255:
        alpha = drawn[..., 3]
    else:
        alpha = np.round(drawn[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        alpha = np.clip(alpha, 0, 255).astype(np.uint8)
    h, w = photo.shape[:2]
    if alpha.shape != (h, w):
        alpha = np.asarray(Image.fromarray(alpha).resize((w, h), Image.Resampling.BILINEAR))
    inside = float((alpha >= 128).mean())
    if inside == 0.0:
        raise InvalidInput("mask_data marks no object (white or opaque pixels are object)", field="mask_data")
    if int(alpha.min()) == 255:
        raise InvalidInput("mask_data marks the whole photo as object; leave the background black or transparent",
                           field="mask_data")
    return encode_png(np.dstack([photo[..., :3], alpha]), field="mask_data")


@dataclass(frozen=True)
class ExportResult:
    artifact: ArtifactRef
    download_url: str
    expire_time: datetime
    version: str  # resource name of the exported version


_CANCELLED_BY_CALLER = "cancelled by the caller"


def create_request_hash(image: bytes | ArtifactRef, options: JobOptions, display_name: str,
                        mask: bytes | None, extra_photos: Sequence[ExtraPhoto] = ()) -> str:
    """The sha256 of a CreateJob request in canonical form (the same over gRPC and HTTP): the photo's
    sha256 (or the artifact's uri and sha256), the mask's sha256, the options, the display name and,
    when there are any, each extra photo's sha256 and hint (absent otherwise, so the hashes of requests
    without extra photos, stored before they existed, stay the same)."""
    photo = ({"uri": image.uri, "sha256": image.sha256} if isinstance(image, ArtifactRef)
             else {"sha256": hashlib.sha256(bytes(image)).hexdigest()})
    body = {"image": photo, "mask": hashlib.sha256(bytes(mask)).hexdigest() if mask else None,
            "options": options.to_json(), "display_name": display_name}
    if extra_photos:
        body["extra_photos"] = [{"sha256": hashlib.sha256(bytes(p.image_data)).hexdigest(),
                                 "azimuth_deg": p.azimuth_deg, "elevation_deg": p.elevation_deg}
                                for p in extra_photos]
    return request_hash(body)


def _image_media_type(data: bytes) -> str:
    """PNG or JPEG, from the magic bytes of an image :func:`decode_image` has accepted."""
    return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


class _RunPlan:
    """Maps the progress of one piece of work (initial run or a round) to the whole run."""

    def __init__(self, job: Job) -> None:
        initial = 0 if job.versions else 1 + job.options.enhance_rounds
        self.done = 0
        self.total = max(1, initial + len(job.pending_rounds))

    def start_piece(self, remaining: int) -> None:
        self.total = max(self.total, self.done + remaining)

    def overall(self, fraction: float) -> float:
        fraction = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 0.0
        return min((self.done + fraction) / self.total, 1.0)


class GatewayApp:
    """Jobs, rounds and exports over a job store, an artifact store and a :class:`Pipeline`.

    The caller owns ``store`` and ``artifacts`` (and closes them); the app owns its worker tasks:
    ``await app.start()`` (or ``async with app``) before use, ``await app.close()`` after.
    """

    def __init__(
        self, config: GatewayConfig, store: JobStore, artifacts: ArtifactStore, pipeline: Pipeline
    ) -> None:
        self._config = config
        self._store = store
        self._artifacts = artifacts
        self._pipeline = pipeline
        self._events = EventHub(config.watch_queue_size)
        self._queue = WorkQueue(config.queue_size, config.max_jobs_per_tenant)
        process_gate()  # the image decode budget (GLIMPSE3D_DECODE_*): a bad setting fails at start-up
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._queued: Counter[str] = Counter()  # job id -> entries in the work queue
        self._released: set[str] = set()  # jobs whose task is being stopped because the lease was lost
        self._maintainer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a worker freed up: adopt orphaned jobs now
        self._closing = False
        self._draining = False
        self._handed_back: set[str] = set()  # jobs whose next round was left for the next holder (drain)
        # Exports: converted refs by (tenant, splat sha256, format), most recent last; the export being
        # made per key, shared by concurrent requests; splat conversions on threads of their own.
        self._exports: OrderedDict[tuple[str, str, str], ArtifactRef] = OrderedDict()
        self._exporting: dict[tuple[str, str, str], asyncio.Task[ArtifactRef]] = {}
        self._export_pool = ThreadPoolExecutor(EXPORT_THREADS, thread_name_prefix="gateway-export")
        self.export_counts: Counter[str] = Counter()  # "<where>" -> exports: cache, gateway, service
        self._export_metric = MetricCounter(
            "glimpse3d_gateway_exports", "Exports answered, by format and by where the file came from "
            "(cache: made before; gateway: converted here; service: meshed by the reconstruction service).",
            ["format", "source"], registry=None)

    @property
    def events(self) -> EventHub:
        return self._events

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` began (SIGTERM): the HTTP health answers 503 so load balancers stop
        sending work, as the gRPC health says NOT_SERVING."""
        return self._draining

    async def __aenter__(self) -> GatewayApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Adopt the jobs no live replica holds (e.g. left QUEUED or RUNNING by the previous process),
        start the workers and the lease heartbeat."""
        await self._adopt()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"gateway-worker-{i}") for i in range(self._config.workers)
        ]
        self._maintainer = asyncio.create_task(self._maintain(), name="gateway-leases")

    async def drain(self, grace_s: float) -> None:
        """Stop taking work (SIGTERM): CreateJob and Enhance answer UNAVAILABLE, no queued job is
        started and no orphan adopted, and each running job may finish the version it is computing
        (its initial run or its current round) for up to ``grace_s`` seconds; its next rounds are left
        for the next holder. Leases are still renewed meanwhile; :meth:`close` releases them."""
        self._draining = True
        logger.info("draining", extra={"grace_s": grace_s, "running": len(self._tasks)})
        workers, self._workers = self._workers, []
        for worker in workers:  # a worker waiting on its job's task leaves that task running
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        running = [task for task in self._tasks.values() if not task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=max(0.0, grace_s))
            if late:
                logger.warning("drain grace over; %d job(s) resume on the next holder", len(late))

    async def close(self) -> None:
        """Stop the workers and cancel running jobs; their stored state is kept and their leases are
        released, for another replica or the next start to resume them."""
        self._closing = True
        held = self._held() | self._handed_back
        pending = [*self._workers, *self._tasks.values(), *([self._maintainer] if self._maintainer else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._workers.clear()
        exporting = list(self._exporting.values())
        for task in exporting:
            task.cancel()
        await asyncio.gather(*exporting, return_exceptions=True)
        self._export_pool.shutdown(wait=False, cancel_futures=True)
        try:
            await self._db(self._store.release, held)
        except DatabaseUnavailable as err:
            logger.warning("could not release job leases; they expire on their own: %s", err.message)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export this replica's load as gauges read at scrape time (the autoscaler reads the queue depth)."""
        Gauge(
            "glimpse3d_gateway_queue_depth", "Jobs and enhancement rounds waiting for a worker of this replica.",
            registry=registry,
        ).set_function(self._queue.qsize)
        Gauge(
            "glimpse3d_gateway_jobs_active", "Jobs being worked on by this replica.", registry=registry,
        ).set_function(lambda: len(self._tasks))
        Gauge(
            "glimpse3d_gateway_workers", "Jobs this replica works on at once.", registry=registry,
        ).set(self._config.workers)
        registry.register(self._export_metric)

    @staticmethod
    async def _db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ---- public API -----------------------------------------------------------------------------

    async def create_job(
        self,
        tenant: str,
        image: bytes | ArtifactRef,
        options: JobOptions | None = None,
        *,
        request_id: str = "",
        display_name: str = "",
        mask: bytes | None = None,
        extra_photos: Sequence[ExtraPhoto] = (),
    ) -> Job:
        """Validate and persist a job, queue it and return it QUEUED (see the module docstring).

        ``extra_photos`` (at most MAX_EXTRA_PHOTOS): other photos of the object, each queued as a round
        that poses and fuses it after version 1 (InvalidInput naming ``extra_photos[i]``).

        ``mask``: a matte the user drew (PNG/JPEG, white or opaque = object, any size); it becomes the
        photo's alpha channel, which replaces the estimated matte (:func:`with_matte`)."""
        check_tenant(tenant)
        check_text(request_id, MAX_REQUEST_ID_CHARS, "request_id")
        check_text(display_name, MAX_DISPLAY_NAME_CHARS, "display_name")
        self._check_taking_work()
        options = options or JobOptions()
        fingerprint = create_request_hash(image, options, display_name, mask, extra_photos) if request_id else ""
        if request_id and (existing := await self._db(self._store.find_by_request_id, tenant, request_id,
                                                      fingerprint)):
            return existing
        if len(extra_photos) > MAX_EXTRA_PHOTOS:
            raise InvalidInput(f"at most {MAX_EXTRA_PHOTOS} extra photos, got {len(extra_photos)}",
                               field="extra_photos")
        rounds = [await self._photo_round(p, f"extra_photos[{i}]") for i, p in enumerate(extra_photos)]
        if mask:
            if isinstance(image, ArtifactRef):
                image = await self._db(self._artifacts.get, image, max_bytes=MAX_IMAGE_BYTES)
            image = await self._db(with_matte, bytes(image), bytes(mask))
        with self._queue.reserve(tenant) as slot:
            input_image = await self._store_image(image)
            job, created = await self._db(
                self._store.create_job, tenant=tenant, options=options, input_image=input_image,
                request_id=request_id, display_name=display_name, request_hash=fingerprint, rounds=rounds,
            )
            if created:
                self._enqueue(job.id, slot)
                logger.info("job created", extra={"job": job.name, "tenant": tenant})
        return job

    async def preview_matte(self, tenant: str, image: bytes, points: tuple[MattePoint, ...] = (),
                            resolution: int = 0) -> MattePreview:
        """The matte a job would use for ``image`` with the user's ``points``, at the job's working size."""
        check_tenant(tenant)
        options = JobOptions(resolution=resolution, matte_points=points)  # validates both
        preview = getattr(self._pipeline, "preview_matte", None)
        if preview is None:
            raise FailedPrecondition("this gateway's pipeline cannot preview mattes", field="image_data")
        await self._db(decode_image, image, field="image_data")
        mask, check = await preview(image, options.matte_points, options.effective_resolution)
        return MattePreview(mask=mask, coverage=check.coverage, border_fraction=check.border_fraction,
                            fragments=check.fragments, warning=check.warning)

    async def get_job(self, tenant: str, name: str) -> Job:
        check_tenant(tenant)
        return await self._db(self._store.get_job, tenant, parse_job_name(name))

    async def list_jobs(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[Job], str]:
        """One page of the tenant's jobs, newest first, and the next page token ("" on the last)."""
        check_tenant(tenant)
        return await self._db(self._store.list_jobs, tenant, page_size, page_token)

    async def watch_job(self, tenant: str, name: str) -> AsyncGenerator[JobEvent, None]:
        """The job's current snapshot, then every change, until the job is done. Closing the
        iterator (or cancelling its consumer) unsubscribes."""
        check_tenant(tenant)
        job_id = parse_job_name(name)
        with self._events.subscribe(job_id) as queue:
            job = await self._db(self._store.get_job, tenant, job_id)
            yield JobEvent(job, "snapshot")
            revision = job.revision
            while not job.done:
                try:
                    event = await asyncio.wait_for(queue.get(), self._config.watch_poll_s)
                except TimeoutError:  # nothing from this replica: re-read (another one may be running it)
                    fresh = await self._db(self._store.get_job, tenant, job_id)
                    event = JobEvent(fresh, _change_kind(job, fresh))
                if event.job.revision <= revision:
                    continue  # older than what the watcher has already seen
                job, revision = event.job, event.job.revision
                yield event

    async def cancel_job(self, tenant: str, name: str) -> Job:
        """Cancel the job's running work and return the job (see the module docstring)."""
        check_tenant(tenant)
        job_id = parse_job_name(name)
        job = await self._db(self._store.get_job, tenant, job_id)
        if job.done:
            return job
        await self._cancel_task(job_id)
        job = await self._db(self._store.finish_with_error, job_id, self._cancel_error(), cancelled=True)
        self._events.publish(job, "state")
        await self._cancel_task(job_id)  # a worker may have claimed the job meanwhile
        logger.info("job cancelled", extra={"job": job.name, "state": job.state.value})
        return await self._db(self._store.get_job, tenant, job_id)

    async def delete_tenant_data(self, tenant: str, *, delete_api_keys: bool = False) -> TenantDeletion:
        """Delete every job, version, queued round and artifact of ``tenant`` (and its API keys in the
        gateway's keys file with ``delete_api_keys``): its queued and running jobs are cancelled first,
        those this replica runs stopped at once (as CancelJob does), those of other replicas marked
        cancelled in the store (they stop when they see it). See :mod:`glimpse3d.gateway.tenants`."""
        check_tenant(tenant)
        keys_file = self._config.auth_api_keys_file if delete_api_keys else None
        if delete_api_keys and keys_file is None:
            raise FailedPrecondition("this gateway has no API keys file (auth_api_keys_file) to revoke keys in",
                                     field="delete_api_keys")
        active = await self._db(active_job_ids, self._store, tenant)
        for job_id in active:
            try:
                await self.cancel_job(tenant, job_name(job_id))
            except NotFound:  # deleted meanwhile
                pass
        result = await self._db(delete_tenant_data, self._store, self._artifacts, tenant, cancel=True,
                                keys_file=keys_file)
        return dataclasses.replace(result, cancelled=sorted({*active, *result.cancelled}))

    async def enhance(
        self,
        tenant: str,
        name: str,
        *,
        camera: Camera | None = None,
        prompt: str = "",
        strength: float = 0.0,
        seed: int = 0,
        request_id: str = "",
    ) -> Job:
        """Start (or queue) one enhancement round; ``camera`` None means "auto"."""
        check_tenant(tenant)
        job_id = parse_job_name(name)
        spec = RoundSpec(camera=camera, prompt=prompt, strength=strength, seed=seed, request_id=request_id)
        self._check_taking_work()
        if camera is not None:
            await self._check_view(tenant, job_id, camera)
        return await self._request_round(tenant, job_id, spec)

    async def add_photo(self, tenant: str, name: str, photo: ExtraPhoto, *, request_id: str = "") -> Job:
        """Queue an extra photo of the job's object as a round: posed and fused, it adds a version."""
        check_tenant(tenant)
        job_id = parse_job_name(name)
        self._check_taking_work()
        spec = await self._photo_round(photo, "photo", request_id)
        return await self._request_round(tenant, job_id, spec)

    async def restore_version(self, tenant: str, name: str, *, request_id: str = "") -> Job:
        """Queue going back to an earlier version (``jobs/{id}/versions/{n}``): a round that adds a copy of
        it as the latest version, from which later rounds go on. NOT_FOUND for a version that does not exist."""
        check_tenant(tenant)
        job_id, number = parse_export_name(name)
        if number is None:
            raise InvalidInput(f"name must name a version, 'jobs/{{job_id}}/versions/{{n}}', got {shorten(name)}",
                               field="name")
        spec = RoundSpec(restore_version=number, request_id=request_id)
        self._check_taking_work()
        job = await self._db(self._store.get_job, tenant, job_id)
        self._pick_version(job, number)  # NOT_FOUND when it does not exist
        return await self._request_round(tenant, job_id, spec)

    async def _photo_round(self, photo: ExtraPhoto, field: str, request_id: str = "") -> RoundSpec:
        """The round of an extra photo: its image checked (InvalidInput naming ``field``) and stored."""
        # the hint is checked first (cheap), then the image is decoded once to refuse a bad one now
        RoundSpec(photo_field=field, hint_azimuth_deg=photo.azimuth_deg, hint_elevation_deg=photo.elevation_deg)
        if not photo.image_data:
            raise InvalidInput(f"{field}.image_data is required (PNG or JPEG bytes)", field=f"{field}.image_data")
        await self._db(decode_image, photo.image_data, field=f"{field}.image_data")
        ref = await self._store_image(photo.image_data)
        return RoundSpec(photo=ref, photo_field=field, hint_azimuth_deg=photo.azimuth_deg,
                         hint_elevation_deg=photo.elevation_deg, request_id=request_id)

    async def _request_round(self, tenant: str, job_id: str, spec: RoundSpec) -> Job:
        room = self._queue.has_room(tenant, job_id)
        with self._queue.reserve(tenant, job_id) if room else nullcontext() as slot:
            job, outcome = await self._db(
                self._store.request_round, tenant, job_id, spec,
                max_pending=self._config.max_pending_rounds, can_start=slot is not None,
            )
            if outcome is RoundOutcome.STARTED and slot is not None:
                self._enqueue(job_id, slot)
        if outcome is RoundOutcome.NO_CAPACITY:
            raise self._queue.overloaded(tenant, job_id)
        if outcome is not RoundOutcome.DUPLICATE:
            self._events.publish(job, "state")
            logger.info("enhancement round %s", outcome.value, extra={"job": job.name})
        return job

    async def export(self, tenant: str, name: str, fmt: str) -> ExportResult:
        """Export a version ("jobs/{id}" = the latest) as ``fmt`` and pre-sign a download URL."""
        check_tenant(tenant)
        spec = get_format(fmt)
        job_id, number = parse_export_name(name)
        job = await self._db(self._store.get_job, tenant, job_id)
        version = self._pick_version(job, number)
        if spec.name == DEFAULT_FORMAT:  # versions are stored as 3DGS .ply already
            stored = await self._db(self._artifacts.stat, version.splat)
            ref = ArtifactRef(stored.uri, stored.sha256, stored.size, spec.media_type)
        else:
            ref = await self._exported(tenant, version.splat, spec)
        expiry = self._config.presign_expiry
        url = await self._db(self._artifacts.presign, ref, expiry)
        return ExportResult(ref, url, datetime.now(UTC) + expiry, version.name)

    # ---- helpers --------------------------------------------------------------------------------

    async def _check_view(self, tenant: str, job_id: str, camera: Camera) -> None:
        """InvalidInput naming ``view`` for a camera a round cannot use: degenerate intrinsics, or one
        that sees none of the latest version's splat (checked when the job has a version)."""
        check_view_camera(camera, "view")
        latest = (await self._db(self._store.get_job, tenant, job_id)).latest_version
        if latest is not None:
            splat = await self._db(lambda: read_ply(self._artifacts.get(latest.splat)))
            check_sees(camera, splat.means, "view")

    async def _store_image(self, image: bytes | ArtifactRef) -> ArtifactRef:
        """Validate the input photo and return its ref in the artifact store."""
        if isinstance(image, ArtifactRef):
            try:
                data = await self._db(self._artifacts.get, image, max_bytes=MAX_IMAGE_BYTES)
            except NotFound:
                raise NotFound(f"image artifact {image.uri} not found", field="image.uri") from None
            except InvalidInput as err:
                raise InvalidInput(f"image: {err.message}", field="image") from None
            await self._db(decode_image, data, field="image")
            return image
        await self._db(decode_image, image, field="image_data")
        return await self._db(self._artifacts.put, bytes(image), _image_media_type(bytes(image)))

    async def _exported(self, tenant: str, splat: ArtifactRef, spec: SplatFormat) -> ArtifactRef:
        """The version ``splat`` as ``spec``, made once per (tenant, splat sha256, format) while this replica
        remembers it (an LRU of EXPORT_CACHE_SIZE refs; a ref whose artifact is gone, e.g. after a tenant
        deletion, is made again). Concurrent requests for one key share one export. Export-only (mesh)
        formats are made by the reconstruction service (the pipeline's ``export_mesh``); the splat formats
        here, on threads of their own (not the DB threads that every request needs)."""
        key = (tenant, splat.sha256, spec.name)
        cached = self._exports.get(key)
        if cached is not None and await self._db(self._artifacts.exists, cached):
            self._exports.move_to_end(key)
            self._count_export(spec, "cache")
            return cached
        task = self._exporting.get(key)
        if task is None:
            task = asyncio.create_task(self._export_now(splat, spec), name=f"gateway-export-{spec.name}")
            self._exporting[key] = task
            task.add_done_callback(lambda done: self._export_done(key, done))
        # A caller that goes away (cancelled) leaves the export running for the others and the cache.
        return await asyncio.shield(task)

    async def _export_now(self, splat: ArtifactRef, spec: SplatFormat) -> ArtifactRef:
        if spec.export_only:
            export_mesh = getattr(self._pipeline, "export_mesh", None)
            if export_mesh is None:
                raise FailedPrecondition(f"this gateway's pipeline cannot make {spec.name!r} meshes", field="format")
            ref: ArtifactRef = await export_mesh(splat, spec.name)
            self._count_export(spec, "service")
            return ref
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the caller's tenant scope, in the thread
        ref = await loop.run_in_executor(self._export_pool, lambda: context.run(self._export_bytes, splat, spec))
        self._count_export(spec, "gateway")
        return ref

    def _export_done(self, key: tuple[str, str, str], task: asyncio.Task[ArtifactRef]) -> None:
        if self._exporting.get(key) is task:
            del self._exporting[key]
        if task.cancelled() or task.exception() is not None:
            return
        self._exports[key] = task.result()
        self._exports.move_to_end(key)
        while len(self._exports) > EXPORT_CACHE_SIZE:
            self._exports.popitem(last=False)

    def _count_export(self, spec: SplatFormat, source: str) -> None:
        self.export_counts[source] += 1
        self._export_metric.labels(spec.name, source).inc()

    def _export_bytes(self, splat_ref: ArtifactRef, spec: SplatFormat) -> ArtifactRef:
        splat = read_ply(self._artifacts.get(splat_ref))
        return self._artifacts.put(spec.writer(splat), spec.media_type)

    @staticmethod
    def _pick_version(job: Job, number: int | None) -> Version:
        if number is None:
            if job.latest_version is None:
                raise FailedPrecondition(f"job {job.name} has no version yet; export it once it has one",
                                         field="name")
            return job.latest_version
        if number > len(job.versions):
            raise NotFound(f"version {version_name(job.id, number)} not found", field="name")
        return job.versions[number - 1]

    def _check_taking_work(self) -> None:
        if self._draining or self._closing:
            raise Unavailable("this gateway is shutting down; retry the request (another replica takes it)")

    @staticmethod
    def _cancel_error() -> JobError:
        return JobError.from_exception(Cancelled(_CANCELLED_BY_CALLER))

    async def _cancel_task(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    # ---- workers --------------------------------------------------------------------------------

    def _enqueue(self, job_id: str, slot: Slot | None = None, tenant: str = "") -> None:
        """Queue work on a job this replica holds (its lease is renewed while it waits)."""
        self._queued[job_id] += 1
        if slot is None:
            self._queue.put_accepted(job_id, tenant)
        else:
            slot.enqueue(job_id)

    def _held(self) -> set[str]:
        """The jobs this replica holds: waiting in its queue or running on its workers."""
        return {job_id for job_id, n in self._queued.items() if n > 0} | set(self._tasks)

    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                while (previous := self._tasks.get(job_id)) is not None:
                    await asyncio.wait({previous})  # one task per job at a time
                self._released.discard(job_id)
                task = asyncio.create_task(self._run_job(job_id), name=f"job-{job_id}")
                self._tasks[job_id] = task
                task.add_done_callback(self._forget_task)
            finally:
                self._queued[job_id] -= 1
                if self._queued[job_id] <= 0:
                    del self._queued[job_id]
            await asyncio.wait({task})

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        job_id = task.get_name().removeprefix("job-")
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
        if job_id not in self._tasks and self._queued[job_id] <= 0:
            self._queued.pop(job_id, None)
            self._queue.finished(job_id)  # frees its place in the tenant's quota
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("job task crashed", exc_info=task.exception(), extra={"job_id": job_id})

    async def _run_job(self, job_id: str) -> None:
        try:
            await self._drive(job_id)
        except asyncio.CancelledError:
            if self._closing:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if job_id in self._released:  # the job was cancelled or taken over elsewhere: write nothing
                self._released.discard(job_id)
                if (job := await self._db(self._store.load_job, job_id)) is not None:
                    self._events.publish(job, "state")
                return
            await self._finish(job_id, self._cancel_error(), cancelled=True)
        except DatabaseUnavailable as exc:  # its lease lapses and a replica resumes it once the database is back
            logger.warning("job paused, the job database is unavailable: %s", exc.message, extra={"job_id": job_id})
        except Exception as exc:  # the pipeline's (or the store's) failure is the job's failure
            if self._closing:  # e.g. a channel closed under it: resume on the next start instead
                logger.warning("job interrupted by shutdown: %s", exc, extra={"job_id": job_id})
                return
            await self._finish(job_id, JobError.from_exception(exc), cancelled=False)

    async def _finish(self, job_id: str, error: JobError, *, cancelled: bool) -> None:
        job = await self._db(self._store.finish_with_error, job_id, error, cancelled=cancelled, held_only=True)
        self._events.publish(job, "state")
        logger.info("job stopped: %s", error.message,
                    extra={"job": job.name, "state": job.state.value, "reason": error.reason})

    async def _drive(self, job_id: str) -> None:
        """Run what the job needs: the initial run if it has no version, then its queued rounds."""
        job = await self._db(self._store.start_run, job_id)
        if job is None:
            return
        self._events.publish(job, "state")
        plan = _RunPlan(job)
        report = self._reporter(job_id, plan)
        if not job.versions:
            result = await self._pipeline.run_initial(job, report)
            seeds = ((job.options.seed + i) & MAX_SEED for i in range(job.options.enhance_rounds))
            autos = [RoundSpec(prompt=job.options.prompt, seed=seed) for seed in seeds]
            job = await self._db(self._store.add_version, job_id, result, completes_round=False, then_rounds=autos)
            plan.done += 1
            self._events.publish(job, "version")
        while True:
            if self._draining and job.pending_rounds:  # the version in hand is stored; the next holder runs the rest
                self._handed_back.add(job_id)
                logger.info("drain: leaving the job's next rounds to the next holder", extra={"job_id": job_id})
                return
            job, spec = await self._db(self._store.next_round_or_succeed, job_id)
            if spec is None:
                self._events.publish(job, "state")
                return
            plan.start_piece(len(job.pending_rounds))
            try:
                if spec.restore_version is not None:  # no model work: a copy of an earlier version
                    result = restored(job, spec.restore_version)
                else:
                    result = await self._pipeline.run_round(job, spec, report)
            except RoundRejected as err:  # no version; the rounds behind it still run
                job = await self._db(self._store.skip_round, job_id, JobError.from_exception(err))
                plan.done += 1
                self._events.publish(job, "state")
                logger.info("round rejected: %s", err.message, extra={"job": job.name})
                continue
            job = await self._db(self._store.add_version, job_id, result, completes_round=True)
            plan.done += 1
            self._events.publish(job, "version")

    # ---- leases ---------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """The lease heartbeat: renew every ``lease_s / 3``; adopt orphaned jobs then and whenever a
        worker frees up. A database outage is logged and retried on the next beat."""
        loop = asyncio.get_running_loop()
        interval = self._store.lease_s / 3
        next_renewal = loop.time() + interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_renewal - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + interval
                    await self._renew()
                await self._adopt()
            except DatabaseUnavailable as err:
                logger.warning("lease heartbeat failed: %s", err.message)
            except Exception:
                logger.exception("lease heartbeat failed")

    async def _renew(self) -> None:
        """Renew the leases of the jobs this replica holds; stop the work on those it lost."""
        tasks = dict(self._tasks)
        held = self._held() | self._handed_back
        if not held:
            return
        kept = await self._db(self._store.renew_leases, held)
        for job_id in held - kept:
            task = tasks.get(job_id)
            if task is not None and not task.done() and self._tasks.get(job_id) is task:
                logger.info("job no longer held by this replica (cancelled or taken over); stopping its work",
                            extra={"job_id": job_id})
                self._released.add(job_id)
                task.cancel()

    async def _adopt(self) -> None:
        """Queue jobs no live replica holds, as many as this replica has idle workers."""
        idle = self._config.workers - len(self._tasks) - self._queue.qsize()
        if idle <= 0 or self._closing or self._draining:
            return
        jobs = await self._db(self._store.claim_orphans, idle)
        held = self._held()
        for job in jobs:
            if job.id not in held:
                self._enqueue(job.id, tenant=job.tenant)
                self._events.publish(job, "state")
                logger.info("resuming job", extra={"job": job.name, "state": job.state.value})

    def _reporter(self, job_id: str, plan: _RunPlan) -> ProgressReporter:
        async def report(stage: str, fraction: float, message: str = "") -> None:
            progress = Progress(str(stage), plan.overall(float(fraction)), str(message))
            job = await self._db(self._store.update_progress, job_id, progress)
            if job is not None:
                self._events.publish(job, "progress")

        return report


def _change_kind(old: Job, new: Job) -> str:
    """The event kind of a change read back from the database."""
    if len(new.versions) > len(old.versions):
        return "version"
    return "state" if new.state is not old.state else "progress"
