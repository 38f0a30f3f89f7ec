"""Tiny random models for the reconstruction service's learned backends, in the real on-disk layout
(for tests and ``make bench``; production weights come from ``make models``)."""

from __future__ import annotations

from pathlib import Path


def write_tiny_models(model_dir: Path, seed: int = 0) -> list[str]:
    """Write every learned reconstruction backend's tiny model under ``model_dir``; returns the names."""
    from glimpse3d.services.reconstruction.backends.lgm.tiny import write_tiny as write_lgm
    from glimpse3d.services.reconstruction.backends.triposr.tiny import write_tiny as write_triposr

    return [*write_triposr(Path(model_dir), seed=seed), *write_lgm(Path(model_dir), seed=seed)]
