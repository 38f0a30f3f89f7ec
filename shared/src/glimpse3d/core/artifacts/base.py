"""Artifact references, the store contract and the logic every backend shares.

An artifact is an immutable blob addressed by the sha256 of its bytes; services pass
:class:`ArtifactRef` values to each other instead of the bytes. Every backend keys blobs as
``tenants/<tenant>/sha256/<aa>/<hex>`` (``tmp/tenants/...`` for ``put(..., temporary=True)``), so a
bare URI is as good as a ref for reading, and content addressing (dedup) works within a tenant.

Tenant scope: inside :func:`tenant_scope` every operation of every store works for that tenant only
(``put`` writes under its prefix; reading, presigning or deleting another tenant's key is
PermissionDenied, decided from the key alone, before the store is asked, so it tells nothing about
whether the artifact exists). Outside a scope (tools, tests) nothing is checked and ``put`` writes the
legacy layout ``sha256/<aa>/<hex>``: keys without a tenant, stored before tenant scoping, belong to
the ``default`` tenant (:data:`LEGACY_TENANT`).

:class:`BaseArtifactStore` implements the contract once: idempotent ``put``, sha256-verified
reads, idempotent ``delete``, ``presign`` up to 7 days, ``ensure_ready`` at start-up.
See docs/artifacts.md ("The store contract").
"""

from __future__ import annotations

import contextvars
import errno
import functools
import hashlib
import io
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, NamedTuple, ParamSpec, Protocol, TypeVar, runtime_checkable

