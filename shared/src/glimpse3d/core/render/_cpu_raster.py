"""The tile rasterizer's screen-space, binning and composite stages as compiled CPU kernels (``csrc/``).

* :class:`ScreenSpaceCPU` (``csrc/screen_cpu.cpp``) replaces :func:`._torch_raster.screen_space`
  (projection, culling, SH colour) by one OpenMP loop over Gaussians and a hand-written backward
  to means, quats, log-scales, opacity logits and SH. It has no camera gradients: when the camera
  tensors require grad, :func:`._torch_raster.render` keeps the torch ``screen_space`` (autograd
  through ``viewmat``).
* :class:`CompositeCPU` (``csrc/raster_cpu.cpp``) replaces ``composite`` — screen-space Gaussians
  [N, 10] to [H, W, 5] sums — with OpenMP loops over tiles with the numerics of
  :class:`._blend.BlendChunk` (alpha threshold 1/255, alpha cap 0.999, stop at transmittance 1e-4).
  Between forward and backward it keeps the inputs, the tile lists, each pixel's final
  transmittance and how many list entries it used: O(Gaussians + intersections + pixels).

* :func:`bin_compiled` replaces :func:`._torch_raster.bin_gaussians` (no gradients): the same tile
  lists from one depth sort and a counting sort instead of torch's sorts over all tile-Gaussian pairs.

The kernel is built by ``python -m glimpse3d.core.render.build_ext`` (``make setup``); when it is
not built, :func:`kernel` returns None (logged once) and ``rasterize`` uses the pure-torch path.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from glimpse3d.core.render._blend import FEATURES
from glimpse3d.core.render._torch_raster import TILE_SIZE, Binned
from glimpse3d.core.render.gaussians import GaussianTensors

logger = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.float64)
_loaded: dict[str, ModuleType | None] = {}  # "module": the kernel, or None; empty until first asked


def kernel() -> ModuleType | None:
    """The compiled module, or None when it is not built or cannot be loaded (logged once)."""
    if "module" not in _loaded:
        # Imported here, not at module level: `python -m glimpse3d.core.render.build_ext` imports this
        # package first, and runpy warns when the module it runs is already in sys.modules.
        from glimpse3d.core.render import build_ext

        try:
            module = build_ext.load()
        except (ImportError, OSError) as exc:  # built for another torch or platform, or a broken file
            logger.warning("compiled CPU rasterizer at %s cannot be loaded (%s); using the torch path",
                           build_ext.built_path(), exc)
            module = None
        else:
            if module is None:
                logger.info("compiled CPU rasterizer not built (python -m glimpse3d.core.render.build_ext); "
                            "using the slower pure-torch path")
        _loaded["module"] = module
    return _loaded["module"]


def available() -> bool:
    return kernel() is not None


def set_threads(threads: int) -> bool:
    """Run the compiled kernels on ``threads`` OpenMP threads whatever torch's intra-op count is (0: follow
    torch's count at each call, the default). False when the kernels are not built (nothing to set).

    A render is a few large kernel calls among many small torch operations; at MVCRM's sizes the small
    operations are faster on one thread (a fusion step measured 12 % faster with torch at one thread and
    the kernels on both cores: glimpse3d.core.service.configure_torch)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= 1024:
        raise ValueError(f"threads must be an integer in 0..1024, got {threads!r}")
    ext = kernel()
    if ext is None:
        return False
    ext.set_threads(threads)
    return True


def threads() -> int | None:
    """The threads the compiled kernels use now (None when they are not built)."""
    ext = kernel()
    return None if ext is None else int(ext.threads())


class CompositeCPU(torch.autograd.Function):
    """(feats [N, F], tiles, starts, counts, ids (from ``bin_gaussians``), width, height, tile_size)
    -> sums [H, W, 5] (sum w c, sum w z, sum w)."""

    @staticmethod
    def forward(ctx: Any, feats: Tensor, tiles: Tensor, starts: Tensor, counts: Tensor, ids: Tensor,
                width: int, height: int, tile_size: int) -> Tensor:
        ext = kernel()
        assert ext is not None, "the compiled CPU rasterizer is not built"
        feats = feats.contiguous()
        sums, t_final, used = ext.forward(feats, tiles, starts, counts, ids, width, height, tile_size)
        ctx.save_for_backward(feats, tiles, starts, counts, ids, t_final, used)
        ctx.size = (width, height, tile_size)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_sums: Tensor) -> tuple[Tensor | None, ...]:
        feats, tiles, starts, counts, ids, t_final, used = ctx.saved_tensors
        ext = kernel()
        assert ext is not None
        grad = ext.backward(feats, tiles, starts, counts, ids, *ctx.size, grad_sums.contiguous(), t_final, used)
        return grad, None, None, None, None, None, None, None


