"""What the HTTP routes work with: the gateway's application layer, its artifact store, open streams."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from glimpse3d.core.artifacts import ArtifactRef, ArtifactStore
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.auth import Authenticator, TicketSigner
from glimpse3d.gateway.http.mapping import job_to_json
from glimpse3d.gateway.http.schemas import JobOut
from glimpse3d.gateway.http.sse import StreamRegistry
from glimpse3d.gateway.jobs import Job

logger = logging.getLogger(__name__)

_COUNT_CACHE = 4096


def ply_vertex_count(data: bytes) -> int | None:
    """``N`` of the ``element vertex N`` line of a PLY header; None when there is none."""
    end = data.find(b"end_header", 0, 64 * 1024)
    for line in data[: max(end, 0)].splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"element" and parts[1] == b"vertex" and parts[2].isdigit():
            return int(parts[2])
    return None


class GaussianCounts:
    """Gaussian counts of stored splats by sha256 (read from the PLY header once, then cached),
    for versions whose metrics do not carry one."""

    def __init__(self, artifacts: ArtifactStore, capacity: int = _COUNT_CACHE) -> None:
        self._artifacts = artifacts
        self._capacity = capacity
        self._counts: OrderedDict[str, int] = OrderedDict()

    async def for_job(self, job: Job) -> dict[str, int]:
        counts: dict[str, int] = {}
        for version in job.versions:
            if "num_gaussians" in version.metrics:
                continue
            count = await self._count(version.splat)
            if count is not None:
                counts[version.splat.sha256] = count
        return counts

    async def _count(self, ref: ArtifactRef) -> int | None:
        if ref.sha256 in self._counts:
            self._counts.move_to_end(ref.sha256)
            return self._counts[ref.sha256]
        try:
            count = ply_vertex_count(await asyncio.to_thread(self._artifacts.get, ref))
        except Exception as err:  # a missing artifact must not break a job listing
            logger.warning("cannot count the Gaussians of %s: %s", ref.uri, err)
            return None
        if count is not None:
            self._counts[ref.sha256] = count
            while len(self._counts) > self._capacity:
                self._counts.popitem(last=False)
        return count


@dataclass
class HttpContext:
    """What the routes use. ``heartbeat_s``: comment interval of idle event streams. ``auth``: checks
    every API call's credentials (None: unauthenticated, loopback only); ``tickets``: signs the
    event-stream tickets."""

    gateway: GatewayApp
    artifacts: ArtifactStore
    heartbeat_s: float = 15.0
    auth: Authenticator | None = None
    tickets: TicketSigner = field(default_factory=TicketSigner)
    streams: StreamRegistry = field(default_factory=StreamRegistry)
    counts: GaussianCounts = field(init=False)

    def __post_init__(self) -> None:
        self.counts = GaussianCounts(self.artifacts)

    def link_sig(self, job: Job) -> str | None:
        """The ``sig`` of the job's photo and download links: signed when the gateway authenticates
        (a browser's ``<img src>`` and download links cannot send the Authorization header)."""
        return None if self.auth is None else self.tickets.mint_link(job.tenant, job.id)

    async def job_json(self, job: Job) -> JobOut:
        return job_to_json(job, await self.counts.for_job(job), self.link_sig(job))
