"""The ``triton`` diffusion backend and the ``diffusion_sdxl`` model's handler."""

from glimpse3d.services.diffusion.backends.triton.backend import MODEL, SDXLHandler, TritonDiffusionBackend

__all__ = ["MODEL", "SDXLHandler", "TritonDiffusionBackend"]
