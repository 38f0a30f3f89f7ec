"""The CUDA tier (tests/gpu): every test here needs an NVIDIA GPU and skips without one.

``make gpu-check`` runs this folder (and the few CUDA tests of tests/unit) on a machine with a GPU;
elsewhere, as part of ``make test``, each test is collected and skipped with the reason
``no CUDA device``. The learned-backend tests reuse the backend contract classes of
tests/unit/test_contract_*.py (their tiny-model options and dummy inputs), hence tests/unit on the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parent.parent / "unit"
if str(UNIT_DIR) not in sys.path:
    sys.path.insert(0, str(UNIT_DIR))


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with CUDA (tests/gpu; `make gpu-check`)")


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.gpu)
