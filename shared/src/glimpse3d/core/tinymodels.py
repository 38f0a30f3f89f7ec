"""Tiny random models for every learned backend, written in the real on-disk layout.

Each package with learned backends declares a ``write_tiny_models(model_dir, seed)`` function in the
``glimpse3d.tiny_models`` entry point group; it builds seeded tiny configs and saves them exactly where and
how the production weights from ``make models`` would be. The tests, ``make bench`` and a local
stack without weights (``python -m glimpse3d.core.tinymodels --out DIR``, then
``GLIMPSE3D_MODEL_DIR=DIR``) use them; the outputs are meaningless but every loading and inference
path runs for real.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glimpse3d.core.backends import TINY_MODELS_GROUP, plugins


def write_all(model_dir: Path, seed: int = 0, owners: tuple[str, ...] | None = None) -> list[str]:
    """Write every installed package's tiny models (or those of ``owners``) under ``model_dir``;
    returns the model names."""
    names: list[str] = []
    for owner, entry in sorted(plugins(TINY_MODELS_GROUP).items()):
        if owners is None or owner in owners:
            names.extend(entry.load()(Path(model_dir), seed=seed))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    for name in write_all(ns.out, ns.seed):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
