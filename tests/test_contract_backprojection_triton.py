"""The backprojection service's ``triton`` backend against the backprojection contract, through a real
tritonserver serving ``backprojection_clip`` on the tiny models (tests/triton_server.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contracts.backprojection import BackprojectionContract
from triton_server import triton_for_tests

from glimpse3d.core.errors import Unavailable
from glimpse3d.core.triton.server import LocalTriton, free_port
from glimpse3d.services.backprojection.backends.triton import MODEL

pytestmark = pytest.mark.e2e

SERVER: dict[str, LocalTriton] = {}


@pytest.fixture(scope="module", autouse=True)
def triton(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LocalTriton]:
    with triton_for_tests(tmp_path_factory.mktemp("triton"), tiny_model_dir, models=[MODEL]) as server:
        SERVER["server"] = server
        yield server
    SERVER.clear()


class TestTriton(BackprojectionContract):
    backend = "triton"
    bad_option = ("url", "no-port")

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"url": SERVER["server"].url, "model": MODEL, "ready_timeout_s": 60.0, "max_side": 32}

    def test_missing_weights_raise_model_missing(self, tmp_path: Path) -> None:
        """No weights on this side: a load against an unreachable server fails, naming the model and
        the address, within its ready_timeout_s."""
        url = f"127.0.0.1:{free_port()}"
        backend = self.make(tmp_path, url=url, ready_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=f"{MODEL}.*{url}"):
            backend.load()
        assert time.monotonic() - started < 10
        assert not backend.ready
