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
import importlib
import sys
from pathlib import Path

SERVICES = ("depth", "reconstruction", "multiview", "diffusion", "backprojection")


def write_all(model_dir: Path, seed: int = 0, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Write every installed service's tiny models under ``model_dir``; returns the model names."""
    names: list[str] = []
    for service in services:
        try:
            module = importlib.import_module(f"glimpse3d.services.{service}.tiny")
        except ModuleNotFoundError as err:
            if err.name and (err.name == f"glimpse3d.services.{service}" or err.name.endswith(".tiny")):
                continue  # service not installed here, or it has no learned backends
            raise
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
