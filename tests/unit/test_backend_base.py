"""glimpse3d.core.backend: options, the load template, the one call path and its metrics."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import Field

from glimpse3d.core.backend import METRICS, Backend, BackendOptions, LearnedBackend, LearnedOptions
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.models import ModelMissing


class _Options(BackendOptions):
    steps: int = Field(default=4, ge=1, le=10)
    weight: float = 0.5
    mode: Literal["fast", "slow"] = "fast"


class _Counting(Backend):
    service, name, Options = "svc", "counting", _Options

    def _setup(self) -> None:
        self.loads = 0

    def _load(self) -> None:
        time.sleep(0.05)
        self.loads += 1

    def double(self, x: int) -> int:
        return self._run("double", lambda v: 2 * v * self.options.steps, x)

    def fail(self) -> None:
        def boom() -> None:
            raise ValueError("boom")
        return self._run("fail", boom)


@pytest.mark.parametrize(("options", "field"), [
    ({"steps": 0}, "steps"), ({"steps": 11}, "steps"), ({"steps": "3"}, "steps"), ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"), ({"weight": "x"}, "weight"), ({"mode": "medium"}, "mode"), ({"stepz": 3}, "stepz"),
])
def test_a_bad_option_names_its_field(options, field) -> None:
    with pytest.raises(InvalidInput) as err:
        _Counting(**options)
    assert err.value.field == field, err.value.message
    assert field in err.value.message


def test_options_are_typed_frozen_and_defaulted() -> None:
    b = _Counting(steps=3, weight=1)  # an int is a float; nothing else is coerced
    assert (b.options.steps, b.options.weight, b.options.mode) == (3, 1.0, "fast")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        b.options.steps = 5  # type: ignore[misc]
    same = _Counting(_Options(steps=3))
    assert same.options == _Options(steps=3)
    with pytest.raises(TypeError):
        _Counting(_Options(), steps=2)


def test_calls_before_load_are_refused_and_load_runs_once_under_threads() -> None:
    b = _Counting(steps=2)
    with pytest.raises(NotReady) as err:
        b.double(1)
    assert err.value.field == "backend" and "counting svc backend" in err.value.message
    threads = [threading.Thread(target=b.load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.load()
    assert b.ready and b.loads == 1
    assert b.double(5) == 20


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_load_and_calls_are_timed_by_service_backend_method_and_outcome() -> None:
    registry = CollectorRegistry()
    METRICS.register(registry)
    METRICS.register(registry)  # idempotent
    before = generate_latest(registry).decode()
    b = _Counting()
    b.load()
    b.double(1)
    b.double(2)
    with pytest.raises(ValueError):
        b.fail()
    after = generate_latest(registry).decode()
    labels = {"service": "svc", "backend": "counting"}
    count = "glimpse3d_backend_call_seconds_count"
    assert _sample(after, count, method="double", outcome="ok", **labels) - \
        _sample(before, count, method="double", outcome="ok", **labels) == 2
    assert _sample(after, count, method="fail", outcome="error", **labels) - \
        _sample(before, count, method="fail", outcome="error", **labels) == 1
    load = "glimpse3d_backend_load_seconds_sum"
    assert _sample(after, load, **labels) - _sample(before, load, **labels) >= 0.05


class _Weights(LearnedBackend):
    service, name = "svc", "weights"

    def _load_model(self) -> None:
        self.root = self.require_model("group/model", ["config.json"])


def test_learned_backend_resolves_its_device_and_names_missing_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    b = _Weights(tmp_path, "cpu")
    assert b.model_dir == tmp_path and b.options.device == "cpu"
    with pytest.raises(ModelMissing, match="make models"):
        b.load()
    assert not b.ready
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    (tmp_path / "group" / "model").mkdir(parents=True)
    (tmp_path / "group" / "model" / "config.json").write_text("{}")
    b.load()
    assert b.ready and b.root == tmp_path / "group" / "model" and str(b.device) == "cpu"
    assert str(b.dtype) == "torch.float32"


@pytest.mark.parametrize(("options", "field"), [({"device": "gpu"}, "device"), ({"device": "cuda:x"}, "device"),
                                                ({"dtype": "float8"}, "dtype")])
def test_learned_options_are_checked(options, field) -> None:
    with pytest.raises(InvalidInput) as err:
        _Weights(**options)
    assert err.value.field == field


def test_learned_options_accept_a_path_string() -> None:
    assert _Weights(model_dir="somewhere").model_dir == Path("somewhere")
    assert LearnedOptions(model_dir="x").model_dir == Path("x")  # type: ignore[arg-type]
