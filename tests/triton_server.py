"""A real tritonserver for tests: the model repository (deploy/triton, prepared: its one model.py in
every <model>/1/) on 127.0.0.1, CPU instances, tiny random weights (glimpse3d.core.tinymodels) and
options that keep them small on 2 cores.

The server comes from the nvidia-pytriton wheel (`make triton`). Without it the tests skip, except
under CI (CI=true), where a missing server is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.core.triton.server import LocalTriton, find_install, prepare_repository

REPO_ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = REPO_ROOT / "deploy" / "triton"

# Backend options for the tiny models (production defaults work at 512-1024 px).
TEST_OPTIONS = {
    "reconstruction_triposr": {"grid_resolution": 48, "max_gaussians": 3000},
    "multiview_zero123": {"steps": 2},
    "diffusion_sdxl": {"resolution": 64},
}
START_TIMEOUT_S = 300.0


def require_triton(work_dir: Path) -> None:
    """Skip (fail under CI) when the wheel's tritonserver is missing."""
    try:
        find_install(work_dir)
    except FailedPrecondition as err:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"tritonserver is required under CI: {err}")
        pytest.skip(str(err))


@contextmanager
def triton_for_tests(work_dir: Path, model_dir: Path, models: Sequence[str] | None = None,
                     **ports: int) -> Iterator[LocalTriton]:
    """A started server with ``models`` (default: all), stopped afterwards."""
    require_triton(work_dir)
    chosen = list(models) if models is not None else None
    options = {k: v for k, v in TEST_OPTIONS.items() if chosen is None or k in chosen}
    repo = prepare_repository(work_dir / "repository", src=REPOSITORY, models=chosen, cpu=True, options=options)
    server = LocalTriton(repo, work_dir, model_dir, **ports)
    server.start(START_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()
