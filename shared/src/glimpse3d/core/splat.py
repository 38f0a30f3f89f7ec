"""The Gaussian splat data model.

A :class:`Splat` holds N anisotropic 3D Gaussians in the parameterisation that 3D Gaussian
Splatting (Kerbl et al. 2023) trains and stores:

- ``means``          [N, 3] float32, world units;
- ``quats``          [N, 4] float32, rotation as (w, x, y, z); need not be unit length (normalised
  wherever it is used), but must not be zero;
- ``log_scales``     [N, 3] float32, natural log of the per-axis standard deviation;
- ``opacity_logits`` [N]    float32, opacity = sigmoid(logit);
- ``sh``             [N, K, 3] float32, real spherical-harmonic coefficients per colour channel,
  K = (degree + 1)^2 with degree 0..3. Band 0 maps to colour as ``0.5 + C0 * sh[:, 0]`` where
  C0 = 0.28209479177387814, the 3DGS convention.

Arrays are numpy so that code without torch (the gateway, exporters) can use the model; the
rasterizer converts to torch tensors. Construction validates shapes, dtypes and finiteness and
raises :class:`~glimpse3d.core.errors.InvalidInput` naming the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from glimpse3d.core.errors import InvalidInput

SH_C0 = 0.28209479177387814
MAX_SH_DEGREE = 3
# Upper bound accepted anywhere a splat enters the system (files, RPCs). 3DGS scenes of real rooms
# reach ~6M Gaussians; objects from one photo stay far below. Guards against absurd allocations.
MAX_GAUSSIANS = 20_000_000


def sh_coeffs_for_degree(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree`` (0..3)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise InvalidInput(f"sh degree must be in 0..{MAX_SH_DEGREE}, got {degree}", field="sh_degree")
    return (degree + 1) ** 2


def sh_degree_for_coeffs(k: int) -> int:
    for d in range(MAX_SH_DEGREE + 1):
        if (d + 1) ** 2 == k:
            return d
    raise InvalidInput(
        f"sh must have 1, 4, 9 or 16 coefficients per channel, got {k}", field="sh"
    )


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    """Colour in [0, 1] -> band-0 SH coefficient (inverse of :func:`sh0_to_rgb`)."""
    return (np.asarray(rgb, dtype=np.float32) - 0.5) / SH_C0


def sh0_to_rgb(sh0: np.ndarray) -> np.ndarray:
    return np.asarray(sh0, dtype=np.float32) * SH_C0 + 0.5


def _check(name: str, arr: object, shape_tail: tuple[int, ...]) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise InvalidInput(f"{name} must be a numpy array, got {type(arr).__name__}", field=name)
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        want = "[N" + "".join(f", {s}" for s in shape_tail) + "]"
        raise InvalidInput(f"{name} must have shape {want}, got {list(arr.shape)}", field=name)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInput(f"{name} must be floating point, got {arr.dtype}", field=name)
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).reshape(out.shape[0], -1).all(axis=1))[0])
        raise InvalidInput(f"{name} has a non-finite value at Gaussian {bad}", field=name)
    return out


def _broadcast(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return np.broadcast_to(np.asarray(value, dtype=np.float32), shape)
    except (TypeError, ValueError):
        got = list(np.shape(value)) if isinstance(value, np.ndarray | list | tuple) else type(value).__name__
        raise InvalidInput(f"{name} must broadcast to shape {list(shape)}, got {got}", field=name) from None


@dataclass(frozen=True, eq=False)
class Splat:
    means: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] (w, x, y, z)
    log_scales: np.ndarray  # [N, 3]
    opacity_logits: np.ndarray  # [N]
    sh: np.ndarray  # [N, K, 3]

    def __post_init__(self) -> None:
        means = _check("means", self.means, (3,))
        n = means.shape[0]
        if n > MAX_GAUSSIANS:
            raise InvalidInput(f"splat has {n} Gaussians, more than the limit {MAX_GAUSSIANS}", field="means")
        quats = _check("quats", self.quats, (4,))
        log_scales = _check("log_scales", self.log_scales, (3,))
        opac = _check("opacity_logits", self.opacity_logits, ())
        if not isinstance(self.sh, np.ndarray) or self.sh.ndim != 3 or self.sh.shape[2] != 3:
            got = list(self.sh.shape) if isinstance(self.sh, np.ndarray) else type(self.sh).__name__
            raise InvalidInput(f"sh must have shape [N, K, 3], got {got}", field="sh")
        sh_degree_for_coeffs(self.sh.shape[1])
        sh = _check("sh", self.sh, tuple(self.sh.shape[1:]))
        for name, arr in (("quats", quats), ("log_scales", log_scales), ("opacity_logits", opac), ("sh", sh)):
            if arr.shape[0] != n:
                raise InvalidInput(
                    f"{name} has {arr.shape[0]} rows but means has {n}", field=name
                )
        norms = np.linalg.norm(quats.astype(np.float64), axis=1)  # float32 squares overflow past ~1.8e19
        if n and (norms < 1e-12).any():
            raise InvalidInput(
                f"quats has a zero quaternion at Gaussian {int(np.argmax(norms < 1e-12))}", field="quats"
            )
        for name, arr in (("means", means), ("quats", quats), ("log_scales", log_scales),
                          ("opacity_logits", opac), ("sh", sh)):
            object.__setattr__(self, name, arr)

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def sh_degree(self) -> int:
        return sh_degree_for_coeffs(self.sh.shape[1])

    @property
    def opacities(self) -> np.ndarray:
        """[N] opacity in (0, 1)."""
        return (1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64)))).astype(np.float32)

    @property
    def scales(self) -> np.ndarray:
        """[N, 3] linear standard deviations."""
        return np.exp(self.log_scales)

    @property
    def unit_quats(self) -> np.ndarray:
        q = self.quats.astype(np.float64)
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    @property
    def base_colors(self) -> np.ndarray:
        """[N, 3] view-independent colour (band 0 only), clipped to [0, 1]."""
        return np.clip(sh0_to_rgb(self.sh[:, 0, :]), 0.0, 1.0)

    @classmethod
    def from_colors(
        cls,
        means: npt.ArrayLike,
        colors: npt.ArrayLike,
        scales: npt.ArrayLike,
        opacities: npt.ArrayLike,
        *,
        quats: npt.ArrayLike | None = None,
        sh_degree: int = 0,
    ) -> Splat:
        """Build a splat from linear quantities: colours in [0,1], scales > 0, opacities in (0,1)."""
        means = np.asarray(means, dtype=np.float32)
        n = means.shape[0]
        scales = _broadcast("scales", scales, (n, 3))
        if not (np.isfinite(scales) & (scales > 0)).all():
            raise InvalidInput("scales must be positive and finite", field="scales")
        opacities = _broadcast("opacities", opacities, (n,))
        if not ((opacities > 0) & (opacities < 1)).all():
            raise InvalidInput("opacities must be in the open interval (0, 1)", field="opacities")
        if quats is None:
            quats = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
        sh = np.zeros((n, sh_coeffs_for_degree(sh_degree), 3), np.float32)
        sh[:, 0, :] = rgb_to_sh0(_broadcast("colors", colors, (n, 3)))
        return cls(
            means=means,
            quats=np.asarray(quats, np.float32),
            log_scales=np.log(scales),
            opacity_logits=np.log(opacities) - np.log1p(-opacities),
            sh=sh,
        )

    def subset(self, index: np.ndarray) -> Splat:
        return Splat(self.means[index], self.quats[index], self.log_scales[index],
                     self.opacity_logits[index], self.sh[index])

    def allclose(self, other: Splat, atol: float = 1e-6) -> bool:
        return (
            self.num_gaussians == other.num_gaussians
            and self.sh.shape == other.sh.shape
            and all(
                np.allclose(getattr(self, f), getattr(other, f), atol=atol)
                for f in ("means", "quats", "log_scales", "opacity_logits", "sh")
            )
        )
