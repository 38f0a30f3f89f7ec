"""The learned ``sdxl`` diffusion backend."""

from glimpse3d.services.diffusion.backends.sdxl.backend import SDXLDiffusionBackend, SDXLOptions

__all__ = ["SDXLDiffusionBackend", "SDXLOptions"]