from glimpse3d.core.errors import (
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unavailable,
    shorten,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
"""Bytes read or written per step when streaming; bounds the memory a transfer needs."""

DEFAULT_PRESIGN_EXPIRY = timedelta(hours=1)
MAX_PRESIGN_EXPIRY = timedelta(days=7)
OCTET_STREAM = "application/octet-stream"
TEMP_KEY_PREFIX = "tmp/"
"""Relative keys of temporary artifacts start with this (``tmp/sha256/<aa>/<hex>``)."""

TENANT_KEY_PREFIX = "tenants/"
"""Keys of a tenant's artifacts start with ``tenants/<tenant>/`` (after ``tmp/`` for temporary ones)."""
LEGACY_TENANT = "default"
"""The tenant of keys without one (stored before tenant scoping, when every call was ``default``'s)."""
TENANT_METADATA_KEY = "x-glimpse3d-tenant"
"""The gRPC metadata key naming the tenant a call works for (gateway -> services)."""

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
_TENANT_RE = re.compile(_TENANT_PATTERN)
_KEY_RE = re.compile(rf"(?:tmp/)?(?:tenants/({_TENANT_PATTERN})/)?sha256/([0-9a-f]{{2}})/([0-9a-f]{{64}})")
_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("glimpse3d_artifact_tenant", default=None)
# RFC 6838 restricted-name for type and subtype; parameters (";charset=…") are not accepted.
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")

P = ParamSpec("P")
R = TypeVar("R")


class ArtifactStoreUnavailable(Unavailable):
    """The artifact store cannot be used right now (S3 unreachable, disk full, read-only or failing
    filesystem); the caller may retry later. Never the caller's fault, never a bug."""

    reason = "ARTIFACT_STORE_UNAVAILABLE"

    def __init__(self, message: str, *, field: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, field=field, metadata={"store": "artifacts", **(metadata or {})})


def storage_unavailable(err: OSError, action: str) -> ArtifactStoreUnavailable:
    """The error to raise for an ``OSError`` of the store's own storage while it did ``action``; the
    message names the condition (``ENOSPC``: disk full, ...), not the server's paths (those are logged)."""
    code = errno.errorcode.get(err.errno, "") if isinstance(err.errno, int) else ""
    logger.warning("artifact store cannot %s: %s", action, err)
    what = err.strerror or str(err) or type(err).__name__
    return ArtifactStoreUnavailable(f"artifact store cannot {action}: {what}" + (f" ({code})" if code else ""),
                                    metadata={"store": "artifacts", **({"errno": code} if code else {})})


def _io_boundary(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn an ``OSError`` escaping a public store method into :class:`ArtifactStoreUnavailable`."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except OSError as err:
                raise storage_unavailable(err, action) from err

        return guarded

    return decorate


def validate_sha256(value: object, *, field: str = "sha256") -> str:
    """Return ``value`` if it is 64 lowercase hex characters, else raise InvalidInput."""
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise InvalidInput(f"{field} must be 64 lowercase hex characters, got {shorten(value)}", field=field)
    return value


def validate_media_type(value: object) -> str:
    """Return ``value`` if it looks like ``type/subtype``, else raise InvalidInput."""
    if not isinstance(value, str) or not _MEDIA_TYPE_RE.fullmatch(value):
        raise InvalidInput(
            f"media_type must look like 'type/subtype' (e.g. 'image/png'), got {shorten(value)}",
            field="media_type",
        )
    return value


def check_tenant_name(tenant: object, *, field: str = TENANT_METADATA_KEY) -> str:
    """``tenant`` if it is 1..63 letters, digits, '.', '_' or '-' starting with a letter or digit."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidInput(
            f"{field} must be 1..63 letters, digits, '.', '_' or '-' starting with a letter or digit, "
            f"got {shorten(tenant)}",
            field=field,
        )
    return tenant


def content_key(sha256: str, *, temporary: bool = False, tenant: str | None = None) -> str:
    """The relative, content-addressed key of a blob: ``tenants/<tenant>/sha256/<aa>/<full hex>``
    (``sha256/<aa>/<hex>`` without a tenant: the legacy layout), with ``tmp/`` in front for a
    temporary artifact."""
    validate_sha256(sha256)
    key = f"sha256/{sha256[:2]}/{sha256}"
    if tenant is not None:
        key = f"{TENANT_KEY_PREFIX}{check_tenant_name(tenant, field='tenant')}/{key}"
    return TEMP_KEY_PREFIX + key if temporary else key


def _match_key(key: str) -> re.Match[str]:
    match = _KEY_RE.fullmatch(key)
    if match is None or match.group(3)[:2] != match.group(2):
        raise InvalidInput(
            f"artifact key must look like '[tmp/][tenants/<tenant>/]sha256/<aa>/<64 hex>', got {shorten(key)}",
            field="uri",
        )
    return match


def sha256_of_key(key: str) -> str:
    """Inverse of :func:`content_key` (any kind of key); raises InvalidInput for anything else."""
    return _match_key(key).group(3)


def tenant_of_key(key: str) -> str:
    """The tenant a key belongs to (:data:`LEGACY_TENANT` for a key without one)."""
    return _match_key(key).group(1) or LEGACY_TENANT


def current_tenant() -> str | None:
    """The tenant of the enclosing :func:`tenant_scope` (None outside one)."""
    return _SCOPE.get()


@contextmanager
def tenant_scope(tenant: str) -> Iterator[str]:
    """Work for ``tenant`` inside the block: stores write under its prefix and refuse other tenants'
    keys. Threads started with ``asyncio.to_thread`` and tasks created inside inherit the scope."""
    token = _SCOPE.set(check_tenant_name(tenant, field="tenant"))
    try:
        yield tenant
    finally:
        _SCOPE.reset(token)


def outside_tenant(uri: str, tenant: str, field: str) -> PermissionDenied:
    """The error for a reference to another tenant's artifact: it tells the caller nothing beyond the
    reference it sent (not whether the artifact exists)."""
    return PermissionDenied(f"{field} is not an artifact of tenant {tenant!r}: {shorten(uri)}", field=field)


def is_temporary_key(key: str) -> bool:
    """Whether a relative key (as made by :func:`content_key`) is a temporary artifact's."""
    return key.startswith(TEMP_KEY_PREFIX)


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """Where an artifact lives and what it is. Validated on construction."""

    uri: str
    sha256: str
    size: int
    media_type: str

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or "://" not in self.uri:
            raise InvalidInput(f"uri must be an absolute URI, got {shorten(self.uri)}", field="uri")
        validate_sha256(self.sha256)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidInput(f"size must be a non-negative int, got {shorten(self.size)}", field="size")
        validate_media_type(self.media_type)


RefOrUri = ArtifactRef | str


@runtime_checkable
class ArtifactStore(Protocol):
    """What services program against; see the module docstring for the shared semantics."""

    def put(
        self, data: bytes | BinaryIO, media_type: str, *, size: int | None = None, temporary: bool = False
    ) -> ArtifactRef: ...

    def get(self, ref_or_uri: RefOrUri, *, max_bytes: int | None = None) -> bytes: ...

    def get_to_file(self, ref_or_uri: RefOrUri, path: Path, *, max_bytes: int | None = None) -> ArtifactRef: ...

    def stat(self, ref_or_uri: RefOrUri) -> ArtifactRef: ...

    def exists(self, ref_or_uri: RefOrUri) -> bool: ...

    def delete(self, ref_or_uri: RefOrUri) -> None: ...

    def delete_tenant(self, tenant: str) -> int: ...

    def tenant_of(self, ref_or_uri: RefOrUri) -> str: ...

    def presign(self, ref_or_uri: RefOrUri, expires: timedelta = DEFAULT_PRESIGN_EXPIRY) -> str: ...

    def ensure_ready(self) -> None: ...


class Blob(NamedTuple):
    """An open stored blob, as a backend hands it to :class:`BaseArtifactStore`."""

    size: int
    media_type: str
    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True)
class Spooled:
    """A stream copied to a temporary file, hashed on the way."""

    path: Path
    sha256: str
    size: int


def _copy_hashing(stream: BinaryIO, out: BinaryIO, limit: int | None) -> tuple[str, int]:
    """Copy ``stream`` to ``out`` in chunks; stop after ``limit + 1`` bytes if a limit is given."""
    digest = hashlib.sha256()
    total = 0
    while limit is None or total <= limit:
        want = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit + 1 - total)
        chunk = stream.read(want)
        if not chunk:
            break
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidInput(
                f"data must be bytes or a binary file object; read() returned {type(chunk).__name__}",
                field="data",
            )
        digest.update(chunk)
        out.write(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


@contextmanager
def spool(stream: BinaryIO, directory: Path | None, expected_size: int | None) -> Iterator[Spooled]:
    """Copy ``stream`` to a temporary file in ``directory`` while hashing it; memory stays bounded.

    The file is removed on exit unless the caller moved it away. Raises InvalidInput if
    ``expected_size`` is given and the stream holds a different number of bytes.
    """
    fd, name = tempfile.mkstemp(prefix="spool-", suffix=".part", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            sha256, size = _copy_hashing(stream, out, expected_size)
        if expected_size is not None and size != expected_size:
            shown = f"more than {expected_size}" if size > expected_size else str(size)
            raise InvalidInput(f"size says {expected_size} bytes but the stream held {shown}", field="size")
        yield Spooled(path, sha256, size)
    finally:
        path.unlink(missing_ok=True)


def _check_max_bytes(max_bytes: int | None) -> None:
    if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes < 0):
        raise InvalidInput(f"max_bytes must be >= 0, got {max_bytes!r}", field="max_bytes")


def _too_big(uri: str, size: int, max_bytes: int) -> InvalidInput:
    return InvalidInput(
        f"artifact {uri} is {size} bytes, over the limit of {max_bytes} bytes",
        field="max_bytes",
        metadata={"size": str(size), "max_bytes": str(max_bytes)},
    )


def _check_expiry(expires: timedelta) -> None:
    if not isinstance(expires, timedelta) or not timedelta(0) < expires <= MAX_PRESIGN_EXPIRY:
        raise InvalidInput(
            f"expires must be a timedelta in (0, {MAX_PRESIGN_EXPIRY}], got {expires!r}",
            field="expires",
        )


class BaseArtifactStore(ABC):
    """Implements :class:`ArtifactStore` on top of a few per-backend hooks keyed by relative key."""

    # ---- public API -----------------------------------------------------------------------------

    @_io_boundary("write")
    def put(
        self, data: bytes | BinaryIO, media_type: str, *, size: int | None = None, temporary: bool = False
    ) -> ArtifactRef:
        """Store ``data`` (bytes or a binary file object, read to EOF) and return its ref.

        ``size``, if given, is the exact byte count expected; a mismatch raises InvalidInput.
        ``temporary`` stores it under the ``tmp/`` key, which the S3 backend's lifecycle rule
        expires (see the module docstring); use it only for what no job state will refer to later.
        """
        validate_media_type(media_type)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidInput(f"size must be a non-negative int, got {size!r}", field="size")
        if not isinstance(temporary, bool):
            raise InvalidInput(f"temporary must be a bool, got {temporary!r}", field="temporary")
        if isinstance(data, bytes | bytearray | memoryview):
            return self._put_bytes(bytes(data), media_type, size, temporary)
        if not callable(getattr(data, "read", None)):
            raise InvalidInput(
                f"data must be bytes or a binary file object, got {type(data).__name__}",
                field="data",
            )
        with spool(data, self._spool_dir(), size) as spooled:
            key = self._scoped_key(spooled.sha256, temporary)
            if self._needs_write(key, spooled.size):
                self._write_spooled(key, spooled, media_type)
                logger.debug("stored artifact %s (%d bytes, %s)", key, spooled.size, media_type)
        return ArtifactRef(self._uri_for_key(key), spooled.sha256, spooled.size, media_type)

    @_io_boundary("read")
    def get(self, ref_or_uri: RefOrUri, *, max_bytes: int | None = None) -> bytes:
        """Return the verified bytes of an artifact."""
        buffer = io.BytesIO()
        self._read_verified(ref_or_uri, max_bytes, buffer.write)
        return buffer.getvalue()

    @_io_boundary("read")
    def get_to_file(self, ref_or_uri: RefOrUri, path: Path, *, max_bytes: int | None = None) -> ArtifactRef:
        """Stream a verified artifact to ``path`` (atomically replaced) and return its stored ref.

        On any failure ``path`` is left untouched.
        """
        path = Path(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                ref = self._read_verified(ref_or_uri, max_bytes, out.write)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return ref

    @_io_boundary("read")
    def stat(self, ref_or_uri: RefOrUri) -> ArtifactRef:
        """The stored ref (size and media type as stored); the content is not read."""
        key, sha256 = self._resolve(ref_or_uri)
        size, media_type = self._stat_key(key)
        return ArtifactRef(self._uri_for_key(key), sha256, size, media_type)

    @_io_boundary("read")
    def exists(self, ref_or_uri: RefOrUri) -> bool:
        key, _ = self._resolve(ref_or_uri)
        try:
            self._stat_key(key)
        except NotFound:
            return False
        return True

    @_io_boundary("delete")
    def delete(self, ref_or_uri: RefOrUri) -> None:
        """Remove an artifact; a missing one is not an error."""
        key, _ = self._resolve(ref_or_uri)
        self._delete_key(key)
        logger.debug("deleted artifact %s", key)

    @_io_boundary("delete")
    def delete_tenant(self, tenant: str) -> int:
        """Remove every artifact of ``tenant`` (durable and temporary; for :data:`LEGACY_TENANT` also the
        keys without a tenant) and return how many blobs were removed. Inside a tenant scope only that
        tenant's own artifacts may be removed."""
        check_tenant_name(tenant, field="tenant")
        scope = _SCOPE.get()
        if scope is not None and scope != tenant:
            raise PermissionDenied(f"a call of tenant {scope!r} cannot delete another tenant's artifacts",
                                   field="tenant")
        prefixes = [f"{TENANT_KEY_PREFIX}{tenant}/", f"{TEMP_KEY_PREFIX}{TENANT_KEY_PREFIX}{tenant}/"]
        if tenant == LEGACY_TENANT:
            prefixes += ["sha256/", f"{TEMP_KEY_PREFIX}sha256/"]
        removed = 0
        for prefix in prefixes:
            removed += self._delete_prefix(prefix)
        logger.info("deleted %d artifacts of tenant %s", removed, tenant)
        return removed

    # ---- moving keys written before tenancy ------------------------------------------------------

    def _outside_scope(self, what: str) -> None:
        scope = _SCOPE.get()
        if scope is not None:
            raise PermissionDenied(f"a call of tenant {scope!r} cannot {what}", field="tenant")

    @_io_boundary("read")
    def legacy_keys(self) -> list[str]:
        """The keys without a tenant (``sha256/...`` and ``tmp/sha256/...``, written before tenancy), sorted."""
        self._outside_scope("list artifacts without a tenant")
        return sorted(self._list_prefix("sha256/") + self._list_prefix(f"{TEMP_KEY_PREFIX}sha256/"))

    @staticmethod
    def legacy_key_target(key: str, tenant: str) -> str:
        """Where a key without a tenant moves to under ``tenant`` (InvalidInput for a key that has one)."""
        check_tenant_name(tenant, field="tenant")
        if _match_key(key).group(1) is not None:
            raise InvalidInput(f"artifact key {shorten(key)} already names its tenant", field="uri")
        return content_key(sha256_of_key(key), temporary=is_temporary_key(key), tenant=tenant)

    def legacy_uri_target(self, uri: str, tenant: str) -> str | None:
        """The URI a reference to an artifact without a tenant must become once it moved under ``tenant``
        (:meth:`copy_legacy_key`); None for a URI that is not such a reference of this store."""
        try:
            key = self._key_from_uri(uri)
            if _match_key(key).group(1) is not None:
                return None
            return self._uri_for_key(self.legacy_key_target(key, tenant))
        except (InvalidInput, ValueError):
            return None

    @_io_boundary("write")
    def copy_legacy_key(self, key: str, tenant: str, *, dry_run: bool = False) -> bool:
        """Copy the blob of a key without a tenant to its place under ``tenant``, its sha256 verified on
        the way; False when a blob of the same size is already there (a copy done before: resumable).
        ``dry_run``: only say whether it would copy."""
        self._outside_scope("move artifacts without a tenant")
        target = self.legacy_key_target(key, tenant)
        size, _ = self._stat_key(key)
        try:
            if self._stat_key(target)[0] == size:
                return False
        except NotFound:
            pass
        if dry_run:
            return True
        fd, name = tempfile.mkstemp(prefix="migrate-", suffix=".part", dir=self._spool_dir())
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                ref = self._read_verified(self._uri_for_key(key), None, out.write)
            with tmp.open("rb") as stream, spool(stream, self._spool_dir(), ref.size) as spooled:
                self._write_spooled(target, spooled, ref.media_type)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("copied artifact %s to %s", key, target)
        return True

    @_io_boundary("delete")
    def delete_legacy_key(self, key: str, tenant: str) -> None:
        """Remove a key without a tenant once its copy under ``tenant`` is in place (FailedPrecondition
        otherwise: nothing is deleted that was not copied)."""
        self._outside_scope("delete artifacts without a tenant")
        target = self.legacy_key_target(key, tenant)
        try:
            size, _ = self._stat_key(key)
        except NotFound:
            return
        try:
            copied = self._stat_key(target)[0] == size
        except NotFound:
            copied = False
        if not copied:
            raise FailedPrecondition(f"artifact {self._uri_for_key(key)} has no copy at {self._uri_for_key(target)}; "
                                     "copy it first", field="uri")
        self._delete_key(key)

    @_io_boundary("read")
    def presign(self, ref_or_uri: RefOrUri, expires: timedelta = DEFAULT_PRESIGN_EXPIRY) -> str:
        """A URL from which a client can download the artifact until ``expires`` has passed."""
        _check_expiry(expires)
        key, _ = self._resolve(ref_or_uri)
        self._stat_key(key)
        return self._presign_key(key, expires)

    @abstractmethod
    def ensure_ready(self) -> None:
        """Prepare the store for use; Unavailable (naming where it is) if it cannot be used."""

    # ---- shared helpers -------------------------------------------------------------------------

    def tenant_of(self, ref_or_uri: RefOrUri) -> str:
        """The tenant a ref or URI of this store belongs to (InvalidInput for one of no store's form)."""
        uri = ref_or_uri.uri if isinstance(ref_or_uri, ArtifactRef) else ref_or_uri
        if not isinstance(uri, str):
            raise InvalidInput(f"expected an ArtifactRef or a URI string, got {type(uri).__name__}", field="uri")
        try:
            key = self._key_from_uri(uri)
        except ValueError as err:  # urlsplit's own refusals (a malformed IPv6 host, ...)
            raise InvalidInput(f"malformed artifact URI {shorten(uri)}: {err}", field="uri") from None
        return tenant_of_key(key)

    def _resolve(self, ref_or_uri: RefOrUri) -> tuple[str, str]:
        """(relative key, sha256) of a ref or URI that belongs to this store and to the current tenant
        scope (PermissionDenied otherwise, before the store is asked)."""
        key, sha256 = self._resolve_any(ref_or_uri)
        scope = _SCOPE.get()
        if scope is not None and tenant_of_key(key) != scope:
            raise outside_tenant(self._uri_for_key(key), scope, "uri")
        return key, sha256

    def _scoped_key(self, sha256: str, temporary: bool) -> str:
        return content_key(sha256, temporary=temporary, tenant=_SCOPE.get())

    def _resolve_any(self, ref_or_uri: RefOrUri) -> tuple[str, str]:
        if isinstance(ref_or_uri, ArtifactRef):
            key = self._key_from_uri(ref_or_uri.uri)
            sha256 = sha256_of_key(key)
            if sha256 != ref_or_uri.sha256:
                raise InvalidInput(
                    f"ref sha256 {ref_or_uri.sha256} does not match the key of its uri {ref_or_uri.uri}",
                    field="sha256",
                )
            return key, sha256
        if not isinstance(ref_or_uri, str):
            raise InvalidInput(
                f"expected an ArtifactRef or a URI string, got {type(ref_or_uri).__name__}",
                field="uri",
            )
        key = self._key_from_uri(ref_or_uri)
        return key, sha256_of_key(key)

    def _needs_write(self, key: str, size: int) -> bool:
        """False when a durable blob of this size is already stored; a temporary one is always
        rewritten, which restarts its age."""
        if is_temporary_key(key):
            return True
        try:
            stored_size, _ = self._stat_key(key)
        except NotFound:
            return True
        except IntegrityError as exc:
            logger.warning("rewriting artifact %s: %s", key, exc.message)
            return True
        if stored_size == size:
            logger.debug("artifact %s already stored; put is a no-op", key)
            return False
        return True

    def _put_bytes(self, data: bytes, media_type: str, size: int | None, temporary: bool) -> ArtifactRef:
        if size is not None and size != len(data):
            raise InvalidInput(f"size says {size} bytes but data holds {len(data)}", field="size")
        sha256 = hashlib.sha256(data).hexdigest()
        key = self._scoped_key(sha256, temporary)
        if self._needs_write(key, len(data)):
            self._write_bytes(key, data, media_type)
            logger.debug("stored artifact %s (%d bytes, %s)", key, len(data), media_type)
        return ArtifactRef(self._uri_for_key(key), sha256, len(data), media_type)

    def _read_verified(
        self, ref_or_uri: RefOrUri, max_bytes: int | None, sink: Callable[[bytes], object]
    ) -> ArtifactRef:
        """Stream an artifact into ``sink`` and verify its sha256; returns the stored ref."""
        _check_max_bytes(max_bytes)
        key, sha256 = self._resolve(ref_or_uri)
        uri = self._uri_for_key(key)
        if isinstance(ref_or_uri, ArtifactRef) and max_bytes is not None:
            if ref_or_uri.size > max_bytes:
                raise _too_big(uri, ref_or_uri.size, max_bytes)
        digest = hashlib.sha256()
        total = 0
        with self._open_key(key) as blob:
            if max_bytes is not None and blob.size > max_bytes:
                raise _too_big(uri, blob.size, max_bytes)
            for chunk in blob.chunks:
                total += len(chunk)
                if total > blob.size:
                    break
                digest.update(chunk)
                sink(chunk)
        if total != blob.size or digest.hexdigest() != sha256:
            logger.error("integrity failure reading artifact %s", uri)
            raise IntegrityError(
                f"artifact {uri} is corrupt: read {total} bytes hashing to {digest.hexdigest()}, "
                f"expected {blob.size} bytes hashing to {sha256}",
                field="sha256",
                metadata={"uri": uri},
            )
        return ArtifactRef(uri, sha256, blob.size, blob.media_type)

    # ---- backend hooks --------------------------------------------------------------------------

    @abstractmethod
    def _uri_for_key(self, key: str) -> str:
        """The absolute URI of a relative key."""

    @abstractmethod
    def _key_from_uri(self, uri: str) -> str:
        """The relative key of a URI of this store; InvalidInput for anything else."""

    @abstractmethod
    def _stat_key(self, key: str) -> tuple[int, str]:
        """(size, media type) of a stored blob; NotFound if missing."""

    @abstractmethod
    def _open_key(self, key: str) -> AbstractContextManager[Blob]:
        """Open a stored blob for streaming; NotFound if missing."""

    @abstractmethod
    def _spool_dir(self) -> Path | None:
        """Where put spools file objects (None: the system temp dir)."""

    @abstractmethod
    def _write_bytes(self, key: str, data: bytes, media_type: str) -> None: ...

    @abstractmethod
    def _write_spooled(self, key: str, spooled: Spooled, media_type: str) -> None:
        """Store a spooled file; the backend may move ``spooled.path`` away."""

    @abstractmethod
    def _delete_key(self, key: str) -> None:
        """Remove a blob; no-op if missing."""

    @abstractmethod
    def _presign_key(self, key: str, expires: timedelta) -> str: ...

    @abstractmethod
    def _list_prefix(self, prefix: str) -> list[str]:
        """The keys of every blob whose key starts with ``prefix`` (a directory-like prefix ending in '/')."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> int:
        """Remove every blob whose key starts with ``prefix`` (a directory-like prefix ending in '/');
        the number removed."""
