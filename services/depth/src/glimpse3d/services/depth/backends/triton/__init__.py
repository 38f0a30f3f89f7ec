"""The depth service's ``triton`` backend and its Triton model handlers."""

from glimpse3d.services.depth.backends.triton.backend import DepthHandler, MattingHandler, TritonDepthBackend

__all__ = ["DepthHandler", "MattingHandler", "TritonDepthBackend"]
