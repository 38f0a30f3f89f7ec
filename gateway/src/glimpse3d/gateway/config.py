"""Gateway settings: ``load_config(GatewayConfig)`` reads ``GLIMPSE3D_<FIELD>`` variables.

The gRPC listener itself (host, port, metrics, grace) is configured by the shared
:class:`~glimpse3d.core.config.ServerConfig`; this class holds what only the gateway needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from glimpse3d.core.artifacts import MAX_PRESIGN_EXPIRY
from glimpse3d.core.config import ConfigError

_ADDRESS_FIELDS = ("depth_addr", "reconstruction_addr", "multiview_addr", "diffusion_addr", "backprojection_addr")
_DEADLINE_FIELDS = ("depth_deadline_s", "reconstruct_deadline_s", "render_deadline_s", "multiview_deadline_s",
                    "enhance_deadline_s", "refine_deadline_s")
MAX_DEADLINE_S = 3600.0


@dataclass(frozen=True)
class GatewayConfig:
    """db_path: the SQLite job database (created with its directory if missing).
    artifacts_url: the artifact store (``open_store`` URL: a directory, ``file:///...`` or ``s3://...``).
    queue_size: jobs and rounds waiting for a worker before CreateJob/Enhance answer RESOURCE_EXHAUSTED.
    workers: jobs processed concurrently.
    max_pending_rounds: enhancement rounds one job may have queued (the running one included).
    watch_queue_size: events buffered per WatchJob stream; a slow reader skips intermediate events.
    *_addr: ``host:port`` of the five model services.
    *_deadline_s: deadline of each downstream call, by stage.
    presign_expiry_s: lifetime of Export download URLs (at most 7 days).
    ready_file: when set, a JSON file {"port", "metrics_port", "pid"} written once the gateway serves.
    """

    db_path: Path = Path("var/gateway/jobs.sqlite3")
    artifacts_url: str = "var/artifacts"
    queue_size: int = 64
    workers: int = 2
    max_pending_rounds: int = 4
    watch_queue_size: int = 64
    depth_addr: str = "127.0.0.1:50061"
    reconstruction_addr: str = "127.0.0.1:50062"
    multiview_addr: str = "127.0.0.1:50063"
    diffusion_addr: str = "127.0.0.1:50064"
    backprojection_addr: str = "127.0.0.1:50065"
    depth_deadline_s: float = 60.0
    reconstruct_deadline_s: float = 300.0
    render_deadline_s: float = 60.0
    multiview_deadline_s: float = 600.0
    enhance_deadline_s: float = 600.0
    refine_deadline_s: float = 600.0
    presign_expiry_s: float = 3600.0
    ready_file: Path | None = None

    def __post_init__(self) -> None:
        if not str(self.db_path).strip():
            raise ConfigError("db_path must not be empty", field="db_path")
        if not self.artifacts_url.strip():
            raise ConfigError("artifacts_url must not be empty", field="artifacts_url")
        for name, lo, hi in (("queue_size", 1, 100_000), ("workers", 1, 1024),
                             ("max_pending_rounds", 1, 100), ("watch_queue_size", 1, 10_000)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"{name} must be in {lo}..{hi}, got {value}", field=name)
        for name in _ADDRESS_FIELDS:
            host, sep, port = getattr(self, name).rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) <= 65535):
                raise ConfigError(f"{name} must look like host:port, got {getattr(self, name)!r}", field=name)
        for name in _DEADLINE_FIELDS:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_S):
                raise ConfigError(f"{name} must be in (0, {MAX_DEADLINE_S:g}] seconds, got {value}", field=name)
        limit = MAX_PRESIGN_EXPIRY.total_seconds()
        if not (math.isfinite(self.presign_expiry_s) and 0 < self.presign_expiry_s <= limit):
            raise ConfigError(
                f"presign_expiry_s must be in (0, {limit:g}] seconds, got {self.presign_expiry_s}",
                field="presign_expiry_s",
            )

    @property
    def presign_expiry(self) -> timedelta:
        return timedelta(seconds=self.presign_expiry_s)
