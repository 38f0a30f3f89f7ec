"""The default backend: content-addressed files under a local (or shared-volume) directory.

Layout under ``root``::

    tenants/<tenant>/sha256/<aa>/<hex>        the blob
    tenants/<tenant>/sha256/<aa>/<hex>.json   sidecar: {"sha256", "size", "media_type"}
    tmp/tenants/<tenant>/sha256/<aa>/<hex>    a temporary artifact (``put(..., temporary=True)``), with its sidecar
    sha256/<aa>/<hex>                         legacy layout (before tenant scoping; tenant ``default``)
    .tmp/                                     files being written; same filesystem, so os.replace is atomic

The sidecar is written before the blob, so a visible blob always has its media type recorded;
both are written to a temporary file, fsync'ed and moved into place with ``os.replace``, so
readers never see partial files. URIs are ``artifact:///<key>``, relative to ``root``, so that no
reference, download URL or error shows where the store lives on the server (and every process may
mount it elsewhere). ``file://`` URIs of a blob path, which the store handed out before, are still
read; one that resolves outside ``root`` (``..``, percent-encoded or not, or a symlink) is rejected
with InvalidInput.

Nothing here expires: temporary artifacts only live apart, under ``tmp/``, where an operator may
prune them by age (each temporary put rewrites its file, so the modification time is its age).

``presign`` returns the blob's ``artifact:///`` URI, which is not a download URL: the gateway's HTTP
facade serves the file store's downloads behind short-lived signed links instead (docs/auth.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from glimpse3d.core.artifacts.base import (
    CHUNK_SIZE,
    OCTET_STREAM,
    BaseArtifactStore,
    Blob,
    Spooled,
    sha256_of_key,
    storage_unavailable,
    validate_media_type,
)
from glimpse3d.core.errors import IntegrityError, InvalidInput, NotFound, shorten

logger = logging.getLogger(__name__)

_TMP_DIR = ".tmp"
_FILE_MODE = 0o644
URI_SCHEME = "artifact"
"""Scheme of the file store's URIs: ``artifact:///<key relative to the store's root>``."""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileArtifactStore(BaseArtifactStore):
    """Artifacts as files under ``root`` (created if missing). Safe for concurrent writers."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root).expanduser().resolve()
        self._tmp = self._root / _TMP_DIR
        self._tmp.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"FileArtifactStore({str(self._root)!r})"

    def ensure_ready(self) -> None:
        """Create the directories if they went missing and check that files can be written there."""
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix="ready-", suffix=".part", dir=self._tmp):
                pass
        except OSError as exc:
            raise storage_unavailable(exc, f"write to its directory {self._root}") from exc

    # ---- paths and URIs -------------------------------------------------------------------------

    def _blob_path(self, key: str) -> Path:
        return self._root / key

    def _sidecar_path(self, key: str) -> Path:
        return self._root / f"{key}.json"

    def _uri_for_key(self, key: str) -> str:
        return f"{URI_SCHEME}:///{key}"

    def _key_from_uri(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme == URI_SCHEME:
            if parts.netloc or parts.query or parts.fragment:
                raise InvalidInput(
                    f"artifact URI must be {URI_SCHEME}:///<key> without host, query or fragment, got {shorten(uri)}",
                    field="uri",
                )
            key = parts.path.lstrip("/")
            sha256_of_key(key)  # the key grammar admits no '..', no '%' and no absolute path
            return key
        if parts.scheme != "file":
            raise InvalidInput(
                f"the file artifact store reads {URI_SCHEME}:/// (and legacy file://) URIs, got {shorten(uri)}",
                field="uri",
            )
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidInput(
                f"file URI must be file:///absolute/path without host, query or fragment, got {shorten(uri)}",
                field="uri",
            )
        try:
            relative = Path(unquote(parts.path)).resolve().relative_to(self._root)
        except (ValueError, OSError):
            raise InvalidInput(f"file URI {shorten(uri)} points outside the artifact store", field="uri") from None
        return relative.as_posix()

    # ---- reads ----------------------------------------------------------------------------------

    def _read_media_type(self, key: str) -> str:
        sidecar = self._sidecar_path(key)
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            logger.warning("artifact %s has no metadata sidecar; assuming %s", key, OCTET_STREAM)
            return OCTET_STREAM
        except OSError as exc:  # the file system failed, not the data
            raise storage_unavailable(exc, "read") from exc
        except ValueError as exc:
            raise IntegrityError(f"metadata sidecar of {self._uri_for_key(key)} is unreadable: {exc}") from exc
        media_type = meta.get("media_type") if isinstance(meta, dict) else None
        try:
            return validate_media_type(media_type)
        except InvalidInput as exc:
            raise IntegrityError(f"metadata sidecar of {self._uri_for_key(key)} is invalid: {exc.message}") from exc

    def _stat_key(self, key: str) -> tuple[int, str]:
        try:
            size = self._blob_path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"artifact {self._uri_for_key(key)} not found", field="uri") from None
        return size, self._read_media_type(key)

    @contextmanager
    def _open_key(self, key: str) -> Iterator[Blob]:
        try:
            handle = self._blob_path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {self._uri_for_key(key)} not found", field="uri") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            yield Blob(size, self._read_media_type(key), iter(lambda: handle.read(CHUNK_SIZE), b""))

    # ---- writes ---------------------------------------------------------------------------------

    def _spool_dir(self) -> Path:
        return self._tmp

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        _fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def _atomic_write(self, final: Path, data: bytes) -> None:
        fd, name = tempfile.mkstemp(prefix="put-", suffix=".part", dir=self._tmp)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self._move_into_place(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_sidecar(self, key: str, size: int, media_type: str) -> None:
        meta = {"sha256": key.rsplit("/", 1)[1], "size": size, "media_type": media_type}
        self._atomic_write(self._sidecar_path(key), json.dumps(meta).encode("utf-8"))

    def _write_bytes(self, key: str, data: bytes, media_type: str) -> None:
        self._write_sidecar(key, len(data), media_type)
        self._atomic_write(self._blob_path(key), data)

    def _write_spooled(self, key: str, spooled: Spooled, media_type: str) -> None:
        self._write_sidecar(key, spooled.size, media_type)
        self._move_into_place(spooled.path, self._blob_path(key))

    def _delete_key(self, key: str) -> None:
        self._blob_path(key).unlink(missing_ok=True)
        self._sidecar_path(key).unlink(missing_ok=True)

    def _presign_key(self, key: str, expires: timedelta) -> str:
        return self._uri_for_key(key)

    def _list_prefix(self, prefix: str) -> list[str]:
        top = self._root / prefix
        if not top.is_dir():
            return []
        keys = []
        for path in sorted(top.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.suffix != ".json":
                key = path.relative_to(self._root).as_posix()
                try:
                    sha256_of_key(key)
                except InvalidInput:
                    continue  # not an artifact
                keys.append(key)
        return keys

    def _delete_prefix(self, prefix: str) -> int:
        top = self._root / prefix
        if not top.is_dir():
            return 0
        keys = self._list_prefix(prefix)  # artifacts only: anything else under the prefix is left alone
        for key in keys:
            self._delete_key(key)
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):  # a directory someone is writing into again stays
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
        return len(keys)
