"""Torch tensors for a :class:`~glimpse3d.core.splat.Splat`: what the rasterizer and optimisers use."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat, sh_degree_for_coeffs

_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


@dataclass(eq=False)
class GaussianTensors:
    """N Gaussians as torch tensors, in the parameterisation of :class:`Splat` (see its docstring)."""

    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4] (w, x, y, z), normalised where used
    log_scales: Tensor  # [N, 3]
    opacity_logits: Tensor  # [N]
    sh: Tensor  # [N, K, 3], K in {1, 4, 9, 16}

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise InvalidInput(f"{name} must be a torch.Tensor, got {type(value).__name__}", field=name)
            if not value.is_floating_point():
                raise InvalidInput(f"{name} must be floating point, got {value.dtype}", field=name)
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise InvalidInput(f"means must have shape [N, 3], got {list(self.means.shape)}", field="means")
        n = self.means.shape[0]
        for name, shape in (("quats", (n, 4)), ("log_scales", (n, 3)), ("opacity_logits", (n,))):
            if tuple(getattr(self, name).shape) != shape:
                raise InvalidInput(
                    f"{name} must have shape {list(shape)} (N = len(means)), got {list(getattr(self, name).shape)}",
                    field=name,
                )
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise InvalidInput(f"sh must have shape [{n}, K, 3], got {list(self.sh.shape)}", field="sh")
        sh_degree_for_coeffs(self.sh.shape[1])
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if value.device != self.means.device or value.dtype != self.means.dtype:
                raise InvalidInput(
                    f"{name} is {value.dtype} on {value.device} but means is {self.means.dtype} on "
                    f"{self.means.device}; all fields must share dtype and device",
                    field=name,
                )

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_for_coeffs(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype


def to_tensors(splat: Splat, device: str | torch.device = "cpu", requires_grad: bool = False) -> GaussianTensors:
    """Copy a splat into fresh float32 tensors on ``device`` (leaf tensors when ``requires_grad``)."""
    if not isinstance(splat, Splat):
        raise InvalidInput(f"splat must be a Splat, got {type(splat).__name__}", field="splat")
    tensors = {
        name: torch.tensor(getattr(splat, name), dtype=torch.float32, device=device).requires_grad_(requires_grad)
        for name in _FIELDS
    }
    return GaussianTensors(**tensors)


def from_tensors(g: GaussianTensors) -> Splat:
    """Detach to a numpy :class:`Splat` (float32, validated by its constructor)."""
    arrays = {name: getattr(g, name).detach().to("cpu", torch.float32).numpy() for name in _FIELDS}
    return Splat(**arrays)
