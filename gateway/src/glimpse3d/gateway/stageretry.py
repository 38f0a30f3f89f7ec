"""Stage calls that survive a service restart.

A model service may go away for a while in the middle of a job: a rolling update, an OOM kill, a
preempted node. Its pod comes back on a new node after some seconds to a couple of minutes, loads its
backend, and reports SERVING on ``grpc.health.v1``. :func:`call_stage` makes one stage call (one
unary RPC, with the stage's deadline per attempt) and, when the call fails because the service is not
there (see :func:`is_restart_error`), tries again with jittered exponential backoff until the retry
budget is spent. Before each new attempt it waits, bounded by what is left of the budget, for the
service's health to say SERVING, so a retry lands on a loaded backend and not on one still starting.

The budget is a window that opens at the first failure (``GatewayConfig.stage_retry_budget_s``,
120 s by default): a stage that ran for minutes before the service died still gets the whole window
to see it come back. Every attempt carries the same idempotency key (``x-glimpse3d-request-id``), so a
service that finished the work but whose answer was lost returns its stored answer
(:mod:`glimpse3d.core.rpc.idempotency`) instead of computing again.

Why tenacity and not gRPC's own retry policy (``grpc.service_config``): gRPC caps a policy at five
attempts and has no time budget, so it cannot cover a pod being rescheduled; it does not retry a
call once the server has started answering it (a call cut mid-flight by the server dying); and it
cannot wait on the service's health between attempts. The channels keep their short gRPC retry
policy for blips of a few hundred milliseconds; this layer covers restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from glimpse3d.core.errors import Unavailable
from glimpse3d.core.rpc import error_from_rpc
from glimpse3d.core.rpc.idempotency import IDEMPOTENCY_KEY

log = logging.getLogger(__name__)
R = TypeVar("R")

# What a transport cut looks like when it does not come back as UNAVAILABLE (a stream reset by a
# dying peer may end as INTERNAL or UNKNOWN, with no status details from the service).
TRANSPORT_CUT_MARKERS = (
    "socket closed",
    "connection reset",
    "rst_stream",
    "broken pipe",
    "connection refused",
    "goaway",
    "failed to connect",
    "stream removed",
    "end of tcp stream",
)
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class StageRetryPolicy:
    """budget_s: how long after its first failure a stage call keeps being retried (0: never);
    initial_backoff_s / max_backoff_s: the jittered exponential wait between attempts (full jitter:
    a uniform draw in [0, min(max, initial * 2**(n-1))]); health_probe_s: the longest one health
    check may wait for the service to answer."""

    budget_s: float = 120.0
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    health_probe_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.budget_s:
            raise ValueError(f"budget_s must be >= 0, got {self.budget_s}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"backoff must satisfy 0 < initial ({self.initial_backoff_s}) <= max ({self.max_backoff_s})"
            )
        if not self.health_probe_s > 0:
            raise ValueError(f"health_probe_s must be > 0, got {self.health_probe_s}")


def is_restart_error(err: BaseException) -> bool:
    """True for the failures a service restart causes: UNAVAILABLE (connection refused, server
    draining or gone, a call cut by the peer's death: "Socket closed", connection reset), an
    INTERNAL/UNKNOWN call that ended on a transport cut without any status from the service, and a
    CANCELLED one without a status from the service: a call that reached a server as its shutdown
    began (SIGTERM) is cancelled by the server, not answered. The gateway's own cancellation (a
    cancelled job) never comes back as a status: the awaiting task gets ``asyncio.CancelledError``.
    Every other code (bad input, deadline, a service's own fault) is the answer and is not retried."""
    if not isinstance(err, grpc.aio.AioRpcError):
        return False
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED):
        return False
    trailing = err.trailing_metadata() or ()
    if any(key == _STATUS_DETAILS_KEY for key, _ in trailing):
        return False  # the service itself answered with a rich status
    if code == grpc.StatusCode.CANCELLED:
        return True
    details = (err.details() or "").lower()
    return any(marker in details for marker in TRANSPORT_CUT_MARKERS)


HealthCheck = Callable[..., Awaitable[health_pb2.HealthCheckResponse]]


async def wait_until_serving(
    check: HealthCheck,
    limit_s: float,
    *,
    probe_s: float = 5.0,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Poll ``grpc.health.v1`` ``Check`` (the server's overall status) until it says SERVING, for at
    most ``limit_s`` seconds; True once SERVING, False when the time ran out. Each check waits for the
    channel to connect (``wait_for_ready``) for at most ``probe_s``."""
    deadline = clock() + limit_s
    while (left := deadline - clock()) > 0:
        try:
            response = await check(
                health_pb2.HealthCheckRequest(service=""), timeout=min(left, probe_s), wait_for_ready=True
            )
            if response.status == _SERVING:
                return True
        except grpc.aio.AioRpcError:
            pass
        await sleep(max(0.0, min(poll_s, deadline - clock())))
    return False


class _Window:
    """The retry budget: opens at the first failure, closes ``budget_s`` later."""

    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.opened: float | None = None

    def failed(self) -> None:
        if self.opened is None:
            self.opened = self.clock()

    def remaining(self) -> float:
        return self.budget_s if self.opened is None else max(0.0, self.opened + self.budget_s - self.clock())

    def spent(self, _state: RetryCallState | None = None) -> bool:
        return self.remaining() <= 0


async def call_stage(
    method: Callable[..., Awaitable[R]],
    request: Any,
    timeout_s: float,
    *,
    policy: StageRetryPolicy,
    service: str,
    health: HealthCheck | None = None,
    key: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> R:
    """``await method(request, timeout=timeout_s)`` retried on :func:`is_restart_error` within
    ``policy``; ``health`` (the service's ``Health.Check``) is awaited SERVING before each retry;
    ``key`` goes out as ``x-glimpse3d-request-id``. A failure that is not retried, or the last one
    when the budget is spent, is raised as the domain error it stands for (a spent budget as
    :class:`Unavailable` naming ``service`` and how long it was tried)."""
    metadata: Sequence[tuple[str, str]] = ((IDEMPOTENCY_KEY, key),) if key else ()
    window = _Window(policy.budget_s, clock)
    attempts = 0

    async def capped_sleep(seconds: float) -> None:
        await sleep(max(0.0, min(seconds, window.remaining())))

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "stage call failed, retrying",
            extra={
                "service": service,
                "attempt": state.attempt_number,
                "error": str(getattr(err, "details", lambda: err)()),
                "budget_left_s": round(window.remaining(), 3),
            },
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_restart_error),
        stop=window.spent,
        reraise=True,
        sleep=capped_sleep,
        wait=wait_random_exponential(multiplier=policy.initial_backoff_s, max=policy.max_backoff_s),
        before_sleep=before_sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                if attempts > 1 and health is not None and window.remaining() > 0:
                    await wait_until_serving(
                        health, window.remaining(), probe_s=policy.health_probe_s, clock=clock, sleep=sleep
                    )
                try:
                    if metadata:
                        return await method(request, timeout=timeout_s, metadata=metadata)
                    return await method(request, timeout=timeout_s)
                except grpc.aio.AioRpcError as err:
                    if is_restart_error(err):
                        window.failed()
                    raise
    except grpc.aio.AioRpcError as err:
        if is_restart_error(err) and attempts > 1:
            waited = 0.0 if window.opened is None else clock() - window.opened
            raise Unavailable(
                f"the {service} service was unavailable for {waited:.1f} s ({attempts} attempts): {err.details()}"
            ) from err
        raise error_from_rpc(err) from err
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
