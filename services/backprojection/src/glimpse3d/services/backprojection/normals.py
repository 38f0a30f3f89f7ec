"""Normal smoothing for MVCRM: Gaussian normals, nearest neighbours, normals of a depth map.

A Gaussian's normal is the world direction of its shortest axis (flat Gaussians on a surface put
that axis across the surface). Normals are unoriented, so every disagreement here is measured as
``1 - |n . m|``, which is 0 for parallel or anti-parallel vectors and 1 for perpendicular ones.
Because a normal only means something for a flat Gaussian, each term is weighted by the Gaussian's
flatness ``1 - s_min / s_mid`` (0 for a sphere or a needle, about 1 for a disc), held constant
during a round.

Nearest neighbours come from a uniform grid hash (cell size = twice the median k-th neighbour
distance of a sample; candidates from the 27 surrounding cells, at most ``_CELL_CAP`` per cell;
processed in chunks), so time is O(N k) and memory is bounded by the chunk size whatever N is.
Rows whose k-th candidate lies beyond the cell size (sparse regions, where a nearer point could
sit outside the 27 cells) are redone by chunked brute force. The result is exact except where a
cell holds more than ``_CELL_CAP`` points (very uneven density), which only swaps a neighbour for
a slightly farther one: harmless for a smoothness prior.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from glimpse3d.core.render import quat_to_rotmat

_CELL_CAP = 24  # candidates taken from one grid cell
_CHUNK_ELEMENTS = 1 << 21  # query points x candidates per chunk
_SAMPLE_FOR_CELL = 512  # points whose exact k-th neighbour distance sets the cell size
# Cell edge over the median k-th neighbour distance: the 27 cells then hold every neighbour of all
# but the sparsest points (which are redone exactly), at ~15 candidates per cell even in a volume.
_CELL_OVER_KTH = 2.0
_MAX_CELLS_PER_AXIS = 1 << 20  # keeps the linear cell key inside int64
_EDGE_JUMP = 0.05  # relative depth jump across a pixel pair above which no depth normal is taken
_OFFSETS = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])  # [27, 3]


class Neighbours(NamedTuple):
    index: Tensor  # [M, k] neighbour rows (a row's own index where ``valid`` is False)
    valid: Tensor  # [M, k] bool


def gaussian_normals(quats: Tensor, log_scales: Tensor) -> Tensor:
    """[N, 3] unit normals: the world direction of each Gaussian's shortest axis (differentiable in quats)."""
    n = quats.shape[0]
    assert log_scales.shape == (n, 3), f"log_scales must be [{n}, 3], got {list(log_scales.shape)}"
    axis = torch.argmin(log_scales.detach(), dim=1)  # [N]
    rot = quat_to_rotmat(quats)  # [N, 3, 3]
    return rot[torch.arange(n), :, axis]  # [N, 3] column `axis` of each rotation


@torch.no_grad()
def flatness(log_scales: Tensor) -> Tensor:
    """[N] in [0, 1]: 1 - s_min / s_mid, how well a Gaussian's normal is defined."""
    s = torch.sort(log_scales, dim=1).values  # [N, 3] ascending
    return (1.0 - torch.exp(s[:, 0] - s[:, 1])).clamp(0.0, 1.0)


def unoriented_disagreement(a: Tensor, b: Tensor) -> Tensor:
    """1 - |a . b| for unit vectors a, b [..., 3]: 0 when (anti-)parallel, 1 when perpendicular."""
    return 1.0 - (a * b).sum(dim=-1).abs()


def _cell_size(points: Tensor, k: int, generator: torch.Generator) -> float:
    """Grid cell edge: ``_CELL_OVER_KTH`` x the median exact k-th neighbour distance of a sample."""
    m = points.shape[0]
    sample = torch.randperm(m, generator=generator)[:_SAMPLE_FOR_CELL]
    d = torch.cdist(points[sample], points)  # [S, M], S <= 512 so at most 512 M elements
    kth = torch.topk(d, min(k + 1, m), dim=1, largest=False).values[:, -1]  # [S] (self is at 0)
    extent = float((points.max(0).values - points.min(0).values).max())
    floor = max(extent, 1e-6) / _MAX_CELLS_PER_AXIS
    return max(_CELL_OVER_KTH * float(kth.median()), floor, 1e-9)


