"""Backends that fit with Adam pay torch's one-off optimiser set-up (importing ``torch._dynamo``, seconds
on 2 cores) while loading, so the first request after a (re)start is not that much slower."""

from __future__ import annotations

import subprocess
import sys

import pytest

from glimpse3d.services.backprojection.backends.mvcrm import backend as mvcrm_backend
from glimpse3d.services.reconstruction.backends.lift import backend as lift_backend

PROBE = """
import sys
from glimpse3d.services.reconstruction.api import make_backend
assert "torch._dynamo" not in sys.modules, "imported before load"
make_backend("lift").load()
print("torch._dynamo" in sys.modules)
"""


def test_loading_pays_the_optimiser_set_up() -> None:
    """In a fresh interpreter: after the lift backend's load, the first Adam costs nothing more."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(("module", "name"), [(lift_backend, "lift"), (mvcrm_backend, "mvcrm")])
def test_backends_warm_the_optimiser_on_load(monkeypatch: pytest.MonkeyPatch, module, name: str) -> None:
    calls: list[int] = []
    monkeypatch.setattr(module, "warm_optimizer", lambda: calls.append(1))
    make = {"lift": "glimpse3d.services.reconstruction.api", "mvcrm": "glimpse3d.services.backprojection.api"}[name]
    backend = __import__(make, fromlist=["make_backend"]).make_backend(name)
    backend.load()
    assert calls == [1]
