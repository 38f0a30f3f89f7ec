"""Runtime shared by the five backend services: settings, bounded compute, artifact I/O,
cancellation and the ``main()`` that wires a servicer into :func:`glimpse3d.core.rpc.create_server`.

Each service keeps only its servicer (a thin adapter) and its backends; this module does the rest
once. CPU/GPU work runs in worker threads through :class:`ComputeLimiter`, which bounds both the
work in progress and the calls waiting for it (a full queue answers RESOURCE_EXHAUSTED). When a
call is cancelled (the client went away or the gateway cancelled the job), the running work sees
it at its next :func:`check_cancelled` and stops.

Tenancy: every call works for the tenant its ``x-glimpse3d-tenant`` metadata names (the gateway sends
the job's tenant; the gateway-to-service hop is mutually authenticated, so the metadata is trusted).
:class:`TenantInterceptor`, installed on every service, is the one place that checks it: a call without
a tenant is UNAUTHENTICATED, and one with a reference (any ``ArtifactRef`` field of the request, at any
depth) outside its tenant is PERMISSION_DENIED naming the field (``views[2].rgb.uri``), both before the
response cache or the servicer run. The servicer then runs in :func:`tenant_scope`, so its outputs are
stored under the tenant and the store itself refuses any other tenant's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Gauge

from glimpse3d.core import convert
from glimpse3d.core.artifacts import (
    TENANT_METADATA_KEY,
    ArtifactRef,
    ArtifactStore,
    check_tenant_name,
    outside_tenant,
    store_from_env,
    tenant_scope,
)
from glimpse3d.core.backend import METRICS, Backend, check_device
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cancel import cancel_scope
from glimpse3d.core.config import ConfigError, ServerConfig, Settings, load_config
from glimpse3d.core.errors import InvalidInput, Overloaded, PermissionDenied, Unauthenticated
from glimpse3d.core.formats import read_ply, splat_to_ply_bytes
from glimpse3d.core.images import decode_image, decode_npy, encode_npy, encode_png
from glimpse3d.core.logs import configure_logging
from glimpse3d.core.models import DEFAULT_MODEL_DIR
from glimpse3d.core.rpc import Registration, create_server, create_server_from_config
from glimpse3d.core.rpc.idempotency import IdempotencyInterceptor
from glimpse3d.core.rpc.interceptors import UNOBSERVED_PREFIXES
from glimpse3d.core.splat import Splat
from glimpse3d.v1 import common_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

MEDIA_PNG = "image/png"
MEDIA_NPY = "application/x-npy"
MEDIA_PLY = "application/x-glimpse3d-splat+ply"

class ServiceSettings(Settings):
    """Settings every backend service shares (``GLIMPSE3D_*`` variables).

    backend: which backend to serve; empty means the service's weight-free default.
    max_concurrency: calls computing at once (threads), 1..64.
    max_waiting: calls allowed to wait for a slot before RESOURCE_EXHAUSTED, 0..10000.
    torch_threads: intra-op threads for torch, 0 keeps torch's default.
    raster_threads: threads of the compiled CPU rasterizer's kernels, 0: torch's default count (see
        :func:`configure_torch`).
    artifact_max_bytes: largest artifact a request may make the service read.
    ready_file: when set, a JSON file {"port", "metrics_port"} written once the service is SERVING
        (lets launchers use port 0 without races).
    model_dir: where learned backends find their weights (``make models`` fills it); see
        :mod:`glimpse3d.core.models`.
    device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; learned backends only.
    backend_options: a JSON object of keyword options for the selected backend, for example
        ``{"steps": 20, "cpu_offload": true}``; an unknown option is a startup error naming it.
    """

    backend: str = ""
    max_concurrency: int = 1
    max_waiting: int = 16
    torch_threads: int = 0
    raster_threads: int = 0
    artifact_max_bytes: int = 512 * 1024 * 1024
    ready_file: Path | None = None
    model_dir: Path = DEFAULT_MODEL_DIR
    device: str = "auto"
    backend_options: str = ""

    def check(self) -> None:
        self.options()  # a malformed JSON object fails at startup, not at the first request
        try:
            check_device(self.device)
        except ValueError as err:
            raise ConfigError(f"{err}, got {self.device!r}", field="device") from None
        if not 1 <= self.max_concurrency <= 64:
            raise ConfigError(f"max_concurrency must be in 1..64, got {self.max_concurrency}", field="max_concurrency")
        if not 0 <= self.max_waiting <= 10000:
            raise ConfigError(f"max_waiting must be in 0..10000, got {self.max_waiting}", field="max_waiting")
        if not 0 <= self.torch_threads <= 256:
            raise ConfigError(f"torch_threads must be in 0..256, got {self.torch_threads}", field="torch_threads")
        if not 0 <= self.raster_threads <= 256:
            raise ConfigError(f"raster_threads must be in 0..256, got {self.raster_threads}", field="raster_threads")
        if self.artifact_max_bytes < 1024:
            raise ConfigError("artifact_max_bytes must be at least 1024", field="artifact_max_bytes")

    def options(self) -> dict[str, Any]:
        """``backend_options`` parsed: a JSON object (empty string = no options)."""
        if not self.backend_options.strip():
            return {}
        try:
            value = json.loads(self.backend_options)
        except json.JSONDecodeError as err:
            raise ConfigError(f"backend_options is not valid JSON: {err}", field="backend_options") from None
        if not isinstance(value, dict):
            raise ConfigError("backend_options must be a JSON object", field="backend_options")
        return value

    def context(self) -> dict[str, Any]:
        """Service-wide values a backend constructor may take (see :meth:`BackendRegistry.create`)."""
        return {"model_dir": self.model_dir, "device": self.device}


def backend_from_settings(registry: BackendRegistry[T], settings: ServiceSettings, default: str) -> T:
    """Create (not load) the backend ``settings.backend`` (or ``default``) with its options."""
    return registry.create(settings.backend or default, context=settings.context(), **settings.options())


class ComputeLimiter:
    """Runs blocking work in threads, at most ``max_concurrency`` at once, with a bounded wait list."""

    def __init__(self, max_concurrency: int = 1, max_waiting: int = 16, service: str = "", backend: str = "") -> None:
        self.service, self.backend = service, backend  # labels of the queue-wait histogram
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_waiting = max_waiting
        self._waiting = 0
        self._running = 0
        self.max_concurrency = max_concurrency

    @property
    def waiting(self) -> int:
        """Calls waiting for a compute slot now (the service's queue depth)."""
        return self._waiting

    @property
    def running(self) -> int:
        """Calls holding a compute slot now."""
        return self._running

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the queue as gauges read at scrape time (autoscalers use the queue depth), and the
        backends' load, call and queue-wait histograms."""
        METRICS.register(registry)
        Gauge(
            "glimpse3d_service_queue_depth", "Calls waiting for a compute slot.", registry=registry
        ).set_function(lambda: self._waiting)
        Gauge(
            "glimpse3d_service_busy", "Calls computing now.", registry=registry
        ).set_function(lambda: self._running)
        Gauge(
            "glimpse3d_service_concurrency", "Calls allowed to compute at once.", registry=registry
        ).set(self.max_concurrency)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise Overloaded(
                f"service is busy: {self.max_concurrency} calls running and {self._waiting} waiting; retry later"
            )
        self._waiting += 1
        queued = time.perf_counter()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        METRICS.queue_seconds.labels(self.service, self.backend).observe(time.perf_counter() - queued)
        self._running += 1
        try:
            with cancel_scope() as event:
                work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                event.set()  # the thread stops at its next check_cancelled(); keep the slot until it has
                with contextlib.suppress(BaseException):
                    await work
                raise
        finally:
            self._running -= 1
            self._slots.release()


class ArtifactIO:
    """Reads and writes request artifacts with validation; errors name the request field."""

    def __init__(self, store: ArtifactStore, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.store = store
        self.max_bytes = max_bytes

    async def _get(self, msg: common_pb2.ArtifactRef, field: str) -> bytes:
        """The bytes of a request's reference; the store refuses (PERMISSION_DENIED) one outside the
        call's tenant scope, which :class:`TenantInterceptor` has normally refused already."""
        ref = convert.artifact_from_proto(msg, field)
        try:
            return await asyncio.to_thread(self.store.get, ref, max_bytes=self.max_bytes)
        except InvalidInput as err:
            raise InvalidInput(f"{field}: {err.message}", field=field) from None
        except PermissionDenied as err:
            raise PermissionDenied(f"{field}: {err.message}", field=f"{field}.uri") from None

    async def image(self, msg: common_pb2.ArtifactRef, field: str) -> np.ndarray:
        """uint8 [H, W, 3|4]."""
        return decode_image(await self._get(msg, field), field=field)

    async def array(self, msg: common_pb2.ArtifactRef, field: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """float32 array from .npy; ``shape`` (when given) must match exactly."""
        arr = decode_npy(await self._get(msg, field), field=field)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise InvalidInput(f"{field} must have shape {list(shape)}, got {list(arr.shape)}", field=field)
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InvalidInput(f"{field} contains NaN or infinite values", field=field)
        return arr

    async def splat(self, msg: common_pb2.ArtifactRef, field: str) -> Splat:
        data = await self._get(msg, field)
        try:
            return await asyncio.to_thread(read_ply, data)
        except InvalidInput as err:
            raise InvalidInput(f"{field}: {err.message}", field=field) from None

    async def _put(self, data: bytes, media_type: str, temporary: bool) -> common_pb2.ArtifactRef:
        ref: ArtifactRef = await asyncio.to_thread(self.store.put, data, media_type, temporary=temporary)
        return convert.artifact_to_proto(ref)

    # ``temporary=True`` marks an intermediate result that the S3 store expires after some days
    # (GLIMPSE3D_S3_TEMP_EXPIRY_DAYS); durable outputs are the ones job versions refer to.

    async def put_png(self, img: np.ndarray, *, temporary: bool = False) -> common_pb2.ArtifactRef:
        return await self._put(await asyncio.to_thread(encode_png, img), MEDIA_PNG, temporary)

    async def put_array(self, arr: np.ndarray, *, temporary: bool = False) -> common_pb2.ArtifactRef:
        return await self._put(encode_npy(np.asarray(arr, dtype=np.float32)), MEDIA_NPY, temporary)

    async def put_splat(self, splat: Splat, *, temporary: bool = False) -> common_pb2.ArtifactRef:
        return await self._put(await asyncio.to_thread(splat_to_ply_bytes, splat), MEDIA_PLY, temporary)


def artifact_fields(message: Message, path: str = "") -> Iterator[tuple[str, common_pb2.ArtifactRef]]:
    """Every set ``ArtifactRef`` in ``message`` (nested messages and repeated fields included), with its
    field path in the services' error style (``image``, ``views[0].rgb``)."""
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        name = f"{path}.{descriptor.name}" if path else descriptor.name
        is_repeated = descriptor.is_repeated
        if descriptor.message_type.GetOptions().map_entry:
            continue  # the services' messages have no maps of artifacts
        items = [(f"{name}[{i}]", item) for i, item in enumerate(value)] if is_repeated else [(name, value)]
        for item_path, item in items:
            if descriptor.message_type.full_name == common_pb2.ArtifactRef.DESCRIPTOR.full_name:
                if item.uri:
                    yield item_path, item
            else:
                yield from artifact_fields(item, item_path)


def call_tenant(metadata: Any) -> str:
    """The tenant named by a call's ``x-glimpse3d-tenant`` metadata; UNAUTHENTICATED without one."""
    for key, value in metadata or ():
        if key == TENANT_METADATA_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return check_tenant_name(text)
    raise Unauthenticated(
        f"the call names no tenant ({TENANT_METADATA_KEY} metadata); services act only on behalf of a tenant",
        field=TENANT_METADATA_KEY,
    )


def check_request_tenant(store: ArtifactStore, request: Message, tenant: str) -> None:
    """PERMISSION_DENIED naming the first field of ``request`` whose reference is outside ``tenant``."""
    for path, msg in artifact_fields(request):
        ref = convert.artifact_from_proto(msg, path)  # the same validation (and field names) as reading it
        try:
            owner = store.tenant_of(ref)
        except InvalidInput as err:
            raise InvalidInput(f"{path}: {err.message}", field=f"{path}.uri") from None
        if owner != tenant:
            raise outside_tenant(ref.uri, tenant, f"{path}.uri")


class TenantInterceptor(grpc.aio.ServerInterceptor):
    """Runs every call of a service (health and reflection aside) for the tenant in its metadata, after
    checking that all the request's artifact references are that tenant's (see the module docstring).
    Install it before the response cache, so that a stored answer is only ever given to its tenant."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNOBSERVED_PREFIXES):
            return handler
        behavior = handler.unary_unary
        if handler.request_streaming or handler.response_streaming or not asyncio.iscoroutinefunction(behavior):
            raise TypeError(f"{handler_call_details.method}: services serve unary async calls only")
        metadata = tuple(handler_call_details.invocation_metadata or ())
        store = self._store

        async def scoped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            tenant = call_tenant(metadata)
            check_request_tenant(store, request, tenant)
            with tenant_scope(tenant):
                return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            scoped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def service_interceptors(store: ArtifactStore) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors of every service, outermost first: tenancy, then the response cache."""
    return [TenantInterceptor(store), IdempotencyInterceptor()]


@dataclass
class ServiceRuntime:
    """What a servicer factory gets: settings, artifact I/O and the compute limiter."""

    settings: ServiceSettings
    io: ArtifactIO
    limiter: ComputeLimiter


# Builds a service: returns its gRPC registration and the blocking backend load function.
Builder = Callable[[ServiceRuntime], tuple[Registration, Callable[[], None]]]


def _label_backend(runtime: ServiceRuntime, load: Callable[[], None]) -> None:
    """Label the queue-wait histogram with the backend whose ``load`` the builder returned."""
    backend = getattr(load, "__self__", None)
    if isinstance(backend, Backend):
        runtime.limiter.service = runtime.limiter.service or backend.service
        runtime.limiter.backend = backend.name
    else:
        runtime.limiter.backend = runtime.settings.backend or "default"


def configure_torch(settings: ServiceSettings) -> None:
    """Apply thread settings to torch when this process uses it: called once the backend has loaded, so
    a service whose backend never imports torch (the weight-free depth and diffusion backends) does not
    import it for this (about a second of CPU at start, per process).

    ``torch_threads`` sets torch's intra-op threads. The compiled CPU rasterizer's kernels keep the count
    torch had before (its default: the cores), unless ``raster_threads`` names one: they scale with cores,
    while the many small operations around them are faster single-threaded at these sizes (the embedded
    stack runs every service on its weight-free backend with ``torch_threads`` 1: gateway.stack)."""
    if (settings.torch_threads or settings.raster_threads) and "torch" in sys.modules:
        import torch

        from glimpse3d.core.render import _cpu_raster

        _cpu_raster.set_threads(settings.raster_threads or torch.get_num_threads())
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        log.info("torch threads set", extra={"torch_threads": torch.get_num_threads(),
                                             "raster_threads": _cpu_raster.threads()})


def write_ready_file(path: Path, port: int, metrics_port: int | None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"port": port, "metrics_port": metrics_port, "pid": os.getpid()}))
    os.replace(tmp, path)


async def serve(
    name: str,
    service_names: list[str],
    build: Builder,
    *,
    server_config: ServerConfig | None = None,
    settings: ServiceSettings | None = None,
    store: ArtifactStore | None = None,
) -> None:
    """Run a service until SIGTERM: make the artifact store ready (an unreachable one stops the
    service here, with Unavailable), build the servicer, bind, load the backend in a thread (the
    health check says NOT_SERVING until it has loaded), then serve."""
    server_config = server_config or load_config(ServerConfig)
    settings = settings or load_config(ServiceSettings)
    store = store or store_from_env()
    await asyncio.to_thread(store.ensure_ready)
    runtime = ServiceRuntime(
        settings=settings,
        io=ArtifactIO(store, settings.artifact_max_bytes),
        limiter=ComputeLimiter(settings.max_concurrency, settings.max_waiting, service=name),
    )
    registration, load = build(runtime)
    _label_backend(runtime, load)
    # A stage call the gateway repeats (same idempotency key and request) is answered from memory.
    server, port = create_server_from_config(registration, service_names, server_config,
                                             interceptors=service_interceptors(store))
    runtime.limiter.register_metrics(server.registry)
    log.info("%s listening", name, extra={"port": port, "metrics_port": server.metrics_port})

    async def _load() -> None:
        await asyncio.to_thread(load)
        configure_torch(settings)
        if settings.ready_file is not None:
            write_ready_file(settings.ready_file, port, server.metrics_port)
        log.info("%s ready", name, extra={"port": port})

    await server.serve_forever(_load)


@contextlib.asynccontextmanager
async def running_in_process(
    build: Builder, service_names: list[str], settings: ServiceSettings, store: ArtifactStore
) -> AsyncIterator[tuple[int, Registration]]:
    """A service built and loaded in this process, serving on a loopback port 0 (for tests and
    benchmarks): yields ``(port, registration)``; the registration's servicers expose their backend."""
    runtime = ServiceRuntime(
        settings=settings,
        io=ArtifactIO(store, settings.artifact_max_bytes),
        limiter=ComputeLimiter(settings.max_concurrency, settings.max_waiting),
    )
    registration, load = build(runtime)
    _label_backend(runtime, load)
    await asyncio.to_thread(load)
    server, port = create_server(registration, service_names, metrics_port=None,
                                 interceptors=service_interceptors(store))
    await server.start()
    await server.set_serving()
    try:
        yield port, registration
    finally:
        await server.stop(0)


def main(name: str, service_names: list[str], build: Builder) -> None:
    """Entry point for ``python -m glimpse3d.services.<name>``."""
    server_config = load_config(ServerConfig)
    configure_logging(name, server_config.log_level, server_config.log_json)
    asyncio.run(serve(name, service_names, build, server_config=server_config))

