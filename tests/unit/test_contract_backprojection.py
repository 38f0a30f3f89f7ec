"""Every in-process backprojection backend against the backprojection contract
(tests/contracts/backprojection.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts import cover_every_backend
from contracts.backprojection import BackprojectionContract

from glimpse3d.services.backprojection.weights import CLIP_BASE


class TestMVCRM(BackprojectionContract):
    """With the tiny CLIP model, so the weights half of the contract applies (without ``clip_model``
    the backend needs no weights: tests/unit/test_backprojection.py)."""

    backend = "mvcrm"
    bad_option = ("clip_threshold", 1.5)

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"clip_model": CLIP_BASE, "max_side": 32}


cover_every_backend("backprojection", BackprojectionContract, globals())
