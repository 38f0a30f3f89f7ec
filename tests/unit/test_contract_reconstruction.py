"""The reconstruction backends against the backend contract (tests/contracts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts import cover_every_backend
from contracts.reconstruction import ReconstructionContract


class TestLift(ReconstructionContract):
    backend = "lift"
    bad_option = ("footprint", 5.0)


class TestTripoSR(ReconstructionContract):
    backend = "triposr"
    bad_option = ("grid_resolution", 4)

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"grid_resolution": 24}


class TestLGM(ReconstructionContract):
    backend = "lgm"
    bad_option = ("min_opacity", 1.5)


cover_every_backend("reconstruction", ReconstructionContract, globals())
