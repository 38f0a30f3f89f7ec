"""Content-addressed artifact storage: images, depth maps and splats travel between services as
:class:`ArtifactRef` values (uri, sha256, size, media_type), never as large messages.

Backends: :class:`FileArtifactStore` (``file://``, the default) and :class:`S3ArtifactStore`
(``s3://``, any S3-compatible server). Use :func:`open_store` or :func:`store_from_env` to build
one from configuration. Shared semantics are documented in :mod:`glimpse3d.core.artifacts.base`.
"""

from glimpse3d.core.artifacts.base import (
    DEFAULT_PRESIGN_EXPIRY,
    MAX_PRESIGN_EXPIRY,
    ArtifactRef,
    ArtifactStore,
    BaseArtifactStore,
    RefOrUri,
    content_key,
    sha256_of_key,
)
from glimpse3d.core.artifacts.factory import (
    ENV_ARTIFACTS_URL,
    ENV_S3_ACCESS_KEY,
    ENV_S3_ENDPOINT,
    ENV_S3_SECRET_KEY,
    ENV_S3_SECURE,
    open_store,
    store_from_env,
)
from glimpse3d.core.artifacts.file import FileArtifactStore
from glimpse3d.core.artifacts.s3 import S3ArtifactStore

__all__ = [
    "DEFAULT_PRESIGN_EXPIRY",
    "ENV_ARTIFACTS_URL",
    "ENV_S3_ACCESS_KEY",
    "ENV_S3_ENDPOINT",
    "ENV_S3_SECRET_KEY",
    "ENV_S3_SECURE",
    "MAX_PRESIGN_EXPIRY",
    "ArtifactRef",
    "ArtifactStore",
    "BaseArtifactStore",
    "FileArtifactStore",
    "RefOrUri",
    "S3ArtifactStore",
    "content_key",
    "open_store",
    "sha256_of_key",
    "store_from_env",
]
