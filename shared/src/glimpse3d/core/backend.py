"""What a backend is: options, a load lifecycle, one call path, metrics.

Every service backend derives from :class:`Backend` (weight-free) or :class:`LearnedBackend`
(weights in the model directory). A service's ``api.py`` adds its public methods; a backend writes
only ``Options``, ``_load`` and the ``_predict``-style methods. ``docs/backends.md`` shows a worked
example. This module does not import torch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, final

from prometheus_client import Histogram
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.models import DEFAULT_MODEL_DIR, offline_hub, require_model, resolve_device, resolve_dtype

log = logging.getLogger(__name__)
R = TypeVar("R")

# Seconds: loads take up to minutes (diffusers pipelines), calls from milliseconds to a minute.
_LOAD_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _BackendMetrics(Collector):
    """Process-wide backend histograms; each service's Prometheus registry registers this collector."""

    def __init__(self) -> None:
        labels = ("service", "backend")
        self.load_seconds = Histogram("glimpse3d_backend_load_seconds", "Time to load a backend.",
                                      labels, registry=None, buckets=_LOAD_BUCKETS)
        self.call_seconds = Histogram("glimpse3d_backend_call_seconds", "Time a backend call computes.",
                                      (*labels, "method", "outcome"), registry=None, buckets=_CALL_BUCKETS)
        self.queue_seconds = Histogram("glimpse3d_backend_queue_wait_seconds",
                                       "Time a call waits for a compute slot.", labels, registry=None,
                                       buckets=_CALL_BUCKETS)

    def collect(self):
        for metric in (self.load_seconds, self.call_seconds, self.queue_seconds):
            yield from metric.collect()

    def register(self, registry: CollectorRegistry) -> None:
        """Export these histograms through ``registry`` (idempotent)."""
        try:
            registry.register(self)
        except ValueError:  # already registered there
            pass


METRICS = _BackendMetrics()


class BackendOptions(BaseModel):
    """A backend's options: frozen, unknown keys refused, no silent type coercion (``"3"`` is not
    an int, ``True`` is not a number). Subclass per backend."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, arbitrary_types_allowed=True)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_error(err: ValidationError, what: str) -> InvalidInput:
    """A pydantic error as an :class:`InvalidInput` whose ``field`` is the first failing option."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "backend_options"
    if first["type"] == "extra_forbidden":
        return InvalidInput(f"unknown {what} option {field!r}", field=field)
    message = first["msg"].removeprefix("Value error, ")
    return InvalidInput(f"{field}: {message}, got {_describe(first.get('input'))}", field=field)


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


def parse_options(cls: type[OptionsT], values: Mapping[str, Any], what: str) -> OptionsT:
    """``cls`` validated from ``values``; an :class:`InvalidInput` naming the field otherwise."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as err:
        raise validation_error(err, what) from None


class Backend:
    """One implementation of a service's API.

    Subclasses set ``name`` and ``Options``; a service's API base class sets ``service`` and its
    public methods, which validate their input and then call :meth:`_run`. ``load`` is a template:
    it runs ``_load`` once (thread-safe, idempotent) and records the time it took.
    """

    service: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, options: BackendOptions | None = None, /, **values: Any) -> None:
        if options is not None and values:
            raise TypeError("pass either an Options instance or keyword options, not both")
        if options is not None and not isinstance(options, self.Options):
            raise TypeError(f"options must be {self.Options.__name__}, got {type(options).__name__}")
        self.options = options if options is not None else parse_options(
            self.Options, values, f"{self.service} backend {self.name!r}")
        self._load_lock = threading.Lock()
        self._loaded = False
        self._setup()

    def _setup(self) -> None:
        """Cheap construction-time work from ``self.options`` (no weights, no I/O)."""

    def _load(self) -> None:
        """Load weights or warm up; called once by :meth:`load`."""

    @final
    def load(self) -> None:
        """Make the backend ready. Idempotent and thread-safe."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            start = time.perf_counter()
            self._load()
            self._loaded = True
            seconds = time.perf_counter() - start
        METRICS.load_seconds.labels(self.service, self.name).observe(seconds)
        log.info("%s backend %s ready", self.service, self.name,
                 extra={"backend": self.name, "seconds": round(seconds, 3), **self._describe_loaded()})

    def _describe_loaded(self) -> dict[str, Any]:
        """Extra fields for the "ready" log line (model, device, ...)."""
        return {}

    @property
    def ready(self) -> bool:
        """True once :meth:`load` has finished."""
        return self._loaded

    @final
    def _run(self, method: str, predict: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """The one call path: refuse before ``load``, then run ``predict`` timed under ``method``."""
        if not self._loaded:
            raise NotReady(f"the {self.name} {self.service} backend is not loaded yet", field="backend")
        start = time.perf_counter()
        outcome = "error"
        try:
            result = predict(*args, **kwargs)
            outcome = "ok"
            return result
        finally:
            METRICS.call_seconds.labels(self.service, self.name, method, outcome).observe(
                time.perf_counter() - start)


def check_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased); ValueError otherwise."""
    dev = value.strip().lower()
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ValueError("device must be auto, cpu, cuda or cuda:N")
    return dev


# An options field naming where a model runs.
Device = Annotated[str, AfterValidator(check_device)]


class LearnedOptions(BackendOptions):
    """Options every learned backend has: where its weights are and where it runs."""

    model_dir: Path = Field(default=DEFAULT_MODEL_DIR, strict=False)
    device: Device = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class LearnedBackend(Backend):
    """A backend with weights: ``_load`` switches the hub offline, resolves device and dtype, then
    calls ``_load_model``. ``model_dir`` and ``device`` may also be given positionally."""

    Options: ClassVar[type[BackendOptions]] = LearnedOptions
    options: LearnedOptions

    def __init__(self, model_dir: Path | str | None = None, device: str | None = None, /, **values: Any) -> None:
        if model_dir is not None:
            values["model_dir"] = Path(model_dir)
        if device is not None:
            values["device"] = device
        if isinstance(values.get("model_dir"), str):
            values["model_dir"] = Path(values["model_dir"])
        super().__init__(**values)
        self.device: Any = None  # torch.device once loaded
        self.dtype: Any = None  # torch.dtype once loaded

    @property
    def model_dir(self) -> Path:
        return self.options.model_dir

    def require_model(self, name: str, required: tuple[str, ...] | list[str] = ()) -> Path:
        """The folder of model ``name``; :class:`~glimpse3d.core.models.ModelMissing` naming
        ``make models`` when it (or a ``required`` file) is absent."""
        return require_model(self.options.model_dir, name, required)

    def _load(self) -> None:
        offline_hub()
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_dtype(self.options.dtype, self.device)
        self._load_model()

    def _load_model(self) -> None:
        raise NotImplementedError

    def _describe_loaded(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}
