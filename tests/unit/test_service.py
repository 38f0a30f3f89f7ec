"""The service runtime: bounded compute, cooperative cancellation, validated artifact I/O."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from glimpse3d.core import convert
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.backend import Backend, LearnedBackend, LearnedOptions
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.config import load_config
from glimpse3d.core.errors import Cancelled, InvalidInput, Overloaded
from glimpse3d.core.images import encode_npy
from glimpse3d.core.service import ArtifactIO, ComputeLimiter, ServiceSettings, backend_from_settings


def _spin(stopped: threading.Event, limit_s: float = 10.0) -> str:
    """Blocking work that polls for cancellation, as fitting loops do."""
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            check_cancelled()
            time.sleep(0.01)
        return "finished"
    except Cancelled:
        stopped.set()
        raise


def test_cancelling_the_call_stops_the_thread_and_frees_the_slot():
    async def scenario() -> None:
        limiter = ComputeLimiter(max_concurrency=1, max_waiting=0)
        stopped = threading.Event()
        task = asyncio.ensure_future(limiter.run(_spin, stopped))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stopped.is_set()  # the worker thread saw the cancellation and stopped
        assert await limiter.run(lambda: 42) == 42  # and the slot is free again

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_full_queue_is_overloaded_not_unbounded():
    async def scenario() -> None:
        limiter = ComputeLimiter(max_concurrency=1, max_waiting=1)
        gate = threading.Event()
        running = asyncio.ensure_future(limiter.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(limiter.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="busy"):
            await limiter.run(lambda: "third")
        gate.set()
        assert await running is True
        assert await waiting == "second"

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_queue_depth_gauges_follow_the_limiter():
    """The gauges an autoscaler reads: calls waiting, calls computing, and the slot count."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    async def scenario() -> None:
        limiter = ComputeLimiter(max_concurrency=1, max_waiting=4)
        limiter.register_metrics(registry)
        assert (sample("glimpse3d_service_queue_depth"), sample("glimpse3d_service_busy")) == (0, 0)
        assert sample("glimpse3d_service_concurrency") == 1
        gate = threading.Event()
        running = asyncio.ensure_future(limiter.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(limiter.run(lambda: "later")) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert (sample("glimpse3d_service_queue_depth"), sample("glimpse3d_service_busy")) == (3, 1)
        gate.set()
        await running
        assert await asyncio.gather(*queued) == ["later"] * 3
        assert (sample("glimpse3d_service_queue_depth"), sample("glimpse3d_service_busy")) == (0, 0)

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_check_cancelled_is_a_no_op_outside_a_call():
    check_cancelled()


def test_artifact_io_names_the_field(tmp_path):
    io = ArtifactIO(FileArtifactStore(tmp_path))
    ref = convert.artifact_to_proto(io.store.put(encode_npy(np.zeros((4, 5), np.float32)), "application/x-npy"))

    async def scenario() -> None:
        assert (await io.array(ref, "depth", shape=(4, 5))).shape == (4, 5)
        with pytest.raises(InvalidInput) as exc:
            await io.array(ref, "mask", shape=(5, 4))
        assert exc.value.field == "mask" and "[5, 4]" in exc.value.message
        with pytest.raises(InvalidInput) as exc:
            await io.image(ref, "view")
        assert exc.value.field == "view"

    asyncio.run(scenario())


@pytest.mark.parametrize(("field", "value"), [
    ("max_concurrency", 0), ("max_waiting", -1), ("torch_threads", 999), ("raster_threads", -1),
    ("backend_options", "{not json"), ("backend_options", "[1, 2]"), ("device", "gpu"), ("device", "cuda:x"),
])
def test_settings_are_validated(field, value):
    with pytest.raises(InvalidInput) as exc:
        ServiceSettings(**{field: value})
    assert exc.value.field == field


def test_backend_options_and_context_reach_the_constructor(monkeypatch, tmp_path):
    """GLIMPSE3D_BACKEND_OPTIONS becomes keyword options; model_dir/device go only to a backend whose
    options have them, and an explicit option of the same name wins."""
    monkeypatch.setenv("GLIMPSE3D_BACKEND", "learned")
    monkeypatch.setenv("GLIMPSE3D_BACKEND_OPTIONS", '{"steps": 3}')
    monkeypatch.setenv("GLIMPSE3D_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("GLIMPSE3D_DEVICE", "cpu")
    settings = load_config(ServiceSettings)
    assert settings.options() == {"steps": 3} and settings.context() == {"model_dir": tmp_path, "device": "cpu"}
    registry = fake_registry(monkeypatch, learned=_Learned, plain=_Plain)
    learned = backend_from_settings(registry, settings, "plain")
    assert (learned.model_dir, learned.options.device, learned.options.steps) == (tmp_path, "cpu", 3)
    explicit = registry.create("learned", context=settings.context(), device="cuda:1")
    assert explicit.options.device == "cuda:1"
    plain = registry.create("plain", context=settings.context())
    assert isinstance(plain, _Plain)
    with pytest.raises(InvalidInput) as exc:  # an option the backend does not have is named
        backend_from_settings(registry, settings.replace(backend="plain"), "plain")
    assert exc.value.field == "steps" and "unknown" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        registry.create("nope")
    assert exc.value.field == "backend" and "learned, plain" in exc.value.message


def fake_registry(monkeypatch, **classes) -> BackendRegistry:
    """A registry of service "test" whose entry points are ``classes``."""
    registry = BackendRegistry("test")
    monkeypatch.setattr(registry, "entries", lambda: {n: _Entry(c) for n, c in classes.items()})
    return registry


class _Entry:
    def __init__(self, cls) -> None:
        self.cls = cls

    def load(self):
        return self.cls


class _LearnedOptions(LearnedOptions):
    steps: int = 1


class _Learned(LearnedBackend):
    service, name, Options = "test", "learned", _LearnedOptions


class _Plain(Backend):
    service, name = "test", "plain"
