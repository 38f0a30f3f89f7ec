"""Tiny random models for every learned backend, written in the real on-disk layout.

Each service with learned backends has a ``glimpse3d.services.<service>.tiny`` module whose
``write_tiny_models(model_dir, seed)`` builds seeded tiny configs and saves them exactly where and
how the production weights from ``make models`` would be. The tests, ``make bench`` and a local
stack without weights (``python -m glimpse3d.core.tinymodels --out DIR``, then
``GLIMPSE3D_MODEL_DIR=DIR``) use them; the outputs are meaningless but every loading and inference
path runs for real.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glimpse3d.core.models import SERVICES, service_module


def write_all(model_dir: Path, seed: int = 0, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Write every installed service's tiny models under ``model_dir``; returns the model names."""
    names: list[str] = []
    for service in services:
        module = service_module(service, "tiny")  # None: not installed, or no learned backends
        if module is not None:
            names.extend(module.write_tiny_models(Path(model_dir), seed=seed))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    for name in write_all(ns.out, ns.seed):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
