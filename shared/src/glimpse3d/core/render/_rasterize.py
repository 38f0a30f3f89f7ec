"""The one public rendering entry point: :func:`rasterize`."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from glimpse3d.core.cameras import MAX_IMAGE_SIDE, Camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import _cpu_raster as cpu_raster
from glimpse3d.core.render._gsplat import render as gsplat_render
from glimpse3d.core.render._torch_raster import render as torch_render
from glimpse3d.core.render.gaussians import GaussianTensors, to_tensors
from glimpse3d.core.splat import Splat

logger = logging.getLogger(__name__)

Backend = Literal["auto", "cpu", "torch", "gsplat"]
_BACKENDS = ("auto", "cpu", "torch", "gsplat")


class RenderOutput(NamedTuple):
    rgb: Tensor  # [H, W, 3] composited over the background
    depth: Tensor  # [H, W] expected camera z, sum(w z) / alpha where alpha > 1e-6, else 0
    alpha: Tensor  # [H, W] accumulated opacity sum(w)


def rasterize(
    gaussians: GaussianTensors | Splat,
    camera: Camera,
    width: int | None = None,
    height: int | None = None,
    background: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    *,
    sh_degree: int | None = None,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render Gaussians through a pinhole camera (3DGS "classic" rasterization, gsplat conventions).

    ``width``/``height`` default to the camera's; other sizes rescale the intrinsics. Colour is the
    SH sum in the direction from the camera centre to each mean, + 0.5, clamped at 0 (up to
    ``sh_degree``, default: all bands present). ``rgb = sum(w c) + (1 - alpha) background``.
    ``backend="auto"`` uses gsplat for CUDA tensors; on CPU, the compiled CPU kernel when it is built
    (``make setup``) and the dtype is float32/float64, else the differentiable pure-torch rasterizer.
    ``"cpu"`` requires the compiled kernel, ``"torch"`` forces the pure-torch path (the reference),
    ``"gsplat"`` requires CUDA tensors.
    """
    g = _as_tensors(gaussians)
    camera = _resized(camera, width, height)
    degree = _check_sh_degree(sh_degree, g)
    bg = _background(background, g)
    chosen = _choose_backend(backend, g)
    viewmat = torch.as_tensor(camera.world_to_camera, dtype=g.dtype, device=g.device)  # [4, 4]
    K = torch.as_tensor(camera.K, dtype=g.dtype, device=g.device)  # [3, 3]
    size = (camera.width, camera.height)
    logger.debug("rasterize %d Gaussians at %dx%d with %s", g.num_gaussians, *size, chosen)
    if chosen == "gsplat":
        rgb, depth, alpha = gsplat_render(g, viewmat, K, size, bg, degree)
    else:
        campos = torch.as_tensor(camera.position, dtype=g.dtype, device=g.device)  # [3]
        rgb, depth, alpha = torch_render(g, viewmat, K, campos, size, bg, degree, compiled=chosen == "cpu")
    return RenderOutput(rgb, depth, alpha)


def _as_tensors(gaussians: GaussianTensors | Splat) -> GaussianTensors:
    if isinstance(gaussians, Splat):
        return to_tensors(gaussians)
    if not isinstance(gaussians, GaussianTensors):
        raise InvalidInput(
            f"gaussians must be GaussianTensors or Splat, got {type(gaussians).__name__}", field="gaussians"
        )
    return gaussians


def _resized(camera: Camera, width: int | None, height: int | None) -> Camera:
    if not isinstance(camera, Camera):
        raise InvalidInput(f"camera must be a Camera, got {type(camera).__name__}", field="camera")
    size = {"width": camera.width if width is None else width, "height": camera.height if height is None else height}
    for name, value in size.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise InvalidInput(f"{name} must be an integer in 1..{MAX_IMAGE_SIDE}, got {value!r}", field=name)
    if (size["width"], size["height"]) == (camera.width, camera.height):
        return camera
    return camera.with_size(size["width"], size["height"])


def _check_sh_degree(sh_degree: int | None, g: GaussianTensors) -> int:
    if sh_degree is None:
        return g.sh_degree
    if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= g.sh_degree:
        raise InvalidInput(
            f"sh_degree must be an integer in 0..{g.sh_degree} (the degree of sh), got {sh_degree!r}",
            field="sh_degree",
        )
    return sh_degree


def _background(background: Sequence[float] | Tensor, g: GaussianTensors) -> Tensor:
    """[3] background colour on the Gaussians' device and dtype (a tensor keeps its autograd graph)."""
    if isinstance(background, Tensor):
        bg = background.to(device=g.device, dtype=g.dtype)
    else:
        try:
            values = [float(v) for v in background]
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"background must be 3 numbers, got {background!r}", field="background") from exc
        if not all(math.isfinite(v) for v in values):
            raise InvalidInput(f"background must be finite, got {values}", field="background")
        bg = torch.tensor(values, device=g.device, dtype=g.dtype)
    if bg.shape != (3,):
        raise InvalidInput(f"background must have shape [3], got {list(bg.shape)}", field="background")
    return bg


def _choose_backend(backend: str, g: GaussianTensors) -> str:
    """"gsplat", "cpu" (the compiled CPU kernel) or "torch"."""
    if backend not in _BACKENDS:
        raise InvalidInput(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}", field="backend")
    on_cuda = g.device.type == "cuda" and torch.cuda.is_available()
    if backend == "gsplat" and not on_cuda:
        raise InvalidInput(f"backend 'gsplat' needs CUDA tensors, got device {g.device}", field="backend")
    if backend == "cpu":
        if g.device.type != "cpu" or g.dtype not in cpu_raster.DTYPES:
            raise InvalidInput(f"backend 'cpu' needs float32 or float64 CPU tensors, got {g.dtype} on {g.device}",
                               field="backend")
        if not cpu_raster.available():
            raise InvalidInput(
                "backend 'cpu' needs the compiled CPU rasterizer, which is not built: run "
                "`python -m glimpse3d.core.render.build_ext` (part of `make setup`)", field="backend"
            )
        return "cpu"
    if backend == "auto":
        if on_cuda:
            return "gsplat"
        if g.device.type == "cpu" and g.dtype in cpu_raster.DTYPES and cpu_raster.available():
            return "cpu"
        return "torch"
    return backend
