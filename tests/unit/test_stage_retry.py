"""The gateway's stage retry policy (glimpse3d.gateway.stageretry) and the services' response cache
(glimpse3d.core.rpc.idempotency): what is retried, for how long, how the waits are spread, and that a
repeated call is answered from memory."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2

from glimpse3d.core.errors import Cancelled, Glimpse3DError, InvalidInput, Unavailable
from glimpse3d.core.rpc import create_server, to_rpc_status
from glimpse3d.core.rpc.idempotency import IDEMPOTENCY_KEY, IdempotencyInterceptor, ResponseCache
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.stageretry import StageRetryPolicy, call_stage, is_restart_error, wait_until_serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def rpc_error(code: grpc.StatusCode, details: str = "", trailing: tuple = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


def rich_error(exc: Exception) -> grpc.aio.AioRpcError:
    """The error a service answers for ``exc`` (with its google.rpc.Status details)."""
    status = to_rpc_status(exc)
    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    return rpc_error(
        grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == status.code)), status.message, trailing
    )


class FakeTime:
    """A clock that only moves when the code under test sleeps (or a call takes time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Method:
    """A stub method that fails with ``errors`` in turn, then answers ``result``; records its calls."""

    def __init__(
        self,
        errors: list[grpc.aio.AioRpcError],
        result: str = "done",
        time: FakeTime | None = None,
        takes_s: float = 0.0,
        forever: bool = False,
    ) -> None:
        self.errors, self.result, self.time, self.takes_s, self.forever = list(errors), result, time, takes_s, forever
        self.calls: list[dict] = []

    async def __call__(self, request: object, **kwargs: object) -> str:
        self.calls.append(kwargs)
        if self.time is not None:
            self.time.now += self.takes_s
        if self.forever:
            raise self.errors[0]
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


# ---- which failures are retried -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), True),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), True),
        (rich_error(Unavailable("backend still loading")), True),
        (rpc_error(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"), True),
        (rpc_error(grpc.StatusCode.UNKNOWN, "Connection reset by peer"), True),
        (rich_error(RuntimeError("Socket closed in the backend")), False),  # the service's own fault, with a status
        (rpc_error(grpc.StatusCode.INTERNAL, "division by zero"), False),
        (rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad image"), False),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), False),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"), False),
        (rpc_error(grpc.StatusCode.CANCELLED, "CANCELLED"), True),  # a call caught by the server's shutdown
        (rich_error(Cancelled("the job was cancelled")), False),  # the service's own answer, with a status
        (ValueError("not an rpc error"), False),
    ],
)
def test_only_restart_failures_are_retryable(error: BaseException, retried: bool) -> None:
    assert is_restart_error(error) is retried


@pytest.mark.parametrize(
    "error",
    [
        rich_error(InvalidInput("image is not a PNG", field="image")),
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        rpc_error(grpc.StatusCode.INTERNAL, "division by zero"),
    ],
)
def test_non_retryable_codes_are_raised_at_once_as_domain_errors(error: grpc.aio.AioRpcError) -> None:
    time = FakeTime()
    method = Method([error, error])
    with pytest.raises(Glimpse3DError) as info:
        run(
            call_stage(
                method,
                object(),
                5.0,
                policy=StageRetryPolicy(budget_s=60),
                service="depth",
                clock=time.clock,
                sleep=time.sleep,
            )
        )
    assert len(method.calls) == 1 and time.sleeps == []
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        assert isinstance(info.value, InvalidInput) and info.value.field == "image"


# ---- retries, health and the idempotency key ------------------------------------------------------


def test_retries_until_the_service_is_back_waiting_for_health_and_keeping_the_key() -> None:
    time = FakeTime()
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    method = Method([unavailable, unavailable, unavailable], result="splat")
    answers = [NOT_SERVING, NOT_SERVING, SERVING, SERVING, SERVING]
    checks: list[dict] = []

    async def health(request: health_pb2.HealthCheckRequest, **kwargs: object) -> health_pb2.HealthCheckResponse:
        checks.append(kwargs)
        time.now += 0.01
        return health_pb2.HealthCheckResponse(status=answers.pop(0))

    result = run(
        call_stage(
            method,
            object(),
            7.0,
            policy=StageRetryPolicy(budget_s=30),
            service="reconstruction",
            health=health,
            key="job1/v1/ReconstructRequest/abc",
            clock=time.clock,
            sleep=time.sleep,
        )
    )
    assert result == "splat"
    assert len(method.calls) == 4
    assert all(
        c == {"timeout": 7.0, "metadata": ((IDEMPOTENCY_KEY, "job1/v1/ReconstructRequest/abc"),)} for c in method.calls
    )  # the same key and the stage deadline on every attempt
    assert len(checks) == 5  # before retry 1: NOT_SERVING twice, then SERVING; retries 2 and 3: SERVING
    assert all(c["wait_for_ready"] is True for c in checks)


