"""Every service's ``triton`` backend against its service contract, served by one real tritonserver
(tests/triton_server.py: CPU instances, tiny weights)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from contracts.backprojection import BackprojectionContract
from contracts.depth import DepthContract
from contracts.diffusion import DiffusionContract
from contracts.multiview import MultiviewContract
from contracts.reconstruction import ReconstructionContract
from triton_server import triton_for_tests

from glimpse3d.core.errors import Unavailable
from glimpse3d.core.triton.server import free_port

pytestmark = pytest.mark.e2e

MODELS = ("depth_dpt", "reconstruction_triposr", "multiview_zero123", "diffusion_sdxl", "backprojection_clip")
_SERVER: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def triton(tmp_path_factory, tiny_model_dir):
    with triton_for_tests(tmp_path_factory.mktemp("triton"), tiny_model_dir, models=list(MODELS)) as server:
        _SERVER["url"] = server.url
        yield server
    _SERVER.clear()


class _Triton:
    """The ``triton`` part of a contract class: the served model and the client-side load check."""

    backend = "triton"
    model: ClassVar[str] = ""
    bad_option: ClassVar[tuple[str, Any]] = ("url", "no-port")
    extra: ClassVar[dict[str, Any]] = {}

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"url": _SERVER["url"], "model": self.model, "ready_timeout_s": 60.0, **self.extra}

    def test_missing_weights_raise_model_missing(self, tmp_path: Path) -> None:
        """No weights on the client side: a load against an unreachable server fails quickly, naming
        the model and the address."""
        url = f"127.0.0.1:{free_port()}"
        backend = self.make(tmp_path, url=url, ready_timeout_s=1.0)  # type: ignore[attr-defined]
        start = time.monotonic()
        with pytest.raises(Unavailable, match=f"{self.model}.*{url}"):
            backend.load()
        assert time.monotonic() - start < 10.0
        assert not backend.ready


class TestDepthTriton(_Triton, DepthContract):
    model = "depth_dpt"
    bad_option = ("matting_model", "../x")


class TestReconstructionTriton(_Triton, ReconstructionContract):
    model = "reconstruction_triposr"


class TestMultiviewTriton(_Triton, MultiviewContract):
    model = "multiview_zero123"


class TestDiffusionTriton(_Triton, DiffusionContract):
    model = "diffusion_sdxl"


class TestBackprojectionTriton(_Triton, BackprojectionContract):
    model = "backprojection_clip"
    extra: ClassVar[dict[str, Any]] = {"max_side": 32}
