"""The learned ``zero123`` multiview backend (Zero-1-to-3)."""

from glimpse3d.services.multiview.backends.zero123.backend import Zero123Backend, Zero123Options

__all__ = ["Zero123Backend", "Zero123Options"]
