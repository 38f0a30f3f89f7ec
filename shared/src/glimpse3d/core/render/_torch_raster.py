"""Differentiable tile rasterizer in pure torch (the CPU path; also runs on any torch device).

Pipeline, following gsplat's "classic" 3DGS rasterizer:

1. project every Gaussian in front of the near plane (:mod:`._project`), evaluate its SH colour;
2. bin: each Gaussian is listed in every screen tile its alpha >= 1/255 bounding box touches, and
   each tile's list is sorted front to back by camera z (one integer sort over (tile, depth rank));
3. composite: tiles are processed in batches of similar list length, padded to a common length and
   split into chunks of Gaussians, so one work block [tiles, pixels, gaussians] never exceeds
   ``max_work`` elements. Transmittance is carried from chunk to chunk. Each chunk is blended by
   :class:`._blend.BlendChunk`, whose backward pass recomputes the block from the chunk's inputs
   (activation checkpointing with closed-form gradients), so autograd keeps O(intersections +
   pixels) between forward and backward, never per-pixel intermediates, whatever the scene size.

Per pixel and Gaussian: alpha = min(0.999, o * exp(-q/2)) with q = d^T conic d, dropped below
1/255; weights w_i = alpha_i * prod_{j<i}(1 - alpha_j); a pixel stops once its transmittance would
fall to 1e-4 or below (the Gaussian that would cross is excluded), as in gsplat.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from glimpse3d.core.render._blend import FEATURES, LOG_OPACITY, MIN_TRANSMITTANCE, BlendChunk
from glimpse3d.core.render._project import NEAR_PLANE, covariance_3d, pixel_radii, project
from glimpse3d.core.render._sh import eval_sh
from glimpse3d.core.render.gaussians import GaussianTensors

TILE_SIZE = 16
# Elements in one [tiles, pixels, gaussians] work block; about a dozen such temporaries live at once
# in the backward pass, so 2^20 float32 elements keeps the blending working set near 50 MB.
MAX_WORK = 1 << 20
MIN_DEPTH_ALPHA = 1e-6  # expected depth is reported only where alpha exceeds this (0 elsewhere)
_PAD_LOG_OPACITY = -1e4  # the padding row: alpha = exp(-1e4) = 0 everywhere, with finite gradients


class Binned(NamedTuple):
    """Per-tile front-to-back Gaussian lists, for the tiles that have any."""

    tiles: Tensor  # [T] tile ids (row-major over the tile grid), sorted by list length
    starts: Tensor  # [T] start of each tile's list in ``ids``
    counts: Tensor  # [T] list lengths (ascending)
    ids: Tensor  # [M] Gaussian indices, grouped by tile, each group sorted by depth


class Batch(NamedTuple):
    """A run of tiles composited together: ``tiles[first:last]``, lists split into ``chunk``-long pieces."""

    first: int
    last: int
    chunk: int


@torch.no_grad()
def bin_gaussians(means2d: Tensor, radii: Tensor, depths: Tensor, grid: tuple[int, int], tile_size: int) -> Binned:
    """Assign Gaussians (means2d [N, 2], integer radii [N, 2], depths [N]) to tiles of a grid (rows, cols)."""
    n = means2d.shape[0]
    assert radii.shape == (n, 2) and depths.shape == (n,), (
        f"radii must be [{n}, 2] and depths [{n}], got {list(radii.shape)} and {list(depths.shape)}"
    )
    rows, cols = grid
    device = means2d.device
    upper = torch.tensor([cols, rows], device=device)
    lo = torch.floor((means2d - radii) / tile_size).long().clamp(min=0)  # [N, 2] first tile (x, y)
    lo = torch.minimum(lo, upper)
    hi = torch.minimum(torch.ceil((means2d + radii) / tile_size).long().clamp(min=0), upper)  # [N, 2] exclusive
    span = (hi - lo).clamp(min=0)  # [N, 2]
    per_gauss = span[:, 0] * span[:, 1]  # [N]
    gauss = torch.repeat_interleave(torch.arange(n, device=device), per_gauss)  # [M]
    first = torch.cumsum(per_gauss, 0) - per_gauss  # [N]
    local = torch.arange(gauss.shape[0], device=device) - first[gauss]  # [M]
    width = span[gauss, 0]  # [M]
    tile = (lo[gauss, 1] + local // width) * cols + lo[gauss, 0] + local % width  # [M]
    rank = torch.empty(n, dtype=torch.long, device=device)
    rank[torch.argsort(depths, stable=True)] = torch.arange(n, device=device)
    order = torch.argsort(tile * max(n, 1) + rank[gauss])  # [M]
    counts = torch.bincount(tile, minlength=rows * cols)  # [rows * cols]
    starts = torch.cumsum(counts, 0) - counts  # [rows * cols]
    active = torch.nonzero(counts).squeeze(1)  # [T]
    active = active[torch.argsort(counts[active], stable=True)]  # [T] by list length
    return Binned(active, starts[active], counts[active], gauss[order])


def plan_batches(counts: list[int], tile_pixels: int, max_work: int) -> list[Batch]:
    """Group tiles (``counts`` ascending) so each work block has at most ``max(max_work, tile_pixels)`` elements."""
    max_chunk = max(1, max_work // tile_pixels)
    batches: list[Batch] = []
    first = 0
    while first < len(counts):
        last = first + 1
        while last < len(counts) and (last + 1 - first) * min(counts[last], max_chunk) * tile_pixels <= max_work:
            last += 1
        batches.append(Batch(first, last, min(counts[last - 1], max_chunk)))
        first = last
    return batches


def _tile_coords(tiles: Tensor, cols: int, tile_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pixel-centre x [T, S] and y [T, S] coordinates of each tile's columns and rows."""
    offs = torch.arange(tile_size, device=tiles.device, dtype=dtype) + 0.5  # [S]
    xs = (tiles % cols).to(dtype)[:, None] * tile_size + offs  # [T, S]
    ys = (tiles // cols).to(dtype)[:, None] * tile_size + offs  # [T, S]
    return xs, ys


def _padded_index(binned: Binned, batch: Batch, pad_row: int) -> Tensor:
    """[B, L] Gaussian rows for a batch's tiles, L rounded up to whole chunks, padded with ``pad_row``."""
    counts = binned.counts[batch.first : batch.last]  # [B]
    length = -(-int(counts[-1]) // batch.chunk) * batch.chunk
    pos = torch.arange(length, device=counts.device)  # [L]
    inside = pos[None, :] < counts[:, None]  # [B, L]
    flat = (binned.starts[batch.first : batch.last, None] + pos[None, :]).clamp(max=binned.ids.shape[0] - 1)
    return torch.where(inside, binned.ids[flat], pad_row)  # [B, L]


def _composite_batch(feats: Tensor, index: Tensor, xs: Tensor, ys: Tensor, chunk: int) -> Tensor:
    """Blend a batch of tiles chunk by chunk: [B, S, S, 5] (colour, depth and alpha sums)."""
    b, s = xs.shape
    t = torch.ones(b, s * s, dtype=feats.dtype, device=feats.device)  # [B, P] transmittance
    total = torch.zeros(b, 5, s * s, dtype=feats.dtype, device=feats.device)  # [B, 5, P]
    for start in range(0, index.shape[1], chunk):
        # index_select, unlike advanced indexing, has a deterministic backward on CPU (index_add_
        # rather than atomic adds), so repeated runs give bit-identical gradients.
        rows = index[:, start : start + chunk].reshape(-1)  # [B * G]
        f = feats.index_select(0, rows).view(b, -1, FEATURES)  # [B, G, F]
        sums, t = BlendChunk.apply(f, t, xs, ys)  # [B, 5, P], [B, P]
        total = total + sums
        if bool((t <= MIN_TRANSMITTANCE).all()):
            break  # every pixel has stopped: the remaining chunks cannot contribute
    return total.transpose(1, 2).reshape(b, s, s, 5)


def composite(feats: Tensor, radii: Tensor, width: int, height: int, *, tile_size: int, max_work: int) -> Tensor:
    """Rasterize screen-space Gaussians (feats [N, F], columns as in ``_blend``) to [H, W, 5] sums.

    Channels: sum w c (3), sum w z, sum w (alpha). ``radii`` [N, 2] bounds where alpha >= 1/255.
    """
    n = feats.shape[0]
    assert feats.shape == (n, FEATURES), f"feats must be [N, {FEATURES}], got {list(feats.shape)}"
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    binned = bin_gaussians(feats[:, :2].detach(), radii, feats[:, -1].detach(), (rows, cols), tile_size)
    pad = feats.new_zeros(1, FEATURES)
    pad[0, LOG_OPACITY] = _PAD_LOG_OPACITY
    padded = torch.cat([feats, pad])  # [N + 1, F]
    xs_all, ys_all = _tile_coords(binned.tiles, cols, tile_size, feats.dtype)  # [T, S] each
    # An empty piece cut from feats keeps the image in the autograd graph even when no Gaussian is
    # visible, so backward() gives zero gradients instead of failing.
    pieces = [padded[:0, :5].reshape(0, 1, 1, 5).expand(0, tile_size, tile_size, 5)]
    for batch in plan_batches(binned.counts.tolist(), tile_size * tile_size, max_work):
        index = _padded_index(binned, batch, pad_row=n)  # [B, L]
        sl = slice(batch.first, batch.last)
        pieces.append(_composite_batch(padded, index, xs_all[sl], ys_all[sl], batch.chunk))
    grid = feats.new_zeros(rows * cols, tile_size, tile_size, 5)  # [rows * cols, S, S, 5]
    grid = grid.index_copy(0, binned.tiles, torch.cat(pieces))  # [rows * cols, S, S, 5]
    image = grid.reshape(rows, cols, tile_size, tile_size, 5).permute(0, 2, 1, 3, 4)  # [rows, S, cols, S, 5]
    return image.reshape(rows * tile_size, cols * tile_size, 5)[:height, :width]  # [H, W, 5]


def visible_radii(cov_diag: Tensor, opacities: Tensor, means2d: Tensor, width: int, height: int) -> Tensor:
    """[N, 2] pixel radii, zero for Gaussians whose alpha >= 1/255 region misses the image."""
    radii = pixel_radii(cov_diag.detach(), opacities.detach())  # [N, 2]
    m = means2d.detach()
    inside = (
        (m[:, 0] + radii[:, 0] > 0) & (m[:, 0] - radii[:, 0] < width)
        & (m[:, 1] + radii[:, 1] > 0) & (m[:, 1] - radii[:, 1] < height)
        & (radii > 0).all(dim=1)
    )  # [N]
    return torch.where(inside[:, None], radii, torch.zeros_like(radii))


def screen_space(
    g: GaussianTensors, viewmat: Tensor, K: Tensor, campos: Tensor, width: int, height: int, sh_degree: int
) -> tuple[Tensor, Tensor]:
    """Project, cull and colour: (feats [V, F] for the V Gaussians that can touch the image, radii [V, 2])."""
    with torch.no_grad():
        depth = g.means @ viewmat[2, :3] + viewmat[2, 3]  # [N]
        front = torch.nonzero(depth > NEAR_PLANE).squeeze(1)  # [N']
    means = g.means[front]  # [N', 3]
    proj = project(means, covariance_3d(g.quats[front], torch.exp(g.log_scales[front])), viewmat, K, width, height)
    log_opacity = torch.nn.functional.logsigmoid(g.opacity_logits[front])  # [N']
    radii = visible_radii(proj.cov_diag, log_opacity.exp(), proj.means2d, width, height)  # [N', 2]
    keep = torch.nonzero((radii > 0).all(dim=1)).squeeze(1)  # [V]
    dirs = means[keep] - campos  # [V, 3]
    colors = torch.clamp(eval_sh(sh_degree, dirs, g.sh[front[keep]]) + 0.5, min=0.0)  # [V, 3]
    feats = torch.cat(
        [proj.means2d[keep], proj.conics[keep], log_opacity[keep, None], colors, proj.depths[keep, None]], dim=1
    )  # [V, F]
    return feats, radii[keep]


def render(
    g: GaussianTensors,
    viewmat: Tensor,
    K: Tensor,
    campos: Tensor,
    size: tuple[int, int],
    background: Tensor,
    sh_degree: int,
    *,
    tile_size: int = TILE_SIZE,
    max_work: int = MAX_WORK,
    compiled: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render (rgb [H, W, 3], expected depth [H, W], alpha [H, W]) of ``size`` (width, height).

    ``compiled``: use the compiled CPU kernels (:mod:`._cpu_raster`, which must be built): the
    composite stage always, the screen-space stage unless ``viewmat``, ``K`` or ``campos`` require
    grad (the kernel has no camera gradients; this function's ``screen_space`` then runs instead).
    Binning is shared.
    """
    width, height = size
    if compiled:
        from glimpse3d.core.render import _cpu_raster  # imports this module

        if _cpu_raster.fused_screen_space_applies(g, viewmat, K, campos):
            feats, radii = _cpu_raster.screen_space(g, viewmat, K, campos, width, height, sh_degree)
        else:
            feats, radii = screen_space(g, viewmat, K, campos, width, height, sh_degree)
        sums = _cpu_raster.composite(feats, radii, width, height, tile_size=tile_size)  # [H, W, 5]
    else:
        feats, radii = screen_space(g, viewmat, K, campos, width, height, sh_degree)
        sums = composite(feats, radii, width, height, tile_size=tile_size, max_work=max_work)  # [H, W, 5]
    rgb, depth, alpha = _Resolve.apply(sums, background)
    return rgb, depth, alpha


class _Resolve(torch.autograd.Function):
    """(sums [H, W, 5], background [3]) -> (rgb [H, W, 3], depth [H, W], alpha [H, W]):

        alpha = sums[4],   rgb = sums[:3] + (1 - alpha) background,
        depth = sums[3] / alpha where alpha > MIN_DEPTH_ALPHA, else 0.

    Written as one autograd node: its backward fills the sums' gradient in one pass, where autograd
    of the expressions above zero-fills an [H, W, 5] tensor per slice and runs a dozen image-sized
    operations (a fifth of a fusion step's render was this bookkeeping). The tests check it against
    autograd of the expressions.
    """

    @staticmethod
    def forward(ctx: Any, sums: Tensor, background: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha = sums[..., 4].contiguous()  # [H, W]
        rgb = sums[..., :3] + (1.0 - alpha)[..., None] * background  # [H, W, 3]
        covered = alpha > MIN_DEPTH_ALPHA  # [H, W]
        depth = torch.where(covered, sums[..., 3] / torch.where(covered, alpha, 1.0), 0.0)  # [H, W]
        ctx.save_for_backward(alpha, depth, covered, background)
        ctx.set_materialize_grads(False)
        return rgb, depth, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_rgb: Tensor | None, g_depth: Tensor | None,
                 g_alpha: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        alpha, depth, covered, background = ctx.saved_tensors
        h, w = alpha.shape
        grad = alpha.new_zeros(h, w, 5)  # [H, W, 5]
        g_a = grad[..., 4]
        g_bg = None
        if g_rgb is not None:
            grad[..., :3] = g_rgb
            g_a -= g_rgb @ background  # d rgb / d alpha = -background
            if ctx.needs_input_grad[1]:
                g_bg = ((1.0 - alpha).reshape(1, -1) @ g_rgb.reshape(-1, 3)).reshape(3)
        if g_alpha is not None:
            g_a += g_alpha
        if g_depth is not None:
            g_s = torch.where(covered, g_depth / torch.where(covered, alpha, 1.0), 0.0)  # d depth / d sums[3]
            grad[..., 3] = g_s
            g_a -= g_s * depth  # d depth / d alpha = -depth / alpha
        return grad if ctx.needs_input_grad[0] else None, g_bg
