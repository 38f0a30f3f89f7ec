"""The in-process depth backends against the backend contract (tiny weights, small GrabCut work size)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from contracts import cover_every_backend
from contracts.depth import DepthContract

from glimpse3d.core.models import ModelMissing
from glimpse3d.services.depth.weights import DA_V2_SMALL, SAM2_TINY


class TestSilhouette(DepthContract):
    backend = "silhouette"
    bad_option = ("shading_weight", 0.9)

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"work_side": 64}

    def test_missing_weights_raise_model_missing(self, tmp_path: Path) -> None:
        """Weight-free without ``matting``; with it, an empty model directory is ModelMissing."""
        plain = self.make(tmp_path / "empty")
        plain.load()
        assert plain.ready
        backend = self.make(tmp_path / "empty", matting=SAM2_TINY)
        os.environ.pop("HF_HUB_OFFLINE", None)
        with pytest.raises(ModelMissing, match="make models"):
            backend.load()
        assert os.environ.get("HF_HUB_OFFLINE") == "1"
        assert not backend.ready


class TestDpt(DepthContract):
    backend = "dpt"
    bad_option = ("percentile", 60.0)

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"model": DA_V2_SMALL, "work_side": 64}


cover_every_backend("depth", DepthContract, globals())
