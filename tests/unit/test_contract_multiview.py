"""The multiview backends against the backend contract (tests/contracts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts import cover_every_backend
from contracts.multiview import MultiviewContract


class TestRender(MultiviewContract):
    backend = "render"
    bad_option = ("solid_alpha", 2.0)


class TestZero123(MultiviewContract):
    backend = "zero123"
    bad_option = ("steps", 0)

    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        return {"steps": 2}


cover_every_backend("multiview", MultiviewContract, globals())
