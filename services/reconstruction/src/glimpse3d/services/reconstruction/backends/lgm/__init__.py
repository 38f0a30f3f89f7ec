"""The ``lgm`` reconstruction backend (Large Multi-View Gaussian Model): the photo plus three views
at +90/+180/+270 degrees of azimuth -> 3D Gaussians in one forward pass (:mod:`.backend`)."""

from typing import Any

__all__ = ["LGMBackend", "LGMOptions"]


def __getattr__(name: str) -> Any:
    # Lazy: the weight manifest (.source) is read without torch, and importing it imports this package.
    if name in __all__:
        from glimpse3d.services.reconstruction.backends.lgm import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