def test_the_budget_is_respected_and_counts_from_the_first_failure() -> None:
    time = FakeTime()
    calls: list[float] = []

    async def method(request: object, **kwargs: object) -> str:
        calls.append(time.now)
        time.now += 500.0 if len(calls) == 1 else 0.5  # a long stage, cut when the service died
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "Connection refused")

    with pytest.raises(Unavailable) as info:
        run(
            call_stage(
                method,
                object(),
                600.0,
                policy=StageRetryPolicy(budget_s=20, max_backoff_s=4),
                service="backprojection",
                clock=time.clock,
                sleep=time.sleep,
            )
        )
    opened = calls[0] + 500.0  # the window opens at the first failure, not when the call started
    assert time.now - opened <= 20.0 + 0.5 + 1e-9  # never past the budget (plus the last attempt's own time)
    assert time.now - opened >= 20.0 - 4.0  # and it did use the budget
    assert len(calls) >= 6
    assert sum(time.sleeps) <= 20.0 + 1e-9
    assert "backprojection service was unavailable" in info.value.message
    assert f"({len(calls)} attempts)" in info.value.message


def test_a_zero_budget_never_retries() -> None:
    time = FakeTime()
    method = Method([rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed")], forever=True)
    with pytest.raises(Unavailable):
        run(
            call_stage(
                method,
                object(),
                1.0,
                policy=StageRetryPolicy(budget_s=0),
                service="depth",
                clock=time.clock,
                sleep=time.sleep,
            )
        )
    assert len(method.calls) == 1 and time.sleeps == []


def test_backoff_is_exponential_with_full_jitter() -> None:
    random.seed(7)
    runs = []
    for _ in range(2):
        time = FakeTime()
        method = Method([rpc_error(grpc.StatusCode.UNAVAILABLE, "x")] * 8)
        run(
            call_stage(
                method,
                object(),
                1.0,
                policy=StageRetryPolicy(budget_s=600, initial_backoff_s=0.5, max_backoff_s=3.0),
                service="diffusion",
                clock=time.clock,
                sleep=time.sleep,
            )
        )
        assert len(time.sleeps) == 8
        for n, slept in enumerate(time.sleeps, start=1):
            assert 0.0 <= slept <= min(3.0, 0.5 * 2 ** (n - 1)) + 1e-9  # capped exponential envelope
        runs.append(time.sleeps)
    assert len(set(runs[0])) == 8  # jittered: no two waits alike
    assert runs[0] != runs[1]  # and two calls retrying together do not wait in step
    assert max(runs[0][4:] + runs[1][4:]) > 1.0  # later waits reach well past the first ones' envelope


def test_policy_and_config_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="budget_s"):
        StageRetryPolicy(budget_s=-1)
    with pytest.raises(ValueError, match="backoff"):
        StageRetryPolicy(initial_backoff_s=2, max_backoff_s=1)
    assert GatewayConfig().stage_retry_budget_s == 120.0
    for field, value in (
        ("stage_retry_budget_s", -1.0),
        ("stage_retry_budget_s", float("inf")),
        ("stage_retry_max_backoff_s", 0.0),
    ):
        with pytest.raises(Exception, match=field):
            GatewayConfig(**cast(dict[str, Any], {field: value})).check()


def test_wait_until_serving_is_bounded() -> None:
    time = FakeTime()

    async def never(request: object, **kwargs: object) -> health_pb2.HealthCheckResponse:
        time.now += 0.1
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "Connection refused")

    start = time.now
    assert run(wait_until_serving(never, 3.0, poll_s=0.5, clock=time.clock, sleep=time.sleep)) is False
    assert 3.0 - 1e-9 <= time.now - start <= 3.0 + 0.1 + 1e-9


# ---- the services' response cache ------------------------------------------------------------------


def test_response_cache_is_lru_with_ttl() -> None:
    now = [0.0]
    cache = ResponseCache(max_entries=2, ttl_s=10.0, clock=lambda: now[0])
    a, b, c = ("m", "a", b""), ("m", "b", b""), ("m", "c", b"")
    cache.put(a, 1)
    cache.put(b, 2)
    assert cache.get(a) == 1  # a is now the most recently used
    cache.put(c, 3)
    assert cache.get(b) is None and cache.get(a) == 1 and cache.get(c) == 3  # b was evicted
    now[0] = 10.5
    assert cache.get(a) is None and len(cache) == 1  # expired entries are dropped when read
    with pytest.raises(ValueError):
        ResponseCache(max_entries=0)


