"""S3-compatible backend (MinIO, AWS S3, …) through the ``minio`` SDK.

Objects are ``<prefix>/sha256/<aa>/<hex>`` (temporary ones under ``<prefix>/tmp/``) in one bucket,
with URI ``s3://<bucket>/<object name>``, the media type as Content-Type and the sha256 as
``x-amz-meta-sha256``. :meth:`S3ArtifactStore.ensure_ready` creates the bucket and installs the
lifecycle rule that expires temporary artifacts after ``temp_expiry_days``. A missing object is
NotFound, any other S3 or transport failure Unavailable. See docs/artifacts.md (key layout, the
lifecycle rule, S3 uploads and errors).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from urllib3.response import BaseHTTPResponse

from glimpse3d.core.artifacts.base import (
    CHUNK_SIZE,
    OCTET_STREAM,
    TEMP_KEY_PREFIX,
    ArtifactStoreUnavailable,
    BaseArtifactStore,
    Blob,
    Spooled,
    sha256_of_key,
)
from glimpse3d.core.errors import IntegrityError, InvalidInput, NotFound, shorten

logger = logging.getLogger(__name__)

SHA256_METADATA = "x-amz-meta-sha256"
DEFAULT_TEMP_EXPIRY_DAYS = 7
LIFECYCLE_RULE_ID = "glimpse3d-temp-expiry"
"""ID of the store's lifecycle rule; ``:<prefix>`` is appended when the store has a key prefix."""
_MAX_RULE_ID = 255
_BUCKET_TAKEN_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9!_.*'()-]+")


def _validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise InvalidInput(f"invalid S3 bucket name {bucket!r}", field="bucket")
    return bucket


def _normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    for segment in prefix.split("/"):
        if segment in (".", "..") or not _PREFIX_SEGMENT_RE.fullmatch(segment):
            raise InvalidInput(f"invalid S3 key prefix {prefix!r}", field="prefix")
    return prefix


def _media_type(content_type: str | None) -> str:
    """The stored Content-Type without parameters (``text/plain; charset=…`` -> ``text/plain``)."""
    return (content_type or "").split(";", 1)[0].strip() or OCTET_STREAM


def _rule_summary(rule: Rule) -> tuple[object, ...]:
    """What matters of a lifecycle rule of this store (status, prefix, expiry, other actions)."""
    expiration = rule.expiration
    return (
        rule.status,
        rule.rule_filter.prefix if rule.rule_filter is not None else None,
        rule.rule_filter is not None and (rule.rule_filter.tag, rule.rule_filter.and_operator) != (None, None),
        (expiration.days, expiration.date, expiration.expired_object_delete_marker) if expiration else None,
        rule.transition,
        rule.abort_incomplete_multipart_upload,
        rule.noncurrent_version_expiration,
        rule.noncurrent_version_transition,
    )


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """Accept ``host:port`` or ``http(s)://host:port``; a scheme decides ``secure``."""
    if "://" not in endpoint:
        host, scheme_secure = endpoint, secure
    else:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or parts.path.strip("/") or parts.query:
            raise InvalidInput(
                f"S3 endpoint must be host:port or http(s)://host:port, got {endpoint!r}",
                field="endpoint",
            )
        if secure and parts.scheme == "http":
            raise InvalidInput(f"secure=True conflicts with the http:// endpoint {endpoint!r}", field="endpoint")
        host, scheme_secure = parts.netloc, parts.scheme == "https"
    if not host or "/" in host:
        raise InvalidInput(f"invalid S3 endpoint {endpoint!r}", field="endpoint")
    return host, scheme_secure


def _http_client(connect_timeout: float, read_timeout: float, retries: int) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
        ),
    )


