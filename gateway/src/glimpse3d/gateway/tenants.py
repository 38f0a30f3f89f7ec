"""A tenant's data as a whole: deleting it (the admin command line and the tenant's own
``DeleteTenantData`` call share :func:`delete_tenant_data`) and moving the artifacts written before
tenancy under a tenant (:func:`migrate_legacy_artifacts`).

Deleting cancels the tenant's queued and running jobs (when asked: the gateway's call always asks, the
command line with ``--cancel-jobs``), deletes its jobs with their versions and queued rounds in one
transaction, then every artifact under the tenant, then (when asked) its API keys. Jobs go before
artifacts, so that no job is left pointing at a deleted artifact; running it again finishes an
interrupted deletion.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from glimpse3d.core.artifacts import ArtifactStore, BaseArtifactStore
from glimpse3d.core.errors import Cancelled, FailedPrecondition, InvalidInput
from glimpse3d.gateway.jobs import JobError, check_tenant
from glimpse3d.gateway.store import JobStore

logger = logging.getLogger(__name__)

CANCELLED_FOR_DELETION = "cancelled: the tenant's data is being deleted"
# An absolute URI inside the JSON of a job record (ends at a quote, a space or a closing bracket).
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>\]\}]+")


@dataclass(frozen=True)
class TenantDeletion:
    jobs: list[str]  # ids of the deleted jobs
    artifacts: int  # blobs removed from the artifact store
    versions: int = 0
    cancelled: list[str] = field(default_factory=list)  # ids of the jobs cancelled first
    api_keys: int = 0  # API keys revoked


def active_job_ids(jobs: JobStore, tenant: str) -> list[str]:
    """The ids of ``tenant``'s queued and running jobs."""
    found, token = [], ""
    while True:
        page, token = jobs.list_jobs(tenant, 100, token)
        found += [job.id for job in page if not job.done]
        if not token:
            return found


def cancel_jobs(jobs: JobStore, job_ids: list[str]) -> list[str]:
    """Mark the jobs cancelled in the store (a replica working on one stops when it sees it); those that
    were still active."""
    error = JobError.from_exception(Cancelled(CANCELLED_FOR_DELETION))
    cancelled = []
    for job_id in job_ids:
        before = jobs.load_job(job_id)
        if before is not None and not before.done:
            jobs.finish_with_error(job_id, error, cancelled=True)
            cancelled.append(job_id)
    return cancelled


def check_deletion_confirmed(tenant: str, confirm: str) -> None:
    """InvalidInput naming ``confirm`` unless it repeats the tenant whose data is to be deleted."""
    if confirm != tenant:
        raise InvalidInput(f"this deletes every job and artifact of tenant {tenant!r}: set confirm to the tenant "
                           f"name, {tenant!r}, to go ahead", field="confirm")


def delete_tenant_data(jobs: JobStore, artifacts: ArtifactStore, tenant: str, *, cancel: bool = False,
                       keys_file: Path | None = None) -> TenantDeletion:
    """Delete ``tenant``'s jobs, versions and queued rounds, then every artifact under it (its photos,
    splats, exports and intermediates), then its API keys in ``keys_file`` (None: they stay). Its queued
    or running jobs are cancelled first with ``cancel``; without it they are FailedPrecondition (naming
    ``tenant``) and nothing is deleted."""
    from glimpse3d.gateway.auth import check_keys_writable, delete_keys  # auth's command line imports this module

    check_tenant(tenant)
    if keys_file is not None:
        check_keys_writable(keys_file)
    cancelled = cancel_jobs(jobs, active_job_ids(jobs, tenant)) if cancel else []
    deleted, versions = jobs.delete_tenant_jobs(tenant)
    removed = artifacts.delete_tenant(tenant)
    keys = delete_keys(keys_file, tenant) if keys_file is not None else 0
    logger.warning("deleted the data of tenant %s: %d jobs (%d cancelled first), %d versions, %d artifacts, "
                   "%d API keys", tenant, len(deleted), len(cancelled), versions, removed, keys)
    return TenantDeletion(deleted, removed, versions, cancelled, keys)


# ---- artifacts written before tenancy -------------------------------------------------------------


@dataclass(frozen=True)
class LegacyMigration:
    found: int  # artifacts without a tenant at the start
    copied: int  # copied under the tenant by this run (the others had been copied before)
    records: int  # job and version rows whose references were rewritten (or would be, in a dry run)
    deleted: int  # originals removed
    dry_run: bool


def migrate_legacy_artifacts(jobs: JobStore, artifacts: ArtifactStore, tenant: str, *,
                             dry_run: bool = False) -> LegacyMigration:
    """Move every artifact without a tenant (``sha256/...``, ``tmp/sha256/...``; read as the ``default``
    tenant's) under ``tenants/<tenant>/``: copy each (verified; one already copied is skipped), rewrite
    the references in every job record to the new URIs, then delete the originals. Each step is
    idempotent, so an interrupted run is finished by running it again. ``dry_run``: count, change nothing.
    Run it while no gateway writes jobs (a job saved from memory could bring an old reference back;
    running it again fixes that)."""
    check_tenant(tenant)
    if not isinstance(artifacts, BaseArtifactStore):
        raise FailedPrecondition(f"{artifacts!r} cannot list its artifacts", field="artifacts_url")
    store = artifacts
    keys = store.legacy_keys()

    def rewrite(text: str) -> str:
        return _URI_RE.sub(lambda m: store.legacy_uri_target(m.group(0), tenant) or m.group(0), text)

    if dry_run:
        pending = sum(store.copy_legacy_key(key, tenant, dry_run=True) for key in keys)
        records = jobs.rewrite_artifact_uris(rewrite, dry_run=True)
        return LegacyMigration(len(keys), pending, records, len(keys), dry_run=True)
    copied = sum(store.copy_legacy_key(key, tenant) for key in keys)
    records = jobs.rewrite_artifact_uris(rewrite)
    for key in keys:
        store.delete_legacy_key(key, tenant)
    logger.warning("moved %d artifacts without a tenant under tenant %s (%d copied now), rewrote %d job records",
                   len(keys), tenant, copied, records)
    return LegacyMigration(len(keys), copied, records, len(keys), dry_run=False)