def test_a_repeated_call_is_answered_from_memory() -> None:
    """A real grpc.aio server with the interceptor: the same key and request compute once; another
    request under the same key, a call without a key, and a failed call compute every time."""
    computed: list[str] = []

    async def count(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext):
        computed.append(request.service)
        if request.service == "fail":
            raise Unavailable("backend lost its GPU")
        return health_pb2.HealthCheckResponse(status=SERVING if len(computed) % 2 else NOT_SERVING)

    handler = grpc.method_handlers_generic_handler(
        "test.Counter",
        {
            "Count": grpc.unary_unary_rpc_method_handler(
                count,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            )
        },
    )
    interceptor = IdempotencyInterceptor(ResponseCache(max_entries=8))

    async def body() -> None:
        server, port = create_server(
            lambda s: s.add_generic_rpc_handlers((handler,)),
            ["test.Counter"],
            metrics_port=None,
            interceptors=[interceptor],
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(
                    "/test.Counter/Count",
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )

                async def ask(service: str, key: str | None) -> int:
                    md = ((IDEMPOTENCY_KEY, key),) if key else None
                    return (await call(health_pb2.HealthCheckRequest(service=service), metadata=md, timeout=5)).status

                first = await ask("a", "job/v1/x")
                assert await ask("a", "job/v1/x") == first  # same answer, not computed again
                assert computed == ["a"]
                await ask("b", "job/v1/x")  # same key, another request: computed
                await ask("a", None)  # no key: computed
                await ask("a", None)
                assert computed == ["a", "b", "a", "a"]
                for _ in range(2):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await ask("fail", "job/v1/y")
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert computed.count("fail") == 2  # errors are never replayed
                assert interceptor.cache.hits == 1
        finally:
            await server.stop(0)

    run(body())


def test_the_response_cache_is_per_tenant(tmp_path) -> None:
    """Behind the services' tenancy interceptor, the same key and request from another tenant is
    computed afresh: one tenant is never answered with a response stored for another."""
    from glimpse3d.core.artifacts import FileArtifactStore
    from glimpse3d.core.artifacts.base import TENANT_METADATA_KEY, current_tenant
    from glimpse3d.core.service import TenantInterceptor

    computed: list[str | None] = []

    async def count(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext):
        computed.append(current_tenant())
        return health_pb2.HealthCheckResponse(status=SERVING)

    handler = grpc.method_handlers_generic_handler("test.Counter", {"Count": grpc.unary_unary_rpc_method_handler(
        count, request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString)})

    async def body() -> None:
        server, port = create_server(lambda s: s.add_generic_rpc_handlers((handler,)), ["test.Counter"],
                                     metrics_port=None, interceptors=[TenantInterceptor(FileArtifactStore(tmp_path)),
                                                                      IdempotencyInterceptor(ResponseCache(8))])
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Counter/Count",
                                           request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                           response_deserializer=health_pb2.HealthCheckResponse.FromString)
                for tenant in ("acme", "acme", "globex", "globex"):
                    md = ((IDEMPOTENCY_KEY, "job/v1/x"), (TENANT_METADATA_KEY, tenant))
                    await call(health_pb2.HealthCheckRequest(service="same"), metadata=md, timeout=5)
                assert computed == ["acme", "globex"]  # once per tenant, each repeat from its own entry
        finally:
            await server.stop(0)

    run(body())


@pytest.mark.service
def test_calls_caught_by_a_server_shutdown_are_restart_errors() -> None:
    """A call that reaches a server as its graceful shutdown (SIGTERM) begins is not answered: it ends
    CANCELLED without a status from the service, or UNAVAILABLE. Either way the gateway retries it; a
    job failed on a rolling restart when CANCELLED was taken for an answer."""

    async def slow(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext):
        await asyncio.sleep(0.2)
        return health_pb2.HealthCheckResponse(status=SERVING)

    handler = grpc.method_handlers_generic_handler("test.Slow", {"Check": grpc.unary_unary_rpc_method_handler(
        slow, request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString)})

    async def storm() -> list[BaseException | None]:
        server, port = create_server(lambda s: s.add_generic_rpc_handlers((handler,)), ["test.Slow"],
                                     metrics_port=None)
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/test.Slow/Check", request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)
            await call(health_pb2.HealthCheckRequest(), timeout=5)  # connected

            async def one(delay: float) -> BaseException | None:
                await asyncio.sleep(delay)
                try:
                    await call(health_pb2.HealthCheckRequest(), timeout=5)
                except grpc.aio.AioRpcError as err:
                    return err
                return None

            calls = [asyncio.create_task(one(i * 0.0005)) for i in range(60)]
            await asyncio.sleep(0.01)
            await server.stop(1.0)
            return await asyncio.gather(*calls)

    outcomes = [o for _ in range(3) for o in run(storm())]
    failed = [o for o in outcomes if o is not None]
    assert failed, "no call was caught by the shutdown"
    assert all(is_restart_error(err) for err in failed), {str(e)[:120] for e in failed if not is_restart_error(e)}
