"""Shared pytest configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# torch's OpenMP workers spin while waiting by default, which makes a busy 2-core machine ~10x slower;
# passive waiting must be chosen before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The five services and the gateway as real processes on loopback (shared by the end-to-end
    tests; started once per session, stopped afterwards)."""
    from glimpse3d.gateway.stack import start_stack

    state = tmp_path_factory.mktemp("stack")
    with start_stack(state, timeout_s=180.0) as running:
        yield running
