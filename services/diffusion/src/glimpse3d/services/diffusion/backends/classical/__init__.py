"""The weight-free ``classical`` diffusion backend."""

from glimpse3d.services.diffusion.backends.classical.backend import ClassicalDiffusionBackend, ClassicalOptions

__all__ = ["ClassicalDiffusionBackend", "ClassicalOptions"]
