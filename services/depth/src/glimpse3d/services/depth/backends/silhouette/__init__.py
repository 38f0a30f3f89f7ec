"""The weight-free ``silhouette`` depth backend."""

from glimpse3d.services.depth.backends.silhouette.backend import SilhouetteDepthBackend

__all__ = ["SilhouetteDepthBackend"]
