"""The learned ``dpt`` depth backend (MiDaS v3 DPT / Depth Anything V2)."""

from glimpse3d.services.depth.backends.dpt.backend import DptDepthBackend

__all__ = ["DptDepthBackend"]
