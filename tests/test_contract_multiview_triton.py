"""The multiview ``triton`` backend against the backend contract, served by a real tritonserver
(tests/triton_server.py: CPU instance, tiny weights)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from contracts.multiview import MultiviewContract
from triton_server import triton_for_tests

from glimpse3d.core.errors import Unavailable
from glimpse3d.services.multiview.backends.triton import MODEL

pytestmark = pytest.mark.e2e

_URL: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def triton(tmp_path_factory, tiny_model_dir):
    with triton_for_tests(tmp_path_factory.mktemp("triton"), tiny_model_dir, models=[MODEL]) as server:
        _URL["url"] = server.url
        yield server


class TestTriton(MultiviewContract):
    backend = "triton"
    bad_option = ("url", "no-port")

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"url": _URL["url"], "ready_timeout_s": 60.0}

    def test_missing_weights_raise_model_missing(self, tmp_path: Path) -> None:
        """No weights on the client side: a load against an unreachable server fails quickly, by name."""
        backend = self.make(tmp_path, url="127.0.0.1:1", ready_timeout_s=1.0)
        start = time.monotonic()
        with pytest.raises(Unavailable, match=f"{MODEL}.*127.0.0.1:1.*not ready within 1 s"):
            backend.load()
        assert time.monotonic() - start < 10.0
        assert not backend.ready
