"""The client every service's ``triton`` backend uses to call its model in Triton over gRPC.

:class:`TritonModel` wraps ``tritonclient.grpc`` with the behaviour a service needs:

- **Readiness.** :meth:`TritonModel.wait_ready` polls until the server is live and the model is
  ready (bounded by ``ready_timeout_s``); a service's ``load()`` calls it, so the service's health
  check says SERVING only once its model can answer. It also reads the model's ``max_batch_size``:
  for a batching model the client adds the batch axis to every input and strips it from outputs.
- **Deadlines.** Every call has ``timeout_s`` (Triton cancels the request on the server side too);
  running out is :class:`~glimpse3d.core.errors.DeadlineExceeded`.
- **Retries.** gRPC does them, from the channel's service config (:func:`triton_channel_args`): a call
  first waits up to ``retry_s`` for the server to be reachable (``channel_ready_future``; past it:
  :class:`~glimpse3d.core.errors.Unavailable` naming the model and the address), then runs with
  ``waitForReady`` and a retry policy for UNAVAILABLE and RESOURCE_EXHAUSTED (at most 5 attempts,
  gRPC's cap), so a call whose server goes away mid-flight waits for it to come back, up to the
  call's deadline. Retrying is safe because every model is a pure function of its inputs (seeds
  included). The channel logs "Triton unavailable, retrying" when it loses the server.
- **Errors.** A project error raised inside the model (bad input, missing weights) comes back as the
  same class (:func:`~.tensors.decode_error`), so callers see the same gRPC status as in-process.

The backend options of every ``triton`` backend (``GLIMPSE3D_BACKEND_OPTIONS``) are the fields of
:class:`TritonOptions` plus the model name, e.g. ``{"url": "triton-depth:8001", "model": "depth_dpt"}``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glimpse3d.core.backend import BackendOptions
from glimpse3d.core.errors import DeadlineExceeded, Glimpse3DError, InvalidInput, Unavailable
from glimpse3d.core.rpc.client import MAX_RETRY_ATTEMPTS, retry_service_config
from glimpse3d.core.triton.tensors import decode_error

log = logging.getLogger(__name__)

DEFAULT_URL = "127.0.0.1:8001"
# gRPC status codes (as tritonclient spells them) that mean "not now" rather than "never".
_RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
# Messages Triton gives, with other status codes, for a model that is loading or being replaced.
_RETRYABLE_MESSAGES = ("is not ready", "unknown model", "failed to connect", "socket closed", "connection refused")
_INFER_METHOD = {"service": "inference.GRPCInferenceService", "method": "ModelInfer"}
_RETRY_BUFFER_BYTES = 1 << 30  # requests up to this size stay retryable (gRPC's default per call: 256 KiB)


def triton_channel_args(retry_s: float) -> list[tuple[str, Any]]:
    """tritonclient's own channel args (message sizes, keepalive) plus, unless ``retry_s`` is 0, gRPC's
    retries for ModelInfer: wait for ready, UNAVAILABLE and RESOURCE_EXHAUSTED retried (5 attempts)."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.enable_retries", int(retry_s > 0)),
        # a server that comes back is reconnected to within seconds (gRPC's default backoff grows to 120 s)
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if retry_s > 0:
        config = retry_service_config(MAX_RETRY_ATTEMPTS, 0.5, 5.0, codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"),
                                      wait_for_ready=True, method=_INFER_METHOD)
        args += [("grpc.service_config", config), ("grpc.per_rpc_retry_buffer_size", _RETRY_BUFFER_BYTES),
                 ("grpc.retry_buffer_size", _RETRY_BUFFER_BYTES)]
    return args


