"""glimpse3d.core.rpc over real loopback channels: health, reflection, error mapping, metrics,
retries, deadlines, message limits and graceful shutdown on SIGTERM.

The handlers are generic raw-bytes handlers, so these tests need no generated protos.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from glimpse3d.core import errors
from glimpse3d.core.config import ServerConfig
from glimpse3d.core.rpc import (
    DOMAIN,
    Server,
    create_channel,
    create_server,
    create_server_from_config,
    error_from_rpc,
    rich_status_of,
)

SERVICE = "glimpse3d.test.Echo"
OTHER_SERVICE = "glimpse3d.test.Other"
TEST_TIMEOUT_S = 20.0
SLOW_SERVER = Path(__file__).resolve().parents[1] / "rpc_slow_server.py"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

DOMAIN_ERRORS: list[tuple[type[errors.Glimpse3DError], grpc.StatusCode]] = [
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]
ERROR_CLASSES = {cls.__name__: cls for cls, _ in DOMAIN_ERRORS}


def run(coro: Awaitable[None]) -> None:
    """Run one async test body on a fresh loop, bounded in time."""

    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT_S)

    asyncio.run(bounded())


class EchoServicer:
    """Raw-bytes handlers; the counters show how many attempts reached the server."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Request ``ClassName`` or ``ClassName:field``: raise that domain error."""
        name, _, field = request.decode().partition(":")
        message = f"{field} is wrong" if field else f"{name} happened"
        raise ERROR_CLASSES[name](message, field=field or None, metadata={"job": "j-1"})

    async def crash(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("secret detail: /srv/weights/model.bin is missing")

    async def flaky(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Fails with UNAVAILABLE until the third attempt."""
        if self._count("flaky") <= 2:
            raise errors.Unavailable("backend warming up")
        return b"finally"

    async def invalid(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._count("invalid")
        raise errors.InvalidInput("image is empty", field="image")

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode()))
        return b"slept"

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Async-generator stream that fails after two messages (or sleeps, if asked)."""
        yield b"one"
        yield b"two"
        if request:
            await asyncio.sleep(float(request.decode()))
        raise errors.InvalidInput("count must be <= 2", field="count")

    async def stream_write(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """Coroutine stream (context.write) that crashes after one message."""
        await context.write(b"first")
        raise KeyError("internal bookkeeping")

    async def collect(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        """Client stream: joins the chunks; a ``bad`` chunk is a FailedPrecondition."""
        chunks = []
        async for chunk in requests:
            if chunk == b"bad":
                raise errors.FailedPrecondition("chunk 'bad' is not allowed", field="chunks")
            chunks.append(chunk)
        return b"".join(chunks)

    async def chat(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Bidirectional stream: echoes until ``stop``, which is a NotFound."""
        async for message in requests:
            if message == b"stop":
                raise errors.NotFound("conversation 'stop' not found", field="conversation")
            yield message

    def sync_echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request


def add_echo_servicer(servicer: EchoServicer, server: grpc.aio.Server) -> None:
    """The ``add_XServicer_to_server`` shape, for the list form of create_server's register."""
    unary = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name.lower()))
             for name in ("Echo", "Fail", "Crash", "Flaky", "Invalid", "Slow")}
    unary["Stream"] = grpc.unary_stream_rpc_method_handler(servicer.stream)
    unary["StreamWrite"] = grpc.unary_stream_rpc_method_handler(servicer.stream_write)
    unary["Collect"] = grpc.stream_unary_rpc_method_handler(servicer.collect)
    unary["Chat"] = grpc.stream_stream_rpc_method_handler(servicer.chat)
    unary["SyncEcho"] = grpc.unary_unary_rpc_method_handler(servicer.sync_echo)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, unary)])


@asynccontextmanager
async def serving(servicer: EchoServicer, *, serving_now: bool = True, **kwargs: Any) -> AsyncIterator[Server]:
    server, port = create_server([(add_echo_servicer, servicer)], [SERVICE, OTHER_SERVICE], **kwargs)
    assert server.port == port > 0
    await server.start()
    if serving_now:
        await server.set_serving()
    try:
        yield server
    finally:
        await server.stop(0)


def target(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


def method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}")


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return response.status


async def expect_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def unpack_details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    status = rich_status_of(err)
    assert status is not None and status.code == err.code().value[0] and status.message == err.details()
    info, bad_request = error_details_pb2.ErrorInfo(), None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return info, bad_request


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in a Prometheus text exposition, if present."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


# --- health and reflection -------------------------------------------------------------------


