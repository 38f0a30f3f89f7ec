"""Projection of 3D Gaussians to screen-space 2D Gaussians (EWA splatting, 3DGS / gsplat "classic").

All functions are differentiable pure torch and follow gsplat's pinhole projection exactly:
covariance R S S^T R^T, world-to-camera rotation, the affine Jacobian of the perspective map with
gsplat's frustum clamp, 0.3 px^2 added to the 2D covariance diagonal, and the opacity-aware
bounding radius of gsplat's CUDA kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

EPS2D = 0.3  # px^2 added to the 2D covariance diagonal (gsplat's default, a low-pass filter)
NEAR_PLANE = 0.01  # Gaussians whose centre has camera z <= this are culled
ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian contributes to a pixel only if its alpha there is >= this
MAX_ALPHA = 0.999
# gsplat's bounding extent in standard deviations; exp(-3.33^2 / 2) < 1/255, so the cap never cuts off a
# pixel that would pass the alpha threshold.
MAX_EXTENT_SIGMAS = 3.33
_MIN_DET = 1e-10
# How far outside the image (as a fraction of the half field of view) a centre may lie before the
# Jacobian is evaluated at the clamped position instead: gsplat's guard against huge off-screen splats.
_FRUSTUM_GUARD = 0.3


class Projected(NamedTuple):
    means2d: Tensor  # [N, 2] pixel coordinates (u, v)
    conics: Tensor  # [N, 3] inverse 2D covariance (a, b, c): d^T Q d = a dx^2 + 2 b dx dy + c dy^2
    depths: Tensor  # [N] camera-space z
    cov_diag: Tensor  # [N, 2] diagonal of the 2D covariance (eps2d included)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] from (w, x, y, z) quaternions [N, 4] (normalised here)."""
    assert quats.ndim == 2 and quats.shape[1] == 4, f"quats must be [N, 4], got {list(quats.shape)}"
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)  # each [N]
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(-1, 3, 3)  # [N, 3, 3]


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances [N, 3, 3] = R S S^T R^T from quats [N, 4] and linear scales [N, 3]."""
    assert scales.shape == (quats.shape[0], 3), f"scales must be [{quats.shape[0]}, 3], got {list(scales.shape)}"
    m = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R S
    return m @ m.transpose(1, 2)  # [N, 3, 3]


def project(means: Tensor, covars: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int) -> Projected:
    """Project world-space Gaussians (means [N, 3], covariances [N, 3, 3]) through a pinhole camera.

    ``viewmat`` [4, 4] is world-to-camera (OpenCV axes), ``K`` [3, 3] the intrinsics. Callers must
    already have dropped Gaussians with depth <= the near plane (the perspective divide needs z > 0).
    """
    n = means.shape[0]
    assert means.shape == (n, 3), f"means must be [N, 3], got {list(means.shape)}"
    assert covars.shape == (n, 3, 3), f"covars must be [{n}, 3, 3], got {list(covars.shape)}"
    assert viewmat.shape == (4, 4) and K.shape == (3, 3), (
        f"viewmat must be [4, 4] and K [3, 3], got {list(viewmat.shape)} and {list(K.shape)}"
    )
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]  # [3, 3], [3]
    means_c = means @ rot.T + trans  # [N, 3]
    covars_c = rot @ covars @ rot.T  # [N, 3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tx, ty, tz = means_c.unbind(-1)  # each [N]
    lim_x_pos = (width - cx) / fx + _FRUSTUM_GUARD * (0.5 * width / fx)
    lim_x_neg = cx / fx + _FRUSTUM_GUARD * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + _FRUSTUM_GUARD * (0.5 * height / fy)
    lim_y_neg = cy / fy + _FRUSTUM_GUARD * (0.5 * height / fy)
    jx = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)  # [N]
    jy = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)  # [N]
    zero = torch.zeros_like(tz)
    jac = torch.stack(
        [fx / tz, zero, -fx * jx / (tz * tz), zero, fy / tz, -fy * jy / (tz * tz)], dim=-1
    ).reshape(n, 2, 3)  # [N, 2, 3]
    cov2d = jac @ covars_c @ jac.transpose(1, 2)  # [N, 2, 2]
    c00 = cov2d[:, 0, 0] + EPS2D  # [N]
    c11 = cov2d[:, 1, 1] + EPS2D  # [N]
    c01 = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])  # [N]
    det = torch.clamp(c00 * c11 - c01 * c01, min=_MIN_DET)  # [N]
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], dim=-1)  # [N, 3]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)  # [N, 2]
    return Projected(means2d, conics, tz, torch.stack([c00, c11], dim=-1))


@torch.no_grad()
def pixel_radii(cov_diag: Tensor, opacities: Tensor) -> Tensor:
    """Integer half-extents [N, 2] (x, y) in pixels of the region where a Gaussian's alpha >= 1/255.

    Alpha o * exp(-q/2) reaches 1/255 on the ellipse q = 2 ln(255 o); its axis-aligned half-extents
    are sqrt(2 ln(255 o) * cov_ii), capped at 3.33 sigma as in gsplat. Gaussians that can never reach
    the threshold (o < 1/255) get radius 0.
    """
    assert cov_diag.shape == (opacities.shape[0], 2), (
        f"cov_diag must be [{opacities.shape[0]}, 2], got {list(cov_diag.shape)}"
    )
    ratio = torch.clamp(opacities / ALPHA_THRESHOLD, min=1.0)  # [N]
    extent = torch.clamp(torch.sqrt(2.0 * torch.log(ratio)), max=MAX_EXTENT_SIGMAS)  # [N]
    radii = torch.ceil(extent[:, None] * torch.sqrt(cov_diag))  # [N, 2]
    return torch.where((opacities >= ALPHA_THRESHOLD)[:, None], radii, torch.zeros_like(radii))

