"""The ``triton`` reconstruction backend (:mod:`.backend`) and its Triton models' handlers (:mod:`.handlers`)."""

from glimpse3d.services.reconstruction.backends.triton.backend import TritonReconstructionBackend

__all__ = ["TritonReconstructionBackend"]