def test_health_follows_lifecycle_and_reflection_lists_services() -> None:
    async def body() -> None:
        async with serving(EchoServicer(), serving_now=False) as server:
            channel = create_channel(target(server))
            for name in ("", SERVICE, OTHER_SERVICE):
                assert await health_status(channel, name) == NOT_SERVING
            unknown = await expect_error(health_status(channel, "glimpse3d.test.Nope"))
            assert unknown.code() is grpc.StatusCode.NOT_FOUND

            await server.set_serving()
            for name in ("", SERVICE, OTHER_SERVICE):
                assert await health_status(channel, name) == SERVING
            await server.set_not_serving()
            assert await health_status(channel, SERVICE) == NOT_SERVING
            await server.set_serving()

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            responses = [r async for r in reflection.ServerReflectionInfo(iter([request]), timeout=5)]
            listed = {s.name for s in responses[0].list_services_response.service}
            assert {SERVICE, OTHER_SERVICE, "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection"} <= listed

            # A watch open before shutdown sees NOT_SERVING once shutdown begins.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE),
                                                              timeout=5)
            assert (await watch.read()).status == SERVING
            stopping = asyncio.ensure_future(server.stop(grace=0.5))
            assert (await watch.read()).status == NOT_SERVING
            await server.set_serving()  # ignored once shutdown has begun
            await stopping
            await channel.close()

    run(body())


# --- error mapping ---------------------------------------------------------------------------


def test_domain_errors_map_to_codes_with_rich_details() -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server:
            channel = create_channel(target(server), retry_attempts=1)
            for cls, code in DOMAIN_ERRORS:
                err = await expect_error(method(channel, "Fail")(f"{cls.__name__}:image.width".encode()))
                assert err.code() is code, cls
                assert err.details() == "image.width is wrong"
                info, bad_request = unpack_details(err)
                assert (info.reason, info.domain, dict(info.metadata)) == (cls.reason, DOMAIN, {"job": "j-1"})
                assert bad_request is not None
                assert bad_request.field_violations[0].field == "image.width"
                assert bad_request.field_violations[0].description == "image.width is wrong"

                again = error_from_rpc(err)
                assert type(again) is cls
                assert (again.message, again.field, again.metadata) == ("image.width is wrong", "image.width",
                                                                        {"job": "j-1"})

            no_field = await expect_error(method(channel, "Fail")(b"NotFound"))
            assert unpack_details(no_field)[1] is None
            assert error_from_rpc(no_field).field is None
            assert await method(channel, "Echo")(b"still serving") == b"still serving"
            await channel.close()

    run(body())


def test_unexpected_exception_is_internal_with_generic_message(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server:
            channel = create_channel(target(server), retry_attempts=1)
            err = await expect_error(method(channel, "Crash")(b""))
            assert err.code() is grpc.StatusCode.INTERNAL
            assert err.details().startswith("internal error (ref ")
            assert "secret" not in err.details() and "model.bin" not in str(rich_status_of(err))
            info, _ = unpack_details(err)
            assert info.reason == "INTERNAL" and info.metadata["ref"] in err.details()

            downstream = error_from_rpc(err)
            assert type(downstream) is errors.Glimpse3DError and downstream.reason == "INTERNAL"
            assert await method(channel, "Echo")(b"ok") == b"ok"
            await channel.close()

    with caplog.at_level(logging.INFO):
        run(body())
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert logged and "model.bin" in str(logged[0].exc_info[1])


def test_stream_errors_mid_stream_are_mapped() -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server:
            channel = create_channel(target(server), retry_attempts=1)
            received: list[bytes] = []
            call = channel.unary_stream(f"/{SERVICE}/Stream")(b"")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for message in call:
                    received.append(message)
            assert received == [b"one", b"two"]
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert isinstance(error_from_rpc(caught.value), errors.InvalidInput)
            assert error_from_rpc(caught.value).field == "count"

            written = channel.unary_stream(f"/{SERVICE}/StreamWrite")(b"")
            assert await written.read() == b"first"
            with pytest.raises(grpc.aio.AioRpcError) as crashed:
                await written.read()
            assert crashed.value.code() is grpc.StatusCode.INTERNAL
            assert "bookkeeping" not in crashed.value.details()
            assert await method(channel, "Echo")(b"ok") == b"ok"
            await channel.close()

    run(body())


def test_client_and_bidirectional_streams_are_mapped_and_sync_handlers_pass_through() -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server:
            channel = create_channel(target(server), retry_attempts=1)
            collect = channel.stream_unary(f"/{SERVICE}/Collect")
            assert await collect(iter([b"a", b"b"])) == b"ab"
            err = await expect_error(collect(iter([b"a", b"bad"])))
            assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert error_from_rpc(err).field == "chunks"

            chat = channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"hi", b"there", b"stop", b"never"]))
            received: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for message in chat:
                    received.append(message)
            assert received == [b"hi", b"there"]
            assert type(error_from_rpc(caught.value)) is errors.NotFound

            assert await method(channel, "SyncEcho")(b"sync") == b"sync"
            text = await asyncio.to_thread(scrape, server.metrics_port)
            assert sample(text, "glimpse3d_rpc_requests_total", method=f"/{SERVICE}/Collect", code="OK") == 1
            assert sample(text, "glimpse3d_rpc_requests_total", method=f"/{SERVICE}/Chat", code="NOT_FOUND") == 1
            assert sample(text, "glimpse3d_rpc_requests_total", method=f"/{SERVICE}/SyncEcho", code="OK") is None
            await channel.close()

    run(body())


