"""The rasterizer's composite stage in numba, for the benchmark's comparison with the C++ kernel.

Same algorithm and numerics as ``shared/src/glimpse3d/core/render/csrc/raster_cpu.cpp`` (tiles in
parallel with ``prange``, Gaussian-major loops over per-pixel state, row spans from the conic,
back-to-front backward from the final transmittance, per-list-entry gradient slots summed serially).
It is not shipped and numba is not a project dependency: it ran at about the speed of the C++
kernel, and docs/rasterizer.md says why the C++ extension was chosen. The benchmark includes it
when numba is importable. ``render`` mirrors ``_torch_raster.render`` with this kernel. Arithmetic
is in double throughout (numba promotes the float32 inputs).
"""

from __future__ import annotations

import math
from typing import Any

import numba  # pyright: ignore[reportMissingImports]  (not a project dependency; see the docstring)
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from glimpse3d.core.render._project import ALPHA_THRESHOLD, MAX_ALPHA
from glimpse3d.core.render._torch_raster import MIN_DEPTH_ALPHA, TILE_SIZE, bin_gaussians, screen_space

MIN_T = 1e-4
CUT = math.log(ALPHA_THRESHOLD) - 1e-3


@numba.njit(inline="always", fastmath=False)
def _row_span(g, dy, x0, n):
    a = g[2]
    bdy = g[3] * dy
    k = g[5] - 0.5 * g[4] * dy * dy - (CUT - 0.05)
    if not a > 0.0:
        return 0, n
    disc = bdy * bdy + 2.0 * a * k
    if disc < 0.0:
        return 0, 0
    root = math.sqrt(disc)
    first = g[0] + (-bdy - root) / a - x0 - 0.5
    last = g[0] + (-bdy + root) / a - x0 - 0.5
    if not first <= last:
        return 0, n
    lo = int(min(max(math.floor(first) - 1.0, 0.0), n))
    hi = int(min(max(math.ceil(last) + 2.0, 0.0), n))
    return lo, hi


