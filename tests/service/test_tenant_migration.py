"""Moving the artifacts written before tenancy (keys ``sha256/...``, read as tenant ``default``) under
``tenants/<tenant>/`` (glimpse3d.gateway.tenants.migrate_legacy_artifacts and ``python -m
glimpse3d.gateway.auth migrate-artifacts``), on the file store and S3 (moto) with a SQLite job store:
a dry run counts and changes nothing; the run copies, rewrites the job records' references (store URIs
and the file store's old ``file://`` form), deletes the originals, leaves other tenants' data alone,
and is idempotent and resumable. Also: the admin ``delete-tenant`` revokes the tenant's API keys.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (registers the s3_server fixture)
from test_gateway_app import png

from glimpse3d.core.artifacts import (
    ArtifactRef,
    ArtifactStore,
    BaseArtifactStore,
    FileArtifactStore,
    S3ArtifactStore,
    tenant_of_key,
    tenant_scope,
)
from glimpse3d.core.errors import FailedPrecondition, PermissionDenied
from glimpse3d.gateway import auth as auth_module
from glimpse3d.gateway.auth import create_key, read_keys_file
from glimpse3d.gateway.jobs import JobOptions, VersionResult
from glimpse3d.gateway.store import JobStore
from glimpse3d.gateway.tenants import delete_tenant_data, migrate_legacy_artifacts

PLY = "application/x-glimpse3d-splat+ply"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BaseArtifactStore:
    if request.param == "file":
        return FileArtifactStore(tmp_path / "artifacts")
    server: S3Server = request.getfixturevalue("s3_server")
    return S3ArtifactStore(server.endpoint, server.access_key, server.secret_key, f"t-{uuid.uuid4().hex[:16]}",
                           prefix="glimpse", region=server.region)


class Legacy:
    """Jobs of ``default`` referring to artifacts stored without a tenant, and one job of ``acme``."""

    def __init__(self, jobs: JobStore, store: ArtifactStore) -> None:
        self.photo = store.put(png(1), "image/png")  # outside a tenant scope: the legacy layout
        self.splat = store.put(b"a splat", PLY)
        self.confidence = store.put(b"confidence", "application/x-npy")
        self.temporary = store.put(b"an intermediate", "image/png", temporary=True)
        job, _ = jobs.create_job(tenant="default", options=JobOptions(), input_image=self.photo)
        jobs.start_run(job.id)
        jobs.add_version(job.id, VersionResult(splat=self.splat, confidence=self.confidence), completes_round=False)
        jobs.next_round_or_succeed(job.id)
        self.job_id = job.id
        self.old_file_uri = None
        if isinstance(store, FileArtifactStore):  # the file store's references of old: file:///<root>/<key>
            path = store.root / self.photo.uri.split(":///", 1)[1]
            self.old_file_uri = path.as_uri()
            old = ArtifactRef(self.old_file_uri, self.photo.sha256, self.photo.size, self.photo.media_type)
            self.file_job_id = jobs.create_job(tenant="default", options=JobOptions(), input_image=old)[0].id
        with tenant_scope("acme"):
            self.acme_photo = store.put(png(2), "image/png")
        self.acme_job_id = jobs.create_job(tenant="acme", options=JobOptions(), input_image=self.acme_photo)[0].id
        self.records = 2 + (self.old_file_uri is not None)  # rows referring to legacy keys: 2 jobs (3), 1 version


def snapshot(jobs: JobStore) -> str:
    return json.dumps([[repr(job) for job in jobs.list_jobs(tenant)[0]] for tenant in ("default", "acme")])


def test_legacy_artifacts_move_under_the_tenant(tmp_path: Path, store: BaseArtifactStore) -> None:
    jobs = JobStore(tmp_path / "jobs.sqlite3")
    try:
        _check_migration(jobs, store)
    finally:
        jobs.close()


def test_legacy_artifacts_move_on_postgresql(postgres: Any, tmp_path: Path) -> None:
    """The same with a PostgreSQL job store (the throwaway server of tests/conftest.py)."""
    from glimpse3d.gateway.store.postgres import PostgresDatabase

    jobs = JobStore(PostgresDatabase(postgres.url(postgres.create_database()), pool_size=2))
    try:
        _check_migration(jobs, FileArtifactStore(tmp_path / "artifacts"))
    finally:
        jobs.close()


def _check_migration(jobs: JobStore, store: BaseArtifactStore) -> None:
    legacy = Legacy(jobs, store)
    assert len(store.legacy_keys()) == 4 and all(tenant_of_key(k) == "default" for k in store.legacy_keys())
    before = snapshot(jobs)

    dry = migrate_legacy_artifacts(jobs, store, "default", dry_run=True)
    assert (dry.found, dry.copied, dry.records, dry.dry_run) == (4, 4, legacy.records, True)
    assert snapshot(jobs) == before and len(store.legacy_keys()) == 4  # nothing changed

    # An interrupted run copied one artifact already: the next run copies the rest.
    store.copy_legacy_key(store.legacy_keys()[0], "default")
    with pytest.raises(PermissionDenied), tenant_scope("acme"):  # never from inside a tenant's call
        migrate_legacy_artifacts(jobs, store, "default")
    done = migrate_legacy_artifacts(jobs, store, "default")
    assert (done.found, done.copied, done.records, done.deleted) == (4, 3, legacy.records, 4)
    assert store.legacy_keys() == []

    job = jobs.get_job("default", legacy.job_id)
    refs = [job.input_image, job.versions[0].splat, job.versions[0].confidence]
    assert all(ref is not None and "/tenants/default/sha256/" in ref.uri for ref in refs)
    with tenant_scope("default"):
        assert store.get(job.input_image) == png(1)
        assert store.get(job.versions[0].splat) == b"a splat"
        assert not store.exists(legacy.photo)  # the original is gone
    if legacy.old_file_uri is not None:
        moved = jobs.get_job("default", legacy.file_job_id).input_image
        assert moved.uri == job.input_image.uri and legacy.old_file_uri not in snapshot(jobs)
    acme = jobs.get_job("acme", legacy.acme_job_id)
    assert acme.input_image == legacy.acme_photo  # another tenant's job is left as it was
    with tenant_scope("acme"):
        assert store.get(acme.input_image) == png(2)

    again = migrate_legacy_artifacts(jobs, store, "default")  # idempotent
    assert (again.found, again.copied, again.records, again.deleted) == (0, 0, 0, 0)


def test_an_original_is_not_deleted_before_its_copy_exists(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "artifacts")
    ref = store.put(b"only here", "image/png")
    key = store.legacy_keys()[0]
    with pytest.raises(FailedPrecondition):
        store.delete_legacy_key(key, "default")
    assert store.exists(ref)


def test_migrate_and_delete_tenant_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = FileArtifactStore(tmp_path / "artifacts")
    keys_file = tmp_path / "api-keys.json"
    for tenant in ("default", "default", "acme"):
        create_key(keys_file, tenant, "test")
    for key, value in {"GLIMPSE3D_DB_PATH": str(tmp_path / "jobs.sqlite3"),
                       "GLIMPSE3D_ARTIFACTS_URL": str(store.root),
                       "GLIMPSE3D_AUTH_API_KEYS_FILE": str(keys_file)}.items():
        monkeypatch.setenv(key, value)
    jobs = JobStore(tmp_path / "jobs.sqlite3")
    try:
        legacy = Legacy(jobs, store)
        assert auth_module.main(["migrate-artifacts", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"dry run: 4 artifacts without a tenant would move under tenants/default/ (4 to copy), " \
               f"{legacy.records} job records to rewrite" in out
        assert len(store.legacy_keys()) == 4
        assert auth_module.main(["migrate-artifacts", "--tenant", "default"]) == 0
        assert f"moved 4 artifacts under tenants/default/ (4 copied now), rewrote {legacy.records}" \
               in capsys.readouterr().out
        assert store.legacy_keys() == []

        # delete-tenant: a queued job stops it unless --cancel-jobs; the keys go unless --keep-keys.
        assert auth_module.main(["delete-tenant", "--tenant", "default", "--confirm", "default"]) == 2
        assert "queued or running" in capsys.readouterr().err
        assert auth_module.main(["delete-tenant", "--tenant", "default", "--confirm", "default",
                                 "--cancel-jobs"]) == 0
        out = capsys.readouterr().out
        assert "1 jobs cancelled first, 2 API keys" in out and "versions" in out
        assert [entry.tenant for entry in read_keys_file(keys_file)] == ["acme"]
        assert jobs.list_jobs("default") == ([], "")
        assert auth_module.main(["delete-tenant", "--tenant", "acme", "--confirm", "acme", "--cancel-jobs",
                                 "--keep-keys"]) == 0
        assert "0 API keys" in capsys.readouterr().out
        assert [entry.tenant for entry in read_keys_file(keys_file)] == ["acme"]

        # A keys file that cannot be rewritten is refused before anything is deleted.
        with tenant_scope("acme"):
            photo = store.put(png(3), "image/png")
        jobs.create_job(tenant="acme", options=JobOptions(), input_image=photo)
        toml = tmp_path / "keys.toml"
        toml.write_text('[[keys]]\ntenant = "acme"\nname = "x"\nsha256 = "' + "0" * 64 + '"\n')
        with pytest.raises(FailedPrecondition) as refused:
            delete_tenant_data(jobs, store, "acme", cancel=True, keys_file=toml)
        assert refused.value.field == "auth_api_keys_file"
        assert len(jobs.list_jobs("acme")[0]) == 1 and store.exists(photo.uri)
    finally:
        jobs.close()