class S3ArtifactStore(BaseArtifactStore):
    """Artifacts as objects in an S3 bucket. Thread safe (the minio client is)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        prefix: str = "",
        *,
        secure: bool = False,
        region: str | None = None,
        part_size: int = MIN_PART_SIZE,
        connect_timeout: float = 3.0,
        read_timeout: float = 60.0,
        retries: int = 2,
        temp_expiry_days: int = DEFAULT_TEMP_EXPIRY_DAYS,
    ) -> None:
        if isinstance(temp_expiry_days, bool) or not isinstance(temp_expiry_days, int) or temp_expiry_days < 0:
            raise InvalidInput(
                f"temp_expiry_days must be an int >= 0 (0: temporary artifacts never expire), got {temp_expiry_days!r}",
                field="temp_expiry_days",
            )
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise InvalidInput(
                f"part_size must be in [{MIN_PART_SIZE}, {MAX_PART_SIZE}], got {part_size}",
                field="part_size",
            )
        host, secure = _split_endpoint(endpoint, secure)
        self._endpoint = f"{'https' if secure else 'http'}://{host}"
        self._bucket = _validate_bucket(bucket)
        self._prefix = _normalise_prefix(prefix)
        self._part_size = part_size
        self._temp_expiry_days = temp_expiry_days
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(connect_timeout, read_timeout, retries),
        )
        self._region = region
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def endpoint(self) -> str:
        """``http(s)://host:port`` of the S3 server."""
        return self._endpoint

    @property
    def temp_expiry_days(self) -> int:
        """Days after which temporary artifacts expire; 0: never."""
        return self._temp_expiry_days

    @property
    def temp_prefix(self) -> str:
        """The object-name prefix of temporary artifacts (the lifecycle rule's filter)."""
        return self._object_name(TEMP_KEY_PREFIX)

    @property
    def lifecycle_rule_id(self) -> str:
        """ID of this store's lifecycle rule: one per bucket and key prefix."""
        rule_id = f"{LIFECYCLE_RULE_ID}:{self._prefix}" if self._prefix else LIFECYCLE_RULE_ID
        if len(rule_id) > _MAX_RULE_ID:  # S3's limit; a very long prefix is named by its hash
            rule_id = f"{LIFECYCLE_RULE_ID}:sha256:{hashlib.sha256(self._prefix.encode()).hexdigest()}"
        return rule_id

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self._endpoint!r}, bucket={self._bucket!r}, prefix={self._prefix!r})"

    # ---- errors ---------------------------------------------------------------------------------

    @contextmanager
    def _translate(self, action: str, target: str) -> Iterator[None]:
        """Map minio / urllib3 failures to domain errors that name the action and the object.

        The S3 endpoint is infrastructure the callers of the API need not know: it goes into the log
        line written here (for operators), never into the error's message, which reaches clients.
        """
        try:
            yield
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                what = "bucket" if exc.code == "NoSuchBucket" else "artifact"
                raise NotFound(f"{action} {target}: {what} not found (S3 {exc.code})", field="uri") from exc
            logger.warning("S3 at %s: %s %s failed: %s %s", self._endpoint, action, target, exc.code, exc.message)
            raise ArtifactStoreUnavailable(f"{action} {target} failed: S3 {exc.code}: {exc.message}") from exc
        except MinioException as exc:
            logger.warning("S3 at %s: %s %s failed: %s", self._endpoint, action, target, exc)
            raise ArtifactStoreUnavailable(f"{action} {target} failed: the artifact store's S3 "
                                           f"answered {type(exc).__name__}") from exc
        except urllib3.exceptions.HTTPError as exc:
            logger.warning("S3 at %s is unreachable (%s %s): %s", self._endpoint, action, target, exc)
            raise ArtifactStoreUnavailable(
                f"the artifact store's S3 endpoint is unreachable ({action} {target})") from exc

    # ---- bucket ---------------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """:meth:`ensure_bucket`, what servers call at start-up: there the error reaches the operator
        starting the server, so it names the S3 endpoint (errors during requests do not)."""
        try:
            self.ensure_bucket()
        except ArtifactStoreUnavailable as exc:
            raise ArtifactStoreUnavailable(f"{exc.message} (S3 endpoint {self._endpoint})") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist and install the lifecycle rule of temporary
        artifacts. Idempotent and safe when replicas race; Unavailable if S3 is unreachable."""
        target = f"s3://{self._bucket}"
        with self._translate("checking bucket", target):
            exists = self._client.bucket_exists(self._bucket)
        if not exists:
            with self._translate("creating bucket", target):
                try:
                    self._client.make_bucket(self._bucket, location=self._region)
                    logger.info("created S3 bucket %s at %s", self._bucket, self._endpoint)
                except S3Error as exc:
                    if exc.code not in _BUCKET_TAKEN_CODES:  # else: lost a race with another creator
                        raise
        self._ensure_lifecycle()
        self._bucket_ready = True

    def _wanted_rules(self) -> list[Rule]:
        if not self._temp_expiry_days:
            return []
        return [
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=self.temp_prefix),
                rule_id=self.lifecycle_rule_id,
                expiration=Expiration(days=self._temp_expiry_days),
            )
        ]

    def _ensure_lifecycle(self) -> None:
        """Make the store's own lifecycle rule what ``temp_expiry_days`` asks for; keep other rules."""
        target = f"s3://{self._bucket}"
        with self._translate("reading the lifecycle configuration of", target):
            try:
                current = self._client.get_bucket_lifecycle(self._bucket)
            except ValueError as exc:  # the SDK could not parse what the server sent
                logger.warning("leaving the lifecycle configuration of %s untouched: it could not be "
                               "parsed (%s); temporary artifacts under %s will not expire unless a rule "
                               "is added by hand", target, exc, self.temp_prefix)
                return
        rules = list(current.rules) if current is not None else []
        ours = [rule for rule in rules if rule.rule_id == self.lifecycle_rule_id]
        others = [rule for rule in rules if rule.rule_id != self.lifecycle_rule_id]
        wanted = self._wanted_rules()
        if [_rule_summary(rule) for rule in ours] == [_rule_summary(rule) for rule in wanted]:
            return
        unsafe = [rule.rule_id or "(no ID)" for rule in others if rule.rule_filter is None]
        if unsafe:
            logger.warning("leaving the lifecycle configuration of %s untouched: rules %s have no "
                           "Filter, which rewriting could widen to the whole bucket; temporary artifacts "
                           "under %s need a rule added by hand", target, unsafe, self.temp_prefix)
            return
        with self._translate("updating the lifecycle configuration of", target):
            if others or wanted:
                self._client.set_bucket_lifecycle(self._bucket, LifecycleConfig(others + wanted))
            else:
                self._client.delete_bucket_lifecycle(self._bucket)
        if wanted:
            logger.info("lifecycle rule %s on %s: objects under %s expire after %d days",
                        self.lifecycle_rule_id, target, self.temp_prefix, self._temp_expiry_days)
        else:
            logger.info("removed lifecycle rule %s from %s: temporary artifacts no longer expire",
                        self.lifecycle_rule_id, target)

    def _ensure_bucket_once(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if not self._bucket_ready:
                self.ensure_bucket()

    # ---- keys and URIs --------------------------------------------------------------------------

    def _object_name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _uri_for_key(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._object_name(key)}"

    def _key_from_uri(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "s3":
            raise InvalidInput(f"{self!r} only reads s3:// URIs, got {shorten(uri)}", field="uri")
        if parts.netloc != self._bucket:
            raise InvalidInput(f"URI {shorten(uri)} is not in this store's bucket {self._bucket!r}", field="uri")
        if parts.query or parts.fragment:
            raise InvalidInput(f"s3 URI must not have a query or fragment: {shorten(uri)}", field="uri")
        name = parts.path.lstrip("/")
        head = f"{self._prefix}/" if self._prefix else ""
        if not name.startswith(head):
            raise InvalidInput(f"URI {shorten(uri)} is not under this store's prefix {self._prefix!r}", field="uri")
        return name[len(head) :]

    def _check_sha_metadata(self, key: str, headers: Mapping[str, str]) -> None:
        recorded = headers.get(SHA256_METADATA)
        if recorded is not None and recorded != sha256_of_key(key):
            raise IntegrityError(
                f"object {self._uri_for_key(key)} records sha256 {recorded}, which does not match its key",
                field="sha256",
            )

    # ---- reads ----------------------------------------------------------------------------------

    def _stat_key(self, key: str) -> tuple[int, str]:
        with self._translate("stat", self._uri_for_key(key)):
            info = self._client.stat_object(self._bucket, self._object_name(key))
        self._check_sha_metadata(key, info.metadata or {})
        return int(info.size or 0), _media_type(info.content_type)

    def _stream(self, response: BaseHTTPResponse, uri: str) -> Iterator[bytes]:
        with self._translate("download", uri):
            yield from response.stream(CHUNK_SIZE, decode_content=False)

    @contextmanager
    def _open_key(self, key: str) -> Iterator[Blob]:
        uri = self._uri_for_key(key)
        with self._translate("download", uri):
            response = self._client.get_object(self._bucket, self._object_name(key))
        try:
            self._check_sha_metadata(key, response.headers)
            length = response.headers.get("content-length")
            if length is None:
                logger.warning("S3 at %s sent %s without a Content-Length", self._endpoint, uri)
                raise ArtifactStoreUnavailable(f"the artifact store's S3 sent {uri} without a Content-Length")
            media_type = _media_type(response.headers.get("content-type"))
            yield Blob(int(length), media_type, self._stream(response, uri))
        finally:
            response.close()
            response.release_conn()

    # ---- writes ---------------------------------------------------------------------------------

    def _spool_dir(self) -> Path | None:
        return None

    def _upload(self, key: str, stream: BinaryIO, length: int, media_type: str) -> None:
        self._ensure_bucket_once()
        uri = self._uri_for_key(key)
        with self._translate("upload", uri):
            result = self._client.put_object(
                self._bucket,
                self._object_name(key),
                stream,
                length,
                content_type=media_type,
                metadata={SHA256_METADATA: sha256_of_key(key)},
                part_size=self._part_size,
            )
        logger.debug("uploaded %s (%d bytes, etag %s)", uri, length, result.etag)

    def _write_bytes(self, key: str, data: bytes, media_type: str) -> None:
        self._upload(key, io.BytesIO(data), len(data), media_type)

    def _write_spooled(self, key: str, spooled: Spooled, media_type: str) -> None:
        with spooled.path.open("rb") as handle:
            self._upload(key, handle, spooled.size, media_type)

    def _delete_key(self, key: str) -> None:
        try:
            with self._translate("delete", self._uri_for_key(key)):
                self._client.remove_object(self._bucket, self._object_name(key))
        except NotFound:
            logger.debug("delete of %s: bucket %s does not exist", key, self._bucket)

    def _list_prefix(self, prefix: str) -> list[str]:
        head = f"{self._prefix}/" if self._prefix else ""
        with self._translate("list", f"s3://{self._bucket}/{self._object_name(prefix)}"):
            try:
                names = [obj.object_name for obj in self._client.list_objects(
                    self._bucket, prefix=self._object_name(prefix), recursive=True) if obj.object_name]
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return []
                raise
        return [name[len(head):] for name in names if name.startswith(head)]

    def _delete_prefix(self, prefix: str) -> int:
        target = f"s3://{self._bucket}/{self._object_name(prefix)}"
        with self._translate("list", target):
            try:
                names = [obj.object_name for obj in self._client.list_objects(
                    self._bucket, prefix=self._object_name(prefix), recursive=True) if obj.object_name]
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return 0
                raise
        with self._translate("delete", target):
            for start in range(0, len(names), 1000):  # S3 takes at most 1000 keys per DeleteObjects
                batch = [DeleteObject(name) for name in names[start:start + 1000]]
                errors = list(self._client.remove_objects(self._bucket, batch))
                if errors:
                    raise ArtifactStoreUnavailable(
                        f"delete under {target} failed for {len(errors)} objects: {errors[0].message}")
        return len(names)

    def _presign_key(self, key: str, expires: timedelta) -> str:
        with self._translate("presign", self._uri_for_key(key)):
            return self._client.presigned_get_object(self._bucket, self._object_name(key), expires=expires)
