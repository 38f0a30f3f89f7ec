"""Real spherical harmonics up to degree 3, evaluated the way 3DGS and gsplat do.

The basis constants and sign conventions are those of Sloan, "Efficient Spherical Harmonic
Evaluation" (JCGT 2013), which the 3DGS CUDA code and gsplat use, so coefficients trained by either
render the same colours here.
"""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def _bases(degree: int, dirs: Tensor) -> list[Tensor]:
    """SH basis functions 0..(degree+1)^2-1 at unit directions ``dirs`` [..., 3], each [...]."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree < 2:
        return out
    xx, yy, zz = x * x, y * y, z * z
    out += [
        _C2[0] * x * y,
        _C2[1] * y * z,
        _C2[2] * (2.0 * zz - xx - yy),
        _C2[3] * x * z,
        _C2[4] * (xx - yy),
    ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return out


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour [..., 3] from SH ``coeffs`` [..., K, 3] in view directions ``dirs`` [..., 3].

    ``dirs`` need not be unit length; only the first (degree+1)^2 coefficients are used. The result
    is the raw SH sum: callers add 0.5 and clamp (the 3DGS convention).
    """
    n_bases = (degree + 1) ** 2
    assert 0 <= degree <= 3, f"sh degree must be in 0..3, got {degree}"
    assert dirs.shape[-1] == 3, f"dirs must be [..., 3], got {list(dirs.shape)}"
    assert coeffs.shape[:-2] == dirs.shape[:-1] and coeffs.shape[-1] == 3 and coeffs.shape[-2] >= n_bases, (
        f"coeffs must be [..., >={n_bases}, 3] matching dirs {list(dirs.shape)}, got {list(coeffs.shape)}"
    )
    unit = torch.nn.functional.normalize(dirs, dim=-1)  # [..., 3]
    bases = torch.stack(_bases(degree, unit), dim=-1)  # [..., n_bases]
    return (bases.unsqueeze(-1) * coeffs[..., :n_bases, :]).sum(dim=-2)  # [..., 3]
