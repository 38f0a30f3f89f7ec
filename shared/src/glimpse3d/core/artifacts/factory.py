"""Build an artifact store from a URL (and, for S3, connection options or environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from glimpse3d.core.artifacts.base import ArtifactStore
from glimpse3d.core.artifacts.file import FileArtifactStore
from glimpse3d.core.artifacts.s3 import DEFAULT_TEMP_EXPIRY_DAYS, S3ArtifactStore
from glimpse3d.core.errors import InvalidInput

ENV_ARTIFACTS_URL = "GLIMPSE3D_ARTIFACTS_URL"
ENV_S3_ENDPOINT = "GLIMPSE3D_S3_ENDPOINT"
ENV_S3_ACCESS_KEY = "GLIMPSE3D_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "GLIMPSE3D_S3_SECRET_KEY"
ENV_S3_SECURE = "GLIMPSE3D_S3_SECURE"
ENV_S3_TEMP_EXPIRY_DAYS = "GLIMPSE3D_S3_TEMP_EXPIRY_DAYS"

_S3_REQUIRED = ("endpoint", "access_key", "secret_key")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _file_store(url: str, options: Mapping[str, Any]) -> FileArtifactStore:
    if options:
        raise InvalidInput(f"a file artifact store takes no options, got {sorted(options)}", field="options")
    if "://" not in url:
        return FileArtifactStore(Path(url))
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidInput(f"file store URL must be file:///absolute/dir, got {url!r}", field="url")
    return FileArtifactStore(Path(unquote(parts.path)))


def _s3_store(url: str, options: Mapping[str, Any]) -> S3ArtifactStore:
    parts = urlsplit(url)
    if not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(f"S3 store URL must be s3://bucket[/prefix], got {url!r}", field="url")
    missing = [name for name in _S3_REQUIRED if not options.get(name)]
    if missing:
        raise InvalidInput(f"an s3:// artifact store needs {', '.join(missing)}", field=missing[0])
    return S3ArtifactStore(bucket=parts.netloc, prefix=unquote(parts.path), **options)


def open_store(url: str, **options: Any) -> ArtifactStore:
    """Open the artifact store that ``url`` names.

    - ``/some/dir``, ``relative/dir`` or ``file:///abs/dir``: a :class:`FileArtifactStore`
      (created if missing); no options.
    - ``s3://bucket[/prefix]``: an :class:`S3ArtifactStore`; ``endpoint``, ``access_key`` and
      ``secret_key`` are required, any other keyword of :class:`S3ArtifactStore` is passed on.
    """
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"artifact store URL must be a non-empty string, got {url!r}", field="url")
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("", "file"):
        return _file_store(url, options)
    if scheme == "s3":
        return _s3_store(url, options)
    raise InvalidInput(
        f"unsupported artifact store URL scheme {scheme!r} in {url!r} (use file:// or s3://)",
        field="url",
    )


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidInput(f"{name} must be true or false, got {value!r}", field=name)


def _parse_days(name: str, value: str) -> int:
    try:
        days = int(value.strip())
    except ValueError:
        days = -1
    if days < 0:
        raise InvalidInput(f"{name} must be a whole number of days >= 0 (0: never expire), got {value!r}", field=name)
    return days


def store_from_env(env: Mapping[str, str] | None = None, *, url: str | None = None) -> ArtifactStore:
    """Open the store configured by ``GLIMPSE3D_ARTIFACTS_URL`` (and the ``GLIMPSE3D_S3_*`` variables).

    ``env`` defaults to ``os.environ``; ``url``, when given, is used instead of
    ``GLIMPSE3D_ARTIFACTS_URL`` (the gateway passes its configured URL). The S3 variables are read
    only for an ``s3://`` URL: ``GLIMPSE3D_S3_ENDPOINT`` (host:port or http(s)://host:port),
    ``GLIMPSE3D_S3_ACCESS_KEY``, ``GLIMPSE3D_S3_SECRET_KEY``, ``GLIMPSE3D_S3_SECURE`` (true/false,
    default false) and ``GLIMPSE3D_S3_TEMP_EXPIRY_DAYS`` (days after which temporary artifacts
    expire, default 7; 0 never). The store is not contacted here: call ``ensure_ready()``.
    """
    env = os.environ if env is None else env
    url = (env.get(ENV_ARTIFACTS_URL, "") if url is None else url).strip()
    if not url:
        raise InvalidInput(f"{ENV_ARTIFACTS_URL} is not set", field=ENV_ARTIFACTS_URL)
    if not url.startswith("s3://"):
        return open_store(url)
    missing = [name for name in (ENV_S3_ENDPOINT, ENV_S3_ACCESS_KEY, ENV_S3_SECRET_KEY) if not env.get(name)]
    if missing:
        raise InvalidInput(f"artifact store {url} needs {', '.join(missing)}", field=missing[0])
    days = env.get(ENV_S3_TEMP_EXPIRY_DAYS, "")
    return open_store(
        url,
        endpoint=env[ENV_S3_ENDPOINT],
        access_key=env[ENV_S3_ACCESS_KEY],
        secret_key=env[ENV_S3_SECRET_KEY],
        secure=_parse_bool(ENV_S3_SECURE, env.get(ENV_S3_SECURE, "")),
        temp_expiry_days=_parse_days(ENV_S3_TEMP_EXPIRY_DAYS, days) if days.strip() else DEFAULT_TEMP_EXPIRY_DAYS,
    )