def bin_compiled(feats: Tensor, radii: Tensor, grid: tuple[int, int], tile_size: int) -> Binned:
    """:func:`._torch_raster.bin_gaussians` of screen-space Gaussians (feats [N, 10], radii [N, 2]) in C++:
    the same tile lists in the same order (one sort by depth, then a counting sort into tiles)."""
    ext = kernel()
    assert ext is not None, "the compiled CPU rasterizer is not built"
    rows, cols = grid
    tiles, starts, counts, ids = ext.bin_gaussians(feats.detach().contiguous(), radii.to(feats.dtype).contiguous(),
                                                   rows, cols, tile_size)
    return Binned(tiles, starts, counts, ids)


def composite(feats: Tensor, radii: Tensor, width: int, height: int, *, tile_size: int = TILE_SIZE) -> Tensor:
    """Drop-in for :func:`._torch_raster.composite` on CPU float32/float64 tensors: [H, W, 5] sums."""
    n = feats.shape[0]
    assert feats.shape == (n, FEATURES), f"feats must be [N, {FEATURES}], got {list(feats.shape)}"
    assert feats.device.type == "cpu" and feats.dtype in DTYPES, f"needs CPU float32/64: {feats.device} {feats.dtype}"
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    binned = bin_compiled(feats.detach(), radii, (rows, cols), tile_size)
    result = CompositeCPU.apply(feats, binned.tiles, binned.starts, binned.counts, binned.ids, width, height, tile_size)
    assert isinstance(result, Tensor)
    return result


class ScreenSpaceCPU(torch.autograd.Function):
    """(means, quats, log_scales, opacity_logits, sh, viewmat, K, campos, width, height, sh_degree)
    -> (feats [V, 10], radii [V, 2], kept Gaussian indices [V]) as :func:`._torch_raster.screen_space`.

    Gradients flow to the five Gaussian fields only; radii and indices are not differentiable."""

    @staticmethod
    def forward(ctx: Any, means: Tensor, quats: Tensor, log_scales: Tensor, opacity_logits: Tensor, sh: Tensor,
                viewmat: Tensor, K: Tensor, campos: Tensor, width: int, height: int,
                sh_degree: int) -> tuple[Tensor, Tensor, Tensor]:
        ext = kernel()
        assert ext is not None, "the compiled CPU rasterizer is not built"
        inputs = [t.contiguous() for t in (means, quats, log_scales, opacity_logits, sh, viewmat, K, campos)]
        feats, radii, keep = ext.screen_forward(*inputs, width, height, sh_degree)
        ctx.save_for_backward(*inputs, keep)
        ctx.args = (width, height, sh_degree)
        ctx.mark_non_differentiable(radii, keep)
        return feats, radii, keep

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_feats: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        *inputs, keep = ctx.saved_tensors
        ext = kernel()
        assert ext is not None
        if grad_feats is None:
            grad_feats = torch.zeros(keep.shape[0], FEATURES, dtype=inputs[0].dtype)
        grads = ext.screen_backward(*inputs, *ctx.args, keep, grad_feats.contiguous())
        return (*grads, None, None, None, None, None, None)


def screen_space(g: GaussianTensors, viewmat: Tensor, K: Tensor, campos: Tensor, width: int, height: int,
                 sh_degree: int) -> tuple[Tensor, Tensor]:
    """Drop-in for :func:`._torch_raster.screen_space` on CPU float32/float64 tensors (no camera gradients)."""
    assert g.device.type == "cpu" and g.dtype in DTYPES, f"needs CPU float32/64: {g.device} {g.dtype}"
    feats, radii, _ = ScreenSpaceCPU.apply(g.means, g.quats, g.log_scales, g.opacity_logits, g.sh,
                                           viewmat.detach(), K.detach(), campos.detach(), width, height, sh_degree)
    return feats, radii


def fused_screen_space_applies(g: GaussianTensors, viewmat: Tensor, K: Tensor, campos: Tensor) -> bool:
    """Whether :func:`screen_space` can stand in for the torch one: CPU float32/64 tensors of one dtype,
    the kernel built, and no camera tensor that autograd must differentiate."""
    cams = (viewmat, K, campos)
    if g.device.type != "cpu" or g.dtype not in DTYPES:
        return False
    if any(t.device.type != "cpu" or t.dtype != g.dtype for t in cams):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in cams):
        return False  # camera gradients: the torch screen_space has them, the kernel does not
    return available()
