"""The gateway's application layer, shared by the gRPC servicer and the HTTP facade.

:class:`GatewayApp` validates requests, persists jobs in the :class:`~glimpse3d.gateway.store.JobStore`,
queues work on a bounded :class:`~glimpse3d.gateway.workqueue.WorkQueue` served by ``workers``
tasks, and delegates the model work to an injected :class:`Pipeline`. Domain errors
(:mod:`glimpse3d.core.errors`) are raised as they are; the RPC layer maps them to status codes.

Semantics decided here:

- CreateJob returns the QUEUED job at once. A repeated ``request_id`` (same tenant) returns the
  job it created first, whatever the rest of the request says (AIP-155), even when the queue is
  full. A new job is refused with Overloaded when ``queue_size`` jobs already wait.
- A job runs ``Pipeline.run_initial`` (version 1), then ``options.enhance_rounds`` automatic
  rounds (target "auto", the job's prompt, seeds ``seed``, ``seed + 1``, ...), then SUCCEEDED.
- Enhance on a SUCCEEDED job takes a queue slot (Overloaded when full) and makes it RUNNING. On a
  RUNNING job that already has a version the round is *queued* behind the running one (at most
  ``max_pending_rounds`` per job, then Overloaded) and runs on the same worker. A job with no
  version yet, or a FAILED or CANCELLED one, answers FailedPrecondition. A repeated
  ``request_id`` returns the job without starting another round.
- A failing or cancelled *round* returns the job to SUCCEEDED with ``error`` set (its versions
  stay usable) and drops the rounds queued behind it; only the initial run can make a job FAILED
  or CANCELLED. Cancelling cancels the asyncio task running the job, which cancels the
  downstream call in flight. Cancelling a done job is a no-op.
- Progress fractions are of the whole run the worker is doing: the initial run and its automatic
  rounds, or the rounds queued by Enhance; a pipeline reports the fraction of its own piece.
- On start the app resumes every QUEUED and RUNNING job of the store (a restarted gateway); a
  RUNNING job resumes from its last version. Closing the app cancels running work without
  touching the stored state, so the next start resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, get_args

from glimpse3d.core.artifacts import ArtifactRef, ArtifactStore
from glimpse3d.core.cameras import Camera
from glimpse3d.core.errors import Cancelled, FailedPrecondition, InvalidInput, NotFound
from glimpse3d.core.formats import read_ply
from glimpse3d.core.images import MAX_IMAGE_BYTES, decode_image
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.events import EventHub, JobEvent
from glimpse3d.gateway.exporters import MEDIA_TYPES, ExportFormat, export_splat
from glimpse3d.gateway.models import (
    MAX_DISPLAY_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_SEED,
    Job,
    JobError,
    JobOptions,
    Progress,
    RoundSpec,
    Version,
    VersionResult,
    check_tenant,
    check_text,
    parse_export_name,
    parse_job_name,
    version_name,
)
from glimpse3d.gateway.store import JobStore, RoundOutcome
from glimpse3d.gateway.workqueue import WorkQueue

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


@dataclass(frozen=True)
class ExportResult:
    artifact: ArtifactRef
    download_url: str
    expire_time: datetime
    version: str  # resource name of the exported version


_FORMATS: tuple[str, ...] = get_args(ExportFormat)
_CANCELLED_BY_CALLER = "cancelled by the caller"


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
        self._queue = WorkQueue(config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    @property
    def events(self) -> EventHub:
        return self._events

    async def __aenter__(self) -> GatewayApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Queue the jobs a previous process left QUEUED or RUNNING, then start the workers."""
        recovered = await self._db(self._store.recoverable_jobs)
        for job in recovered:
            self._queue.put_accepted(job.id)
        if recovered:
            logger.info("resuming %d interrupted jobs", len(recovered))
        self._workers = [
            asyncio.create_task(self._worker(), name=f"gateway-worker-{i}") for i in range(self._config.workers)
        ]

    async def close(self) -> None:
        """Stop the workers and cancel running jobs; their stored state is kept for the next start."""
        self._closing = True
        pending = [*self._workers, *self._tasks.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._workers.clear()

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
    ) -> Job:
        """Validate and persist a job, queue it and return it QUEUED (see the module docstring)."""
        check_tenant(tenant)
        check_text(request_id, MAX_REQUEST_ID_CHARS, "request_id")
        check_text(display_name, MAX_DISPLAY_NAME_CHARS, "display_name")
        options = options or JobOptions()
        if request_id and (existing := await self._db(self._store.find_by_request_id, tenant, request_id)):
            return existing
        with self._queue.reserve() as slot:
            input_image = await self._store_image(image)
            job, created = await self._db(
                self._store.create_job, tenant=tenant, options=options, input_image=input_image,
                request_id=request_id, display_name=display_name,
            )
            if created:
                slot.enqueue(job.id)
                logger.info("job created", extra={"job": job.name, "tenant": tenant})
        return job

    async def get_job(self, tenant: str, name: str) -> Job:
        check_tenant(tenant)
        return await self._db(self._store.get_job, tenant, parse_job_name(name))

    async def list_jobs(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[Job], str]:
        """One page of the tenant's jobs, newest first, and the next page token ("" on the last)."""
        check_tenant(tenant)
        return await self._db(self._store.list_jobs, tenant, page_size, page_token)

    async def watch_job(self, tenant: str, name: str) -> AsyncIterator[JobEvent]:
        """The job's current snapshot, then every change, until the job is done. Closing the
        iterator (or cancelling its consumer) unsubscribes."""
        check_tenant(tenant)
        job_id = parse_job_name(name)
        with self._events.subscribe(job_id) as queue:
            job = await self._db(self._store.get_job, tenant, job_id)
            yield JobEvent(job, "snapshot")
            revision = job.revision
            while not job.done:
                event = await queue.get()
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
        with self._queue.reserve() if self._queue.has_room() else nullcontext() as slot:
            job, outcome = await self._db(
                self._store.request_round, tenant, job_id, spec,
                max_pending=self._config.max_pending_rounds, can_start=slot is not None,
            )
            if outcome is RoundOutcome.STARTED and slot is not None:
                slot.enqueue(job_id)
        if outcome is RoundOutcome.NO_CAPACITY:
            raise self._queue.overloaded()
        if outcome is not RoundOutcome.DUPLICATE:
            self._events.publish(job, "state")
            logger.info("enhancement round %s", outcome.value, extra={"job": job.name})
        return job

    async def export(self, tenant: str, name: str, fmt: str) -> ExportResult:
        """Export a version ("jobs/{id}" = the latest) as ``fmt`` and pre-sign a download URL."""
        check_tenant(tenant)
        if fmt not in _FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(_FORMATS)}; got {fmt!r}", field="format")
        job_id, number = parse_export_name(name)
        job = await self._db(self._store.get_job, tenant, job_id)
        version = self._pick_version(job, number)
        if fmt == "ply":  # versions are stored as 3DGS .ply already
            stored = await self._db(self._artifacts.stat, version.splat)
            ref = ArtifactRef(stored.uri, stored.sha256, stored.size, MEDIA_TYPES["ply"])
        else:
            ref = await self._db(self._export_bytes, version.splat, fmt)
        expiry = self._config.presign_expiry
        url = await self._db(self._artifacts.presign, ref, expiry)
        return ExportResult(ref, url, datetime.now(UTC) + expiry, version.name)

    # ---- helpers --------------------------------------------------------------------------------

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

    def _export_bytes(self, splat_ref: ArtifactRef, fmt: ExportFormat) -> ArtifactRef:
        splat = read_ply(self._artifacts.get(splat_ref))
        data, media_type, _ = export_splat(splat, fmt)
        return self._artifacts.put(data, media_type)

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

    @staticmethod
    def _cancel_error() -> JobError:
        return JobError.from_exception(Cancelled(_CANCELLED_BY_CALLER))

    async def _cancel_task(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    # ---- workers --------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            while (previous := self._tasks.get(job_id)) is not None:
                await asyncio.wait({previous})  # one task per job at a time
            task = asyncio.create_task(self._run_job(job_id), name=f"job-{job_id}")
            self._tasks[job_id] = task
            task.add_done_callback(self._forget_task)
            await asyncio.wait({task})

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        job_id = task.get_name().removeprefix("job-")
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
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
            await self._finish(job_id, self._cancel_error(), cancelled=True)
        except Exception as exc:  # the pipeline's (or the store's) failure is the job's failure
            if self._closing:  # e.g. a channel closed under it: resume on the next start instead
                logger.warning("job interrupted by shutdown: %s", exc, extra={"job_id": job_id})
                return
            await self._finish(job_id, JobError.from_exception(exc), cancelled=False)

    async def _finish(self, job_id: str, error: JobError, *, cancelled: bool) -> None:
        job = await self._db(self._store.finish_with_error, job_id, error, cancelled=cancelled)
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
            job, spec = await self._db(self._store.next_round_or_succeed, job_id)
            if spec is None:
                self._events.publish(job, "state")
                return
            plan.start_piece(len(job.pending_rounds))
            result = await self._pipeline.run_round(job, spec, report)
            job = await self._db(self._store.add_version, job_id, result, completes_round=True)
            plan.done += 1
            self._events.publish(job, "version")

    def _reporter(self, job_id: str, plan: _RunPlan) -> ProgressReporter:
        async def report(stage: str, fraction: float, message: str = "") -> None:
            progress = Progress(str(stage), plan.overall(float(fraction)), str(message))
            job = await self._db(self._store.update_progress, job_id, progress)
            if job is not None:
                self._events.publish(job, "progress")

        return report
