"""Content-addressed artifact storage: images, depth maps and splats travel between services as
:class:`ArtifactRef` values (uri, sha256, size, media_type), never as large messages.

Backends: :class:`FileArtifactStore` (``file://``, the default) and :class:`S3ArtifactStore`
(``s3://``, any S3-compatible server). Use :func:`open_store` or :func:`store_from_env` to build
one from configuration and call its ``ensure_ready()`` at start-up. Shared semantics, including
temporary artifacts, are documented in :mod:`glimpse3d.core.artifacts.base`; the layout, backends
and settings in docs/artifacts.md.
"""

from glimpse3d.core.artifacts.base import (
    DEFAULT_PRESIGN_EXPIRY,
    LEGACY_TENANT,
    MAX_PRESIGN_EXPIRY,
    TENANT_METADATA_KEY,
    ArtifactRef,
    ArtifactStore,
    ArtifactStoreUnavailable,
    BaseArtifactStore,
    RefOrUri,
    check_tenant_name,
    content_key,
    current_tenant,
    is_temporary_key,
    outside_tenant,
    sha256_of_key,
    tenant_of_key,
    tenant_scope,
)
from glimpse3d.core.artifacts.factory import (
    ENV_ARTIFACTS_URL,
    ENV_S3_ACCESS_KEY,
    ENV_S3_ENDPOINT,
    ENV_S3_SECRET_KEY,
    ENV_S3_SECURE,
    ENV_S3_TEMP_EXPIRY_DAYS,
    open_store,
    store_from_env,
)
from glimpse3d.core.artifacts.file import FileArtifactStore
from glimpse3d.core.artifacts.s3 import DEFAULT_TEMP_EXPIRY_DAYS, S3ArtifactStore

__all__ = [
    "DEFAULT_PRESIGN_EXPIRY",
    "DEFAULT_TEMP_EXPIRY_DAYS",
    "ENV_ARTIFACTS_URL",
    "ENV_S3_ACCESS_KEY",
    "ENV_S3_ENDPOINT",
    "ENV_S3_SECRET_KEY",
    "ENV_S3_SECURE",
    "ENV_S3_TEMP_EXPIRY_DAYS",
    "LEGACY_TENANT",
    "MAX_PRESIGN_EXPIRY",
    "TENANT_METADATA_KEY",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactStoreUnavailable",
    "BaseArtifactStore",
    "FileArtifactStore",
    "RefOrUri",
    "S3ArtifactStore",
    "check_tenant_name",
    "content_key",
    "current_tenant",
    "is_temporary_key",
    "open_store",
    "outside_tenant",
    "sha256_of_key",
    "store_from_env",
    "tenant_of_key",
    "tenant_scope",
]
