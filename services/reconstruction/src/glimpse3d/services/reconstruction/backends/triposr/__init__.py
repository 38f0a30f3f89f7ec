"""The ``triposr`` reconstruction backend: TripoSR's triplane NeRF converted to Gaussians (:mod:`.backend`)."""

from typing import Any

__all__ = ["TripoSRBackend", "TripoSROptions"]


def __getattr__(name: str) -> Any:
    # Lazy: the weight manifest (.source) is read without torch, and importing it imports this package.
    if name in __all__:
        from glimpse3d.services.reconstruction.backends.triposr import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
