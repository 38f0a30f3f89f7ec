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
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (tests/postgres_server.py), started once per session;
    ``postgres.create_database()`` gives each test its own database."""
    from postgres_server import postgres_for_tests

    with postgres_for_tests() as server:
        yield server


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The five services and the gateway as real processes on loopback (shared by the end-to-end
    tests; started once per session, stopped afterwards)."""
    from glimpse3d.gateway.stack import start_stack

    state = tmp_path_factory.mktemp("stack")
    with start_stack(state, timeout_s=180.0) as running:
        yield running


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Tiny random weights for every learned backend (glimpse3d.core.tinymodels), written once per session."""
    from glimpse3d.core.tinymodels import write_all

    model_dir = tmp_path_factory.mktemp("tiny-models")
    write_all(model_dir, seed=0)
    return model_dir


@pytest.fixture(scope="class")
def loaded(request, tiny_model_dir: Path):
    """For a backend contract class (tests/contracts): its backend, built small and loaded once per class."""
    backend = request.cls().make(tiny_model_dir)
    backend.load()
    return backend


TIERS = ("unit", "service", "e2e")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "unit: in-process, no servers (tests/unit; `make test-fast`)")
    config.addinivalue_line("markers", "service: starts an in-process gRPC service, a database or a model server")
    config.addinivalue_line("markers", "e2e: runs real processes (the stack, Triton, a browser, helm, Docker files)")


def pytest_collection_modifyitems(config, items) -> None:
    """Each test is marked with its folder's tier (tests/unit, tests/service, tests/e2e); a unit test
    that starts a server carries its own ``service`` or ``e2e`` mark as well."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