def test_cancelled_calls_are_counted_and_leave_nothing_in_flight() -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server:
            channel = create_channel(target(server), retry_attempts=1)
            slow = method(channel, "Slow")(b"5")
            stream = channel.unary_stream(f"/{SERVICE}/Stream")(b"5")
            assert await stream.read() == b"one"
            await asyncio.sleep(0.1)
            slow.cancel()
            stream.cancel()
            slow_name, stream_name = f"/{SERVICE}/Slow", f"/{SERVICE}/Stream"
            for _ in range(100):
                text = await asyncio.to_thread(scrape, server.metrics_port)
                counts = [sample(text, "glimpse3d_rpc_requests_total", method=name, code="CANCELLED")
                          for name in (slow_name, stream_name)]
                if counts == [1, 1]:
                    break
                await asyncio.sleep(0.02)
            assert counts == [1, 1]
            assert sample(text, "glimpse3d_rpc_in_flight", method=slow_name) == 0
            assert sample(text, "glimpse3d_rpc_in_flight", method=stream_name) == 0
            await channel.close()

    run(body())


# --- metrics and logs ------------------------------------------------------------------------


def test_metrics_are_served_per_server_with_method_and_code(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server, serving(EchoServicer()) as other:
            assert server.metrics_port and other.metrics_port and server.metrics_port != other.metrics_port
            channel = create_channel(target(server), retry_attempts=1)
            await method(channel, "Echo")(b"a")
            await method(channel, "Echo")(b"b", metadata=(("x-request-id", "req-42"),))
            await expect_error(method(channel, "Invalid")(b""))
            await health_status(channel)
            text = await asyncio.to_thread(scrape, server.metrics_port)
            echo, invalid = f"/{SERVICE}/Echo", f"/{SERVICE}/Invalid"
            assert sample(text, "glimpse3d_rpc_requests_total", method=echo, code="OK") == 2
            assert sample(text, "glimpse3d_rpc_requests_total", method=invalid, code="INVALID_ARGUMENT") == 1
            assert sample(text, "glimpse3d_rpc_latency_seconds_count", method=echo, code="OK") == 2
            assert sample(text, "glimpse3d_rpc_latency_seconds_bucket", method=invalid, code="INVALID_ARGUMENT",
                          le="+Inf") == 1
            assert sample(text, "glimpse3d_rpc_in_flight", method=echo) == 0
            assert "grpc.health.v1" not in text
            other_text = await asyncio.to_thread(scrape, other.metrics_port)
            assert sample(other_text, "glimpse3d_rpc_requests_total", method=echo, code="OK") is None  # per server
            metrics_port = server.metrics_port
            await channel.close()
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(scrape, metrics_port)

    with caplog.at_level(logging.INFO, logger="glimpse3d.rpc"):
        run(body())
    calls = [r for r in caplog.records if r.getMessage() == "rpc finished"]
    assert {(r.method, r.code) for r in calls} == {(f"/{SERVICE}/Echo", "OK"), (f"/{SERVICE}/Invalid",
                                                                                 "INVALID_ARGUMENT")}
    assert all(r.duration_ms >= 0 and r.peer for r in calls)
    assert [r.request_id for r in calls if r.request_id] == ["req-42"]


def test_server_from_config_without_metrics() -> None:
    async def body() -> None:
        config = ServerConfig(metrics_port=-1, grace_seconds=0.0)
        server, port = create_server_from_config([(add_echo_servicer, EchoServicer())], [SERVICE], config)
        await server.start()
        assert port > 0 and server.metrics_port is None
        channel = create_channel(f"127.0.0.1:{port}")
        assert await method(channel, "Echo")(b"cfg") == b"cfg"
        await channel.close()
        await server.stop()

    run(body())


# --- client channel: retries, deadlines, limits ----------------------------------------------


def test_unavailable_is_retried_and_other_codes_are_not() -> None:
    async def body() -> None:
        servicer = EchoServicer()
        async with serving(servicer) as server:
            channel = create_channel(target(server), initial_backoff_s=0.01, max_backoff_s=0.05)
            assert await method(channel, "Flaky")(b"") == b"finally"
            assert servicer.calls["flaky"] == 3

            err = await expect_error(method(channel, "Invalid")(b""))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and servicer.calls["invalid"] == 1

            servicer.calls.clear()
            no_retry = create_channel(target(server), retry_attempts=1)
            err = await expect_error(method(no_retry, "Flaky")(b""))
            assert err.code() is grpc.StatusCode.UNAVAILABLE and servicer.calls["flaky"] == 1
            assert isinstance(error_from_rpc(err), errors.Unavailable)
            await channel.close()
            await no_retry.close()
        closed = create_channel(target(server), retry_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
        err = await expect_error(method(closed, "Echo")(b""))
        refused = error_from_rpc(err)
        assert type(refused) is errors.Unavailable and "127.0.0.1" not in refused.message
        await closed.close()

    run(body())


def test_default_deadline_applies_to_calls_without_timeout() -> None:
    async def body() -> None:
        async with serving(EchoServicer()) as server:
            channel = create_channel(target(server), default_timeout_s=0.2)
            started = time.monotonic()
            err = await expect_error(method(channel, "Slow")(b"2"))
            assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 1.5
            assert isinstance(error_from_rpc(err), errors.DeadlineExceeded)
            assert await method(channel, "Slow")(b"0.4", timeout=3) == b"slept"  # explicit timeout wins
            text = await asyncio.to_thread(scrape, server.metrics_port)
            slow = f"/{SERVICE}/Slow"
            assert sample(text, "glimpse3d_rpc_requests_total", method=slow, code="DEADLINE_EXCEEDED") == 1

            stream = channel.unary_stream(f"/{SERVICE}/Stream")(b"2")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stream:
                    pass
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await channel.close()

    run(body())


def test_message_size_limits_are_enforced() -> None:
    async def body() -> None:
        async with serving(EchoServicer(), max_message_bytes=64 * 1024) as server:
            channel = create_channel(target(server))
            assert len(await method(channel, "Echo")(b"x" * 60_000)) == 60_000
            err = await expect_error(method(channel, "Echo")(b"x" * 100_000))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

            small = create_channel(target(server), max_message_bytes=1024)
            err = await expect_error(method(small, "Echo")(b"x" * 2048))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            await channel.close()
            await small.close()

    run(body())


# --- graceful shutdown -----------------------------------------------------------------------


async def wait_until_serving(channel: grpc.aio.Channel, deadline_s: float) -> None:
    stop_at = time.monotonic() + deadline_s
    while True:
        try:
            if await health_status(channel) == SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < stop_at, "subprocess server never became SERVING"
        await asyncio.sleep(0.05)


async def shutdown_scenario(proc: subprocess.Popen[str], grace_s: float) -> None:
    assert proc.stdout is not None
    port = int(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15))
    channel = create_channel(f"127.0.0.1:{port}", retry_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.05)
    await wait_until_serving(channel, 15)
    sleep = channel.unary_unary("/glimpse3d.test.Slow/Sleep")(b"1.0")
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.sleep(0.2)
    refused = await expect_error(channel.unary_unary("/glimpse3d.test.Slow/Echo")(b"late"))
    assert refused.code() is grpc.StatusCode.UNAVAILABLE
    assert await sleep == b"slept"  # the call in flight finished
    returncode = await asyncio.to_thread(proc.wait, grace_s + 5)
    assert returncode == 0
    assert time.monotonic() - signalled < grace_s
    await channel.close()


def test_sigterm_drains_calls_in_flight_and_refuses_new_ones() -> None:
    grace_s = 5.0
    proc = subprocess.Popen([sys.executable, str(SLOW_SERVER), str(grace_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run(shutdown_scenario(proc, grace_s))
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    finished = [r for r in records if r["msg"] == "rpc finished"]
    assert {"method": "/glimpse3d.test.Slow/Sleep", "code": "OK"}.items() <= finished[0].items()
    assert any(r["msg"] == "received SIGTERM, draining" for r in records)
    assert all(r["service"] == "rpc-slow-server" and r["ts"].endswith("Z") for r in records)

