"""The weight-free ``lift`` reconstruction backend (:mod:`.backend`)."""

from glimpse3d.services.reconstruction.backends.lift.backend import LiftBackend, LiftOptions

__all__ = ["LiftBackend", "LiftOptions"]