@numba.njit(parallel=True, cache=True)
def _forward(feats, tiles, starts, counts, ids, width, height, tile):
    cols = (width + tile - 1) // tile
    out = np.zeros((height, width, 5), feats.dtype)
    t_final = np.ones((height, width), feats.dtype)
    used = np.zeros((height, width), np.int32)
    nt = tiles.shape[0]
    for kk in numba.prange(nt):
        k = nt - 1 - kk
        tid, count, start = tiles[k], counts[k], starts[k]
        local = feats[ids[start:start + count]]
        x0, y0 = (tid % cols) * tile, (tid // cols) * tile
        nx, ny = min(tile, width - x0), min(tile, height - y0)
        trans = np.ones(nx * ny)
        acc = np.zeros((nx * ny, 5))
        last = np.zeros(nx * ny, np.int32)
        done = np.zeros(nx * ny, np.bool_)
        remaining = nx * ny
        for i in range(count):
            if remaining == 0:
                break
            g = local[i]
            for r in range(ny):
                dy = (y0 + r) + 0.5 - g[1]
                lo, hi = _row_span(g, dy, x0, nx)
                for j in range(lo, hi):
                    p = r * nx + j
                    if done[p]:
                        continue
                    dx = (x0 + j) + 0.5 - g[0]
                    power = g[5] - 0.5 * g[2] * dx * dx - 0.5 * g[4] * dy * dy - g[3] * dx * dy
                    if power < CUT:
                        continue
                    e = math.exp(power)
                    if not e > ALPHA_THRESHOLD:
                        continue
                    alpha = min(e, MAX_ALPHA)
                    nxt = trans[p] * (1.0 - alpha)
                    if not nxt > MIN_T:
                        done[p] = True
                        remaining -= 1
                        continue
                    w = alpha * trans[p]
                    acc[p, 0] += w * g[6]
                    acc[p, 1] += w * g[7]
                    acc[p, 2] += w * g[8]
                    acc[p, 3] += w * g[9]
                    acc[p, 4] += w
                    trans[p] = nxt
                    last[p] = i + 1
        for r in range(ny):
            for j in range(nx):
                p = r * nx + j
                out[y0 + r, x0 + j] = acc[p]
                t_final[y0 + r, x0 + j] = trans[p]
                used[y0 + r, x0 + j] = last[p]
    return out, t_final, used


@numba.njit(parallel=True, cache=True)
def _backward(feats, tiles, starts, counts, ids, width, height, tile, grad_out, t_final, used_in):
    cols = (width + tile - 1) // tile
    per_entry = np.zeros((ids.shape[0], 10))
    nt = tiles.shape[0]
    for kk in numba.prange(nt):
        k = nt - 1 - kk
        tid, count, start = tiles[k], counts[k], starts[k]
        local = feats[ids[start:start + count]]
        x0, y0 = (tid % cols) * tile, (tid // cols) * tile
        nx, ny = min(tile, width - x0), min(tile, height - y0)
        trans = np.empty(nx * ny)
        behind = np.zeros(nx * ny)
        grad = np.empty((nx * ny, 5))
        used = np.empty(nx * ny, np.int32)
        longest = 0
        for r in range(ny):
            for j in range(nx):
                p = r * nx + j
                any_grad = False
                for c in range(5):
                    grad[p, c] = grad_out[y0 + r, x0 + j, c]
                    any_grad = any_grad or grad[p, c] != 0
                trans[p] = t_final[y0 + r, x0 + j]
                used[p] = used_in[y0 + r, x0 + j] if any_grad else 0
                longest = max(longest, used[p])
        for i in range(longest - 1, -1, -1):
            g = local[i]
            s = np.zeros(10)
            for r in range(ny):
                dy = (y0 + r) + 0.5 - g[1]
                lo, hi = _row_span(g, dy, x0, nx)
                for j in range(lo, hi):
                    p = r * nx + j
                    if i >= used[p]:
                        continue
                    dx = (x0 + j) + 0.5 - g[0]
                    power = g[5] - 0.5 * g[2] * dx * dx - 0.5 * g[4] * dy * dy - g[3] * dx * dy
                    if power < CUT:
                        continue
                    e = math.exp(power)
                    if not e > ALPHA_THRESHOLD:
                        continue
                    alpha = min(e, MAX_ALPHA)
                    keep = 1.0 - alpha
                    t = trans[p] / keep
                    trans[p] = t
                    w = alpha * t
                    gw = grad[p, 0] * g[6] + grad[p, 1] * g[7] + grad[p, 2] * g[8] + grad[p, 3] * g[9] + grad[p, 4]
                    ga = t * gw - behind[p] / keep
                    behind[p] += w * gw
                    if e <= MAX_ALPHA:
                        gp = ga * e
                        s[0] += gp * (g[2] * dx + g[3] * dy)
                        s[1] += gp * (g[4] * dy + g[3] * dx)
                        s[2] -= 0.5 * gp * dx * dx
                        s[3] -= gp * dx * dy
                        s[4] -= 0.5 * gp * dy * dy
                        s[5] += gp
                    s[6] += w * grad[p, 0]
                    s[7] += w * grad[p, 1]
                    s[8] += w * grad[p, 2]
                    s[9] += w * grad[p, 3]
            per_entry[start + i] = s
    return per_entry


@numba.njit(cache=True)
def _reduce(per_entry, ids, n):
    total = np.zeros((n, 10))
    for m in range(ids.shape[0]):
        total[ids[m]] += per_entry[m]
    return total


class CompositeNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, feats, tiles, starts, counts, ids, width, height, tile):
        arrays = tuple(t.numpy() for t in (feats.detach().contiguous(), tiles, starts, counts, ids))
        out, t_final, used = _forward(arrays[0], arrays[1], arrays[2], arrays[3], arrays[4], width, height, tile)
        ctx.arrays, ctx.size, ctx.state = arrays, (width, height, tile), (t_final, used)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_sums):
        feats, tiles, starts, counts, ids = ctx.arrays
        (width, height, tile), (t_final, used) = ctx.size, ctx.state
        per_entry = _backward(feats, tiles, starts, counts, ids, width, height, tile, grad_sums.contiguous().numpy(),
                              t_final, used)
        total = _reduce(per_entry, ids, feats.shape[0])
        return torch.from_numpy(total.astype(feats.dtype)), None, None, None, None, None, None, None


def render(g, viewmat, K, campos, size, background, sh_degree):
    """``_torch_raster.render`` with the numba composite stage."""
    width, height = size
    feats, radii = screen_space(g, viewmat, K, campos, width, height, sh_degree)
    rows, cols = -(-height // TILE_SIZE), -(-width // TILE_SIZE)
    b = bin_gaussians(feats[:, :2].detach(), radii, feats[:, -1].detach(), (rows, cols), TILE_SIZE)
    sums = CompositeNumba.apply(feats, b.tiles, b.starts, b.counts, b.ids, width, height, TILE_SIZE)
    alpha = sums[..., 4]
    rgb = sums[..., :3] + (1.0 - alpha)[..., None] * background
    covered = alpha > MIN_DEPTH_ALPHA
    depth = torch.where(covered, sums[..., 3] / torch.where(covered, alpha, 1.0), 0.0)
    return rgb, depth, alpha
