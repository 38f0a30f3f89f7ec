"""The ``triton`` multiview backend and the Triton handler of ``multiview_zero123``."""

from glimpse3d.services.multiview.backends.triton.backend import MODEL, TritonMultiviewBackend, Zero123Handler

__all__ = ["MODEL", "TritonMultiviewBackend", "Zero123Handler"]
