"""Every in-process diffusion backend against the diffusion contract (tests/contracts/diffusion.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts import cover_every_backend
from contracts.diffusion import DiffusionContract


class TestClassical(DiffusionContract):
    backend = "classical"
    bad_option = ("grain", -1.0)


class TestSDXL(DiffusionContract):
    backend = "sdxl"
    bad_option = ("resolution", 100)

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"resolution": 64}


cover_every_backend("diffusion", DiffusionContract, globals())