@torch.no_grad()
def knn(points: Tensor, k: int, seed: int = 0) -> Neighbours:
    """k nearest neighbours (excluding the point itself) of each of M points [M, 3], via a grid hash."""
    m = points.shape[0]
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [M, 3], got {list(points.shape)}"
    if m <= 1:
        return Neighbours(torch.zeros(m, k, dtype=torch.long), torch.zeros(m, k, dtype=torch.bool))
    pts = points.detach().to(torch.float64).cpu()
    cell = _cell_size(pts, k, torch.Generator().manual_seed(seed))
    coords = torch.floor((pts - pts.min(0).values) / cell).long() + 1  # [M, 3], >= 1 so offsets stay >= 0
    dims = coords.max(0).values + 2  # [3]
    key = (coords[:, 0] * dims[1] + coords[:, 1]) * dims[2] + coords[:, 2]  # [M]
    order = torch.argsort(key)  # [M]
    cells, counts = torch.unique_consecutive(key[order], return_counts=True)  # [C], [C]
    starts = torch.cumsum(counts, 0) - counts  # [C]
    offsets = (_OFFSETS[:, 0] * dims[1] + _OFFSETS[:, 1]) * dims[2] + _OFFSETS[:, 2]  # [27]
    chunk = max(1, _CHUNK_ELEMENTS // (27 * _CELL_CAP))
    index, valid, kth = [], [], []
    for lo in range(0, m, chunk):
        rows = torch.arange(lo, min(lo + chunk, m))  # [c]
        idx, ok, far = _knn_chunk(pts, rows, key[rows, None] + offsets[None, :], (cells, counts, starts, order), k)
        index.append(idx)
        valid.append(ok)
        kth.append(far)
    index_t, valid_t = torch.cat(index), torch.cat(valid)
    # The 27 cells hold every point within `cell` of a query; a row whose k-th candidate is farther
    # (a sparse region) or that found fewer than k is redone exactly.
    redo = torch.nonzero(~valid_t.all(dim=1) | (torch.cat(kth) > cell * cell)).squeeze(1)
    if redo.numel():
        index_t[redo], valid_t[redo] = _knn_exact(pts, redo, k)
    return Neighbours(index_t.to(points.device), valid_t.to(points.device))


def _knn_exact(pts: Tensor, rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Brute-force neighbours of ``rows`` [R] among all points, in chunks of bounded size."""
    m = pts.shape[0]
    kk = min(k, m - 1)
    chunk = max(1, _CHUNK_ELEMENTS // m)
    index = torch.zeros(rows.shape[0], k, dtype=torch.long)
    valid = torch.zeros(rows.shape[0], k, dtype=torch.bool)
    for lo in range(0, rows.shape[0], chunk):
        r = rows[lo : lo + chunk]  # [c]
        d = torch.cdist(pts[r], pts)  # [c, M]
        d[torch.arange(r.shape[0]), r] = torch.inf
        index[lo : lo + chunk, :kk] = torch.topk(d, kk, dim=1, largest=False).indices
        index[lo : lo + chunk, kk:] = r[:, None]
        valid[lo : lo + chunk, :kk] = True
    return index, valid


def _knn_chunk(
    pts: Tensor, rows: Tensor, nb_keys: Tensor, table: tuple[Tensor, Tensor, Tensor, Tensor], k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbours of ``rows`` [c] among the candidates in their 27 cells (``nb_keys`` [c, 27]).

    Returns (index [c, k], valid [c, k], squared distance of the k-th neighbour [c], inf if missing).
    """
    cells, counts, starts, order = table
    pos = torch.searchsorted(cells, nb_keys).clamp(max=cells.shape[0] - 1)  # [c, 27]
    found = cells[pos] == nb_keys  # [c, 27]
    count = torch.where(found, counts[pos].clamp(max=_CELL_CAP), 0)  # [c, 27]
    slot = torch.arange(_CELL_CAP)  # [cap]
    inside = slot[None, None, :] < count[..., None]  # [c, 27, cap]
    flat = (starts[pos][..., None] + slot).clamp(max=order.shape[0] - 1)  # [c, 27, cap]
    cand = torch.where(inside, order[flat], rows[:, None, None]).reshape(rows.shape[0], -1)  # [c, 27 cap]
    dist = (pts[cand] - pts[rows][:, None, :]).square().sum(-1)  # [c, 27 cap]
    dist = torch.where(cand == rows[:, None], torch.inf, dist)  # self and padding never win
    kk = min(k, dist.shape[1])
    best, arg = torch.topk(dist, kk, dim=1, largest=False)  # [c, kk]
    idx = torch.gather(cand, 1, arg)  # [c, kk]
    ok = torch.isfinite(best)
    if kk < k:
        idx = torch.cat([idx, rows[:, None].expand(-1, k - kk)], dim=1)
        ok = torch.cat([ok, torch.zeros(rows.shape[0], k - kk, dtype=torch.bool)], dim=1)
    return torch.where(ok, idx, rows[:, None]), ok, best[:, -1]


def neighbour_loss(normals: Tensor, neighbours: Neighbours, weight: Tensor) -> Tensor:
    """Weighted mean of 1 - |n_i . n_j| over neighbour pairs; normals [M, 3], weight [M] (per point)."""
    m = normals.shape[0]
    assert neighbours.index.shape[0] == m and weight.shape == (m,), "neighbours and weight must match normals"
    pair_w = weight[:, None] * weight[neighbours.index] * neighbours.valid  # [M, k]
    d = unoriented_disagreement(normals[:, None, :], normals[neighbours.index])  # [M, k]
    return (pair_w * d).sum() / pair_w.sum().clamp(min=1e-8)


@torch.no_grad()
def depth_normals(depth: Tensor, alpha: Tensor, rays: Tensor, cam_to_world_rot: Tensor) -> tuple[Tensor, Tensor]:
    """World-space unit normals [H, W, 3] of a z-depth map [H, W] and where they are valid [H, W].

    Each pixel is back-projected to camera space (P = z * ray, rays [H, W, 3] with z = 1); the
    normal is the cross product of central differences of P. Pixels next to the border, with alpha
    <= 0.5 among their four neighbours, or across a depth jump (an occlusion edge) are invalid.
    """
    h, w = depth.shape
    assert alpha.shape == (h, w) and rays.shape == (h, w, 3), "depth, alpha and rays must share [H, W]"
    pts = depth[..., None] * rays  # [H, W, 3]
    du = torch.zeros_like(pts)
    dv = torch.zeros_like(pts)
    du[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    dv[1:-1, :] = pts[2:, :] - pts[:-2, :]
    normals = torch.nn.functional.normalize(torch.cross(du, dv, dim=-1), dim=-1)  # [H, W, 3] camera space
    valid = torch.zeros(h, w, dtype=torch.bool, device=depth.device)
    if h >= 3 and w >= 3:
        z = depth
        inner = (alpha[1:-1, 1:-1] > 0.5) & (alpha[1:-1, 2:] > 0.5) & (alpha[1:-1, :-2] > 0.5)
        inner &= (alpha[2:, 1:-1] > 0.5) & (alpha[:-2, 1:-1] > 0.5)
        jump_u = (z[1:-1, 2:] - z[1:-1, :-2]).abs() / z[1:-1, 1:-1].clamp(min=1e-6)
        jump_v = (z[2:, 1:-1] - z[:-2, 1:-1]).abs() / z[1:-1, 1:-1].clamp(min=1e-6)
        valid[1:-1, 1:-1] = inner & (jump_u < 2 * _EDGE_JUMP) & (jump_v < 2 * _EDGE_JUMP)
    return normals @ cam_to_world_rot.T, valid
