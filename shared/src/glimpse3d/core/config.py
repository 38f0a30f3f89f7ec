"""Configuration from environment variables into frozen dataclasses.

``load_config(Cls)`` fills each dataclass field from ``<PREFIX><FIELD_NAME_UPPER>``; for example
the field ``metrics_port`` comes from ``GLIMPSE3D_METRICS_PORT``. Supported field types: ``str``,
``int``, ``float`` (finite only), ``bool`` (``true/false/1/0/yes/no/on/off``, any case), ``Path``,
``Literal[...]`` (value must be one of the listed strings), ``X | None`` (an empty variable means
``None``) and ``tuple[X, ...]`` (comma separated, blanks dropped). A field without a default whose
variable is missing, or a value that does not parse, raises :class:`ConfigError` naming the
variable; errors raised by the dataclass's own ``__post_init__`` propagate unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from glimpse3d.core.errors import InvalidInput

T = TypeVar("T")

DEFAULT_PREFIX = "GLIMPSE3D_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(InvalidInput):
    """A configuration value is missing or malformed; ``field`` is the variable (or field) name."""

    reason = "INVALID_CONFIG"


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def _parse_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _parse_literal(choices: tuple[Any, ...]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = raw.strip()
        for choice in choices:
            if value == str(choice):
                return choice
        for choice in choices:  # then without regard to case: "info" selects "INFO"
            if value.casefold() == str(choice).casefold():
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")

    return parse


def _parse_tuple(item: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(raw: str) -> tuple[Any, ...]:
        return tuple(item(part.strip()) for part in raw.split(",") if part.strip())

    return parse


def _parse_optional(inner: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        return None if raw.strip() == "" else inner(raw)

    return parse


_SCALARS: dict[Any, Callable[[str], Any]] = {
    str: str,
    int: lambda raw: int(raw.strip()),
    float: _parse_float,
    bool: _parse_bool,
    Path: lambda raw: Path(raw.strip()),
}


def _parser_for(hint: Any) -> Callable[[str], Any]:
    """A function turning the variable's text into a value of type ``hint``."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return _parse_literal(args)
    if origin in (types.UnionType, typing.Union):
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1 and len(args) == 2:
            return _parse_optional(_parser_for(members[0]))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _parse_tuple(_parser_for(args[0]))
    raise TypeError(f"load_config does not support fields of type {hint!r}")


def load_config(
    cls: type[T], env: Mapping[str, str] | None = None, prefix: str = DEFAULT_PREFIX
) -> T:
    """Build ``cls`` (a dataclass) from ``env`` (default ``os.environ``); see the module docstring."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    source = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        variable = f"{prefix}{field.name.upper()}"
        raw = source.get(variable)
        if raw is None:
            if _is_required(field):
                raise ConfigError(f"{variable} is required but not set", field=variable)
            continue
        try:
            values[field.name] = _parser_for(hints[field.name])(raw)
        except ValueError as exc:
            raise ConfigError(f"{variable}={raw!r} is invalid: {exc}", field=variable) from exc
    return cls(**values)


def _is_required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings every gRPC server shares (``load_config(ServerConfig)`` reads ``GLIMPSE3D_*``).

    host / port: where gRPC listens; port 0 picks a free port (tests), deployments pin it and set
        host to ``0.0.0.0`` so that other pods can connect.
    metrics_host / metrics_port: where Prometheus metrics are served over HTTP; metrics_port 0
        picks a free port (logged at start-up), -1 disables the metrics endpoint.
    grace_seconds: how long calls in flight may run after SIGTERM before they are cancelled.
    max_message_bytes: limit on every gRPC message sent or received (default 64 MiB).
    log_level / log_json: passed to :func:`glimpse3d.core.logs.configure_logging`.
    """

    host: str = "127.0.0.1"
    port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    grace_seconds: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    log_level: LogLevel = "INFO"
    log_json: bool = True

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConfigError("host must not be empty", field="host")
        if not self.metrics_host.strip():
            raise ConfigError("metrics_host must not be empty", field="metrics_host")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}", field="port")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"metrics_port must be -1 (disabled) or in 0..65535, got {self.metrics_port}",
                field="metrics_port",
            )
        if not (math.isfinite(self.grace_seconds) and 0 <= self.grace_seconds <= 3600):
            raise ConfigError(
                f"grace_seconds must be in 0..3600, got {self.grace_seconds}", field="grace_seconds"
            )
        if not 1024 <= self.max_message_bytes <= MAX_GRPC_MESSAGE_BYTES:
            raise ConfigError(
                f"max_message_bytes must be in 1024..{MAX_GRPC_MESSAGE_BYTES}, "
                f"got {self.max_message_bytes}",
                field="max_message_bytes",
            )

    @property
    def address(self) -> str:
        """``host:port`` as gRPC expects it (IPv6 hosts are bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @property
    def metrics_port_or_none(self) -> int | None:
        """The metrics port for :func:`create_server` (``None`` when disabled)."""
        return None if self.metrics_port == -1 else self.metrics_port
