"""CUDA path: gsplat's fused rasterizer with the same conventions as the torch path."""

from __future__ import annotations

import torch
from torch import Tensor

from glimpse3d.core.render._project import EPS2D, NEAR_PLANE
from glimpse3d.core.render._torch_raster import MIN_DEPTH_ALPHA
from glimpse3d.core.render.gaussians import GaussianTensors


def render(
    g: GaussianTensors,
    viewmat: Tensor,
    K: Tensor,
    size: tuple[int, int],
    background: Tensor,
    sh_degree: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render (rgb [H, W, 3], expected depth [H, W], alpha [H, W]) with ``gsplat.rasterization``.

    Needs CUDA tensors (the caller checks). gsplat computes colours from SH (view direction from the
    camera centre, + 0.5, clamped at 0) and the expected depth exactly as the torch path does.
    """
    from gsplat import rasterization  # imported here so that the CPU path never loads gsplat

    width, height = size
    f32 = torch.float32  # gsplat's kernels are float32 only
    colors, alphas, _meta = rasterization(
        means=g.means.to(f32),
        quats=g.quats.to(f32),
        scales=torch.exp(g.log_scales).to(f32),
        opacities=torch.sigmoid(g.opacity_logits).to(f32),
        colors=g.sh.to(f32),
        viewmats=viewmat[None].to(f32),  # [1, 4, 4]
        Ks=K[None].to(f32),  # [1, 3, 3]
        width=width,
        height=height,
        near_plane=NEAR_PLANE,
        eps2d=EPS2D,
        sh_degree=sh_degree,
        backgrounds=background[None].to(f32),  # [1, 3]
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # colors [1, H, W, 4], alphas [1, H, W, 1]
    assert colors.shape == (1, height, width, 4) and alphas.shape == (1, height, width, 1), (
        f"unexpected gsplat output shapes {list(colors.shape)}, {list(alphas.shape)}"
    )
    colors, alpha = colors[0].to(g.dtype), alphas[0, ..., 0].to(g.dtype)  # [H, W, 4], [H, W]
    depth = torch.where(alpha > MIN_DEPTH_ALPHA, colors[..., 3], 0.0)  # [H, W]; gsplat divides by alpha
    return colors[..., :3], depth, alpha
