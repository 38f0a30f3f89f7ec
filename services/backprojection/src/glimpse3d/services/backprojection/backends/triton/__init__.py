"""``triton``: MVCRM in this process with the CLIP check served by Triton (``backprojection_clip``)."""

from glimpse3d.services.backprojection.backends.triton.backend import (
    MODEL,
    ClipHandler,
    TritonClipScorer,
    TritonMVCRMBackend,
    TritonMVCRMOptions,
)

__all__ = ["MODEL", "ClipHandler", "TritonClipScorer", "TritonMVCRMBackend", "TritonMVCRMOptions"]
