"""``mvcrm``: MVCRM in this process, with an optional CLIP check."""

from glimpse3d.services.backprojection.backends.mvcrm.backend import MVCRMBackend, MVCRMOptions, MVCRMRoundOptions

__all__ = ["MVCRMBackend", "MVCRMOptions", "MVCRMRoundOptions"]
