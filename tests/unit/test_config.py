"""glimpse3d.core.config (environment -> frozen pydantic settings) and glimpse3d.core.logs."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError

from glimpse3d.core.config import ConfigError, ServerConfig, Settings, load_config
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.logs import configure_logging


class Sample(Settings):
    name: str
    workers: int
    scale: float = 1.0
    debug: bool = False
    weights: Path = Path("weights")
    device: Literal["cpu", "cuda"] = "cpu"
    timeout_s: float | None = None
    tags: tuple[str, ...] = ()
    sizes: tuple[int, ...] = (64,)

    def check(self) -> None:
        if self.workers < 1:
            raise InvalidInput(f"workers must be >= 1, got {self.workers}", field="workers")


REQUIRED = {"APP_NAME": "depth", "APP_WORKERS": "2"}


def load(**env: str) -> Sample:
    return load_config(Sample, {**REQUIRED, **env}, prefix="APP_")


def test_defaults_and_every_supported_type() -> None:
    assert load() == Sample(name="depth", workers=2)
    loaded = load(
        APP_SCALE="0.5", APP_DEBUG="yes", APP_WEIGHTS="/models/depth", APP_DEVICE="cuda",
        APP_TIMEOUT_S="2.5", APP_TAGS="a, b,,c ", APP_SIZES="128,256",
    )
    assert loaded == Sample(
        name="depth", workers=2, scale=0.5, debug=True, weights=Path("/models/depth"), device="cuda",
        timeout_s=2.5, tags=("a", "b", "c"), sizes=(128, 256),
    )
    assert load(APP_TIMEOUT_S="").timeout_s is None
    assert load(APP_TAGS="").tags == ()


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
])
def test_bool_parsing(raw: str, expected: bool) -> None:
    assert load(APP_DEBUG=raw).debug is expected


def test_missing_required_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="APP_WORKERS is required") as caught:
        load_config(Sample, {"APP_NAME": "depth"}, prefix="APP_")
    assert caught.value.field == "APP_WORKERS"
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize(("variable", "raw"), [
    ("APP_WORKERS", "two"), ("APP_WORKERS", "1.5"), ("APP_SCALE", "nan"), ("APP_SCALE", "fast"),
    ("APP_DEBUG", "maybe"), ("APP_DEVICE", "tpu"), ("APP_SIZES", "1,x"),
])
def test_bad_values_name_variable_and_value(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**{variable: raw})
    assert variable in str(caught.value) and repr(raw) in str(caught.value)
    assert caught.value.field == variable


def test_literal_is_validated_and_matched_without_regard_to_case() -> None:
    assert load(APP_DEVICE="CUDA").device == "cuda"
    with pytest.raises(ConfigError, match="expected one of cpu, cuda"):
        load(APP_DEVICE="gpu")


def test_post_init_errors_propagate() -> None:
    with pytest.raises(InvalidInput, match="workers must be >= 1") as caught:
        load(APP_WORKERS="0")
    assert not isinstance(caught.value, ConfigError)


def test_config_is_frozen_and_unsupported_types_are_refused() -> None:
    config = load()
    with pytest.raises(ValidationError, match="frozen"):
        config.workers = 3  # type: ignore[misc]

    @dataclasses.dataclass(frozen=True)
    class Odd:
        mapping: dict[str, str]

    with pytest.raises(TypeError, match=r"not a glimpse3d\.core\.config\.Settings class"):
        load_config(Odd, {"GLIMPSE3D_MAPPING": "a=b"})  # type: ignore[type-var]


def test_only_load_config_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("GLIMPSE3D_PORT", "123")
    assert ServerConfig().port == 0 and load_config(ServerConfig).port == 123
    assert load_config(ServerConfig, {}).port == 0
    assert ServerConfig(port=5).replace(host="::1").address == "[::1]:5"
    with pytest.raises(ConfigError) as caught:
        ServerConfig().replace(port=-3)
    assert caught.value.field == "port"


def test_server_config_from_environment() -> None:
    assert load_config(ServerConfig, {}) == ServerConfig()
    config = load_config(ServerConfig, {
        "GLIMPSE3D_HOST": "0.0.0.0", "GLIMPSE3D_PORT": "50051", "GLIMPSE3D_METRICS_PORT": "-1",
        "GLIMPSE3D_GRACE_SECONDS": "2.5", "GLIMPSE3D_MAX_MESSAGE_BYTES": "1048576",
        "GLIMPSE3D_LOG_LEVEL": "debug", "GLIMPSE3D_LOG_JSON": "false",
    })
    assert (config.address, config.metrics_port_or_none, config.grace_seconds) == ("0.0.0.0:50051", None, 2.5)
    assert (config.max_message_bytes, config.log_level, config.log_json) == (1_048_576, "DEBUG", False)
    assert ServerConfig(host="::1", port=7).address == "[::1]:7"
    assert ServerConfig(metrics_port=9100).metrics_port_or_none == 9100


@pytest.mark.parametrize(("variable", "raw", "field"), [
    ("GLIMPSE3D_PORT", "70000", "port"), ("GLIMPSE3D_METRICS_PORT", "-2", "metrics_port"),
    ("GLIMPSE3D_GRACE_SECONDS", "-1", "grace_seconds"), ("GLIMPSE3D_MAX_MESSAGE_BYTES", "10", "max_message_bytes"),
    ("GLIMPSE3D_HOST", " ", "host"),
])
def test_server_config_ranges(variable: str, raw: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as caught:
        load_config(ServerConfig, {variable: raw})
    assert caught.value.field == field


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where configure_logging writes; afterwards its handler is removed and the level restored."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield io.StringIO()
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_json_logs_carry_service_and_extra_fields(stream: io.StringIO) -> None:
    configure_logging("depth", level="DEBUG", stream=stream)
    configure_logging("depth", level="INFO", stream=stream)  # idempotent: one handler, new level
    log = logging.getLogger("glimpse3d.test")
    log.debug("hidden")
    log.info("rpc finished", extra={"method": "/a.B/C", "code": "OK", "duration_ms": 1.5, "job": "j-1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed %s", "here")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {"level": "INFO", "logger": "glimpse3d.test", "msg": "rpc finished", "service": "depth",
            "method": "/a.B/C", "code": "OK", "duration_ms": 1.5, "job": "j-1"}.items() <= first.items()
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["msg"] == "failed here" and second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_text_logs(stream: io.StringIO) -> None:
    configure_logging("gateway", json=False, stream=stream)
    logging.getLogger("glimpse3d.test").warning("slow call", extra={"duration_ms": 12})
    line = stream.getvalue().strip()
    assert "WARNING" in line and "[gateway] slow call duration_ms=12" in line
    assert not line.startswith("{")
