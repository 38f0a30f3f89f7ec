"""The weight-free ``render`` multiview backend."""

from glimpse3d.services.multiview.backends.render.backend import RenderBackend, RenderOptions

__all__ = ["RenderBackend", "RenderOptions"]