def _positive(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{field} must be a positive number of seconds, got {value!r}", field=field)
    return float(value)


def _non_negative(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{field} must be a number of seconds >= 0, got {value!r}", field=field)
    return float(value)


@dataclass(frozen=True)
class TritonOptions:
    """Where the model is served and how long to wait for it.

    url: Triton's gRPC endpoint ``host:port``.
    timeout_s: deadline of one inference call.
    retry_s: how long a call waits for an unreachable server before it fails with UNAVAILABLE; a call
        the server drops mid-flight is retried by gRPC and waits for it up to ``timeout_s``
        (0: no waiting and no retries).
    ready_timeout_s: how long ``load()`` waits for the server and the model to be ready.
    """

    url: str = DEFAULT_URL
    timeout_s: float = 600.0
    retry_s: float = 60.0
    ready_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        host, sep, port = self.url.rpartition(":")
        if not isinstance(self.url, str) or not sep or not host or not port.isdigit() or "/" in self.url:
            raise InvalidInput(f"url must be Triton's gRPC endpoint host:port, got {self.url!r}", field="url")
        _positive(self.timeout_s, "timeout_s")
        _non_negative(self.retry_s, "retry_s")
        _positive(self.ready_timeout_s, "ready_timeout_s")


def _check_model_name(model: object) -> str:
    if not isinstance(model, str) or not model or not all(c.isalnum() or c in "_-." for c in model):
        raise InvalidInput(f"model must be a Triton model name, got {model!r}", field="model")
    return model


class TritonModel:
    """One model in one Triton server (thread-safe: the gRPC channel is shared)."""

    def __init__(self, model: str, options: TritonOptions | None = None) -> None:
        self.model = _check_model_name(model)
        self.options = options or TritonOptions()
        self._client: Any = None
        self._connectivity: Any = None
        self._lock = threading.Lock()
        self.max_batch_size: int | None = None  # known after wait_ready()

    def __repr__(self) -> str:
        return f"TritonModel({self.model!r} at {self.options.url})"

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import tritonclient.grpc as grpcclient

                self._client = grpcclient.InferenceServerClient(
                    self.options.url, channel_args=triton_channel_args(self.options.retry_s))
                self._client._channel.subscribe(self._connectivity_changed)  # tritonclient keeps no other handle
            return self._client

    def _connectivity_changed(self, state: Any) -> None:
        import grpc

        lost = state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
        if lost and self._connectivity != state and self.options.retry_s > 0:
            log.warning("Triton unavailable, retrying", extra={"model": self.model, "url": self.options.url})
        self._connectivity = state

    def _wait_reachable(self) -> None:
        """Up to ``retry_s`` for the channel to connect (at once when it is); Unavailable past it."""
        import grpc

        try:
            grpc.channel_ready_future(self.client._channel).result(timeout=self.options.retry_s or None)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"Triton model {self.model!r} at {self.options.url} is unavailable: the server was "
                              f"unreachable for {self.options.retry_s:g} s (retry_s)", field="url",
                              metadata={"model": self.model, "url": self.options.url}) from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client._channel.unsubscribe(self._connectivity_changed)
                self._client.close()
                self._client = None

    def is_ready(self) -> bool:
        """True when the server answers and has this model ready (one quick probe, no retries)."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self.client.is_server_live(client_timeout=5.0)) and bool(
                self.client.is_model_ready(self.model, client_timeout=5.0))
        except InferenceServerException:
            return False

    def wait_ready(self) -> None:
        """Block until the model is ready, then read its batching; :class:`Unavailable` after
        ``ready_timeout_s``."""
        deadline = time.monotonic() + self.options.ready_timeout_s
        delay = 0.2
        while not self.is_ready():
            if time.monotonic() + delay > deadline:
                raise Unavailable(
                    f"Triton model {self.model!r} at {self.options.url} was not ready within "
                    f"{self.options.ready_timeout_s:g} s (is the server running and the model in its repository?)",
                    field="url", metadata={"model": self.model, "url": self.options.url})
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        config = self.client.get_model_config(self.model, as_json=True, client_timeout=10.0)
        self.max_batch_size = int(config.get("config", config).get("max_batch_size", 0))
        log.info("Triton model ready", extra={"model": self.model, "url": self.options.url,
                                               "max_batch_size": self.max_batch_size})

    def infer(
        self, inputs: Mapping[str, np.ndarray | None], outputs: Sequence[str], *, timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (None values are left out: optional inputs) and return the
        requested ``outputs`` as numpy arrays."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        if self.max_batch_size is None:
            self.wait_ready()
        batched = bool(self.max_batch_size)
        request = []
        for name, value in inputs.items():
            if value is None:
                continue
            arr = np.asarray(value)
            arr = arr[None] if batched else arr
            tensor = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(arr))
            request.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        if self.options.retry_s > 0:
            self._wait_reachable()
        try:
            result = self.client.infer(self.model, request, outputs=wanted, client_timeout=timeout)
        except InferenceServerException as exc:
            raise self._classify(exc, timeout) from None
        out: dict[str, np.ndarray] = {}
        for name in outputs:
            arr = result.as_numpy(name)
            if arr is None:
                raise Unavailable(f"Triton model {self.model!r} at {self.options.url} returned no output {name!r}",
                                  metadata={"model": self.model})
            out[name] = arr[0] if batched else arr
        return out

    def _classify(self, exc: Any, timeout: float) -> Glimpse3DError:
        """The project error for a failed call."""
        message = exc.message() or str(exc)
        decoded = decode_error(message)
        if decoded is not None:
            return decoded
        status = str(exc.status() or "")
        where = f"Triton model {self.model!r} at {self.options.url}"
        meta = {"model": self.model, "url": self.options.url, "status": status}
        if status == "StatusCode.DEADLINE_EXCEEDED" or "deadline exceeded" in message.lower():
            return DeadlineExceeded(f"{where} did not answer within {timeout:g} s", metadata=meta)
        if status in _RETRYABLE or any(m in message.lower() for m in _RETRYABLE_MESSAGES):
            return Unavailable(f"{where} is unavailable: {message}", metadata=meta)
        if status == "StatusCode.INVALID_ARGUMENT":
            return InvalidInput(f"{where} rejected the request: {message}", metadata=meta)
        return Unavailable(f"{where} failed ({status or 'no status'}): {message}", metadata=meta)


class TritonBackendOptions(BackendOptions):
    """Options of every ``triton`` backend: the model (empty: the backend's default) and
    :class:`TritonOptions`' fields."""

    model: str = ""
    url: str = DEFAULT_URL
    timeout_s: float = 600.0
    retry_s: float = 60.0
    ready_timeout_s: float = 900.0

    def triton_options(self) -> TritonOptions:
        return TritonOptions(self.url, self.timeout_s, self.retry_s, self.ready_timeout_s)


class TritonMixin:
    """Mixin that makes a service API class a ``triton`` backend (``class TritonDepthBackend(TritonMixin,
    DepthBackend)``): the model, its options, and ``load`` waiting for the model to be ready."""

    name = "triton"
    default_model = ""
    Options: Any = TritonBackendOptions
    options: TritonBackendOptions

    def _setup(self) -> None:
        self.triton = self.triton_model(self.options.model or self.default_model)

    def triton_model(self, model: str) -> TritonModel:
        """Another model on the same server with the same timeouts."""
        return TritonModel(model, self.options.triton_options())

    def _load(self) -> None:
        """Wait for the Triton model (the service says SERVING only after this returns)."""
        self.triton.wait_ready()

