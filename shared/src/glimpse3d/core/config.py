"""Settings from ``GLIMPSE3D_*`` environment variables, with pydantic-settings.

A :class:`Settings` subclass declares typed fields; :func:`load_config` fills field ``metrics_port``
from ``GLIMPSE3D_METRICS_PORT``. Booleans take ``true/false/1/0/yes/no/on/off``; ``Literal`` values
match without regard to case; ``tuple[X, ...]`` is comma separated; an empty variable means the
field's default. A missing required variable or a value that does not parse is a
:class:`ConfigError` naming the variable; a class's own ``check()`` errors propagate unchanged.
Constructing a class directly (``ServerConfig(port=1)``) reads no environment.
"""

from __future__ import annotations

import contextvars
import math
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from glimpse3d.core.errors import InvalidInput

T = TypeVar("T", bound="Settings")

DEFAULT_PREFIX = "GLIMPSE3D_"

# The variables load_config reads from; None outside load_config, so direct construction reads none.
_SOURCE: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("glimpse3d_env", default=None)


class ConfigError(InvalidInput):
    """A configuration value is missing or malformed; ``field`` is the variable (or field) name."""

    reason = "INVALID_CONFIG"


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, reading the mapping given to :func:`load_config`."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        source = _SOURCE.get()
        if source is None:
            return {}
        return {k.lower(): v for k, v in source.items() if v != ""}


class Settings(BaseSettings):
    """Base of every settings class: frozen, ``GLIMPSE3D_`` prefix, unknown variables ignored."""

    model_config = SettingsConfigDict(env_prefix=DEFAULT_PREFIX, frozen=True, extra="ignore",
                                      case_sensitive=False, allow_inf_nan=False, validate_default=True,
                                      enable_decoding=False)
    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        prefix = getattr(env_settings, "env_prefix", DEFAULT_PREFIX)
        return init_settings, _Environment(settings_cls, env_prefix=prefix, case_sensitive=False)

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: Any, info: Any) -> Any:
        """Literal values without regard to case ("info" selects "INFO"), tuples from comma lists."""
        if not isinstance(value, str):
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if typing.get_origin(annotation) is Literal:
            for choice in typing.get_args(annotation):
                if value.strip().casefold() == str(choice).casefold():
                    return choice
        if typing.get_origin(annotation) is tuple:
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value.strip() if annotation in (int, float, bool) else value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise _config_error(err, str(values.get("_env_prefix") or DEFAULT_PREFIX)) from None

    @model_validator(mode="after")
    def _checked(self) -> Settings:
        self.check()
        return self

    def check(self) -> None:
        """Cross-field and range checks; raise :class:`ConfigError` naming the field."""

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied and checked again."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "literal_error":
        return "expected one of " + error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
    if error["type"].startswith("bool"):
        return "expected one of true/false/1/0/yes/no/on/off"
    if error["type"] == "finite_number":
        return "expected a finite number"
    return error["msg"]


def _config_error(err: ValidationError, prefix: str) -> ConfigError:
    """The first error, naming the variable inside :func:`load_config`, else the field."""
    first = err.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    source = _SOURCE.get()
    if source is None:
        return ConfigError(f"{name} is invalid: {_message(first)}, got {first.get('input')!r}", field=name)
    variable = f"{prefix}{name.upper()}"
    if first["type"] == "missing":
        return ConfigError(f"{variable} is required but not set", field=variable)
    raw = next((v for k, v in source.items() if k.upper() == variable), first.get("input"))
    return ConfigError(f"{variable}={raw!r} is invalid: {_message(first)}", field=variable)


def load_config(cls: type[T], env: Mapping[str, str] | None = None, prefix: str = DEFAULT_PREFIX) -> T:
    """Build ``cls`` from ``env`` (default ``os.environ``) through pydantic-settings; see the module
    docstring."""
    if not (isinstance(cls, type) and issubclass(cls, Settings)):
        raise TypeError(f"{cls!r} is not a glimpse3d.core.config.Settings class")
    token = _SOURCE.set(dict(os.environ if env is None else env))
    try:
        return cls(_env_prefix=prefix)  # type: ignore[call-arg]
    finally:
        _SOURCE.reset(token)


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1


class ServerConfig(Settings):
    """Settings every gRPC server shares (``load_config(ServerConfig)`` reads ``GLIMPSE3D_*``).

    host / port: where gRPC listens; port 0 picks a free port (tests), deployments pin it and set
        host to ``0.0.0.0`` so that other pods can connect.
    metrics_host / metrics_port: where Prometheus metrics are served over HTTP; metrics_port 0
        picks a free port (logged at start-up), -1 disables the metrics endpoint.
    grace_seconds: how long calls in flight may run after SIGTERM before they are cancelled.
    max_message_bytes: limit on every gRPC message sent or received (default 64 MiB).
    log_level / log_json: passed to :func:`glimpse3d.core.logs.configure_logging`.
    tls_cert_file / tls_key_file: PEM server certificate (chain) and private key; when set, gRPC (and the
        gateway's HTTP facade) accept TLS only; unset: plaintext (see :mod:`glimpse3d.core.tls`).
    tls_client_ca_file: PEM CA bundle; when set (with tls_cert_file), every caller must present a client
        certificate signed by it (mutual TLS).
    tls_ca_file / tls_client_cert_file / tls_client_key_file: what this process uses when it calls other
        servers (the gateway's stage calls, the health probe): the CA bundle that verifies their
        certificates and the certificate it presents to a server that requires one; setting either
        tls_ca_file or tls_client_cert_file makes those calls use TLS.
    """

    host: str = "127.0.0.1"
    port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    grace_seconds: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    log_level: LogLevel = "INFO"
    log_json: bool = True
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None

    def check(self) -> None:
        for cert, key in (("tls_cert_file", "tls_key_file"), ("tls_client_cert_file", "tls_client_key_file")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ConfigError(f"{cert} and {key} must be set together", field=cert)
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file",
                              field="tls_client_ca_file")
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
