"""Gaussian-splat rasterization (needs torch).

``rasterize`` renders colour, expected depth and alpha. On CUDA tensors it calls gsplat's fused
kernels; elsewhere it runs a differentiable, tile-based rasterizer with the same math (3DGS
"classic": EWA projection, 0.3 px^2 low-pass, front-to-back alpha compositing) whose memory stays
bounded for large scenes: on CPU its projection/SH, binning and compositing stages are compiled
C++/OpenMP kernels when built (``python -m glimpse3d.core.render.build_ext``, docs/rasterizer.md),
else pure torch.
"""

from glimpse3d.core.render._project import quat_to_rotmat
from glimpse3d.core.render._rasterize import RenderOutput, rasterize
from glimpse3d.core.render.gaussians import GaussianTensors, from_tensors, to_tensors

__all__ = ["GaussianTensors", "RenderOutput", "from_tensors", "quat_to_rotmat", "rasterize", "to_tensors"]
