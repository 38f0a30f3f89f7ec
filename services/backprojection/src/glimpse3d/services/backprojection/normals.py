"""Normal smoothing for MVCRM: Gaussian normals, nearest neighbours, normals of a depth map.

A Gaussian's normal is the world direction of its shortest axis (flat Gaussians on a surface put
that axis across the surface). Normals are unoriented, so every disagreement here is measured as
``1 - |n . m|``, which is 0 for parallel or anti-parallel vectors and 1 for perpendicular ones.
Because a normal only means something for a flat Gaussian, each term is weighted by the Gaussian's
flatness ``1 - s_min / s_mid`` (0 for a sphere or a needle, about 1 for a disc), held constant
during a round.

Nearest neighbours come from scipy's k-d tree (exact, O(N log N)).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.spatial import KDTree
from torch import Tensor

from glimpse3d.core.render import quat_to_rotmat

_EDGE_JUMP = 0.05  # relative depth jump across a pixel pair above which no depth normal is taken


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


@torch.no_grad()
def knn(points: Tensor, k: int, seed: int = 0) -> Neighbours:
    """k nearest neighbours (excluding the point itself) of each of M points [M, 3], exact.

    scipy's k-d tree (``KDTree``, built in O(M log M), queried on all cores) replaces a grid hash
    written here before: it is exact also where density is uneven, and about 20x faster at 10k points.
    ``seed`` is kept for callers; the result does not depend on it.
    """
    del seed
    m = points.shape[0]
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [M, 3], got {list(points.shape)}"
    index = torch.arange(m)[:, None].expand(m, k).clone()  # a row's own index where there is no neighbour
    valid = torch.zeros(m, k, dtype=torch.bool)
    kk = min(k, m - 1)
    if kk >= 1:
        pts = points.detach().to(torch.float64).cpu().numpy()
        _, found = KDTree(pts).query(pts, k=kk + 1, workers=-1)  # [M, kk + 1], self among them
        found = np.asarray(found, np.int64).reshape(m, kk + 1)
        rows = np.arange(m)[:, None]
        # Drop the row itself; with duplicate points it may not come first, and if it is missing
        # (more than kk duplicates at distance 0) the farthest candidate goes instead.
        not_self = found != rows  # [M, kk + 1]
        drop_last = not_self.all(axis=1)
        not_self[drop_last, -1] = False
        others = found[not_self].reshape(m, kk)
        index[:, :kk] = torch.from_numpy(others)
        valid[:, :kk] = True
    return Neighbours(index.to(points.device), valid.to(points.device))


def neighbour_loss(normals: Tensor, neighbours: Neighbours, weight: Tensor) -> Tensor:
    """Weighted mean of 1 - |n_i . n_j| over neighbour pairs; normals [M, 3], weight [M] (per point)."""
    m = normals.shape[0]
    assert neighbours.index.shape[0] == m and weight.shape == (m,), "neighbours and weight must match normals"
    k = neighbours.index.shape[1]
    flat = neighbours.index.reshape(-1)  # [M k]
    pair_w = weight[:, None] * weight.index_select(0, flat).view(m, k) * neighbours.valid  # [M, k]
    # index_select, unlike advanced indexing, has a deterministic backward on CPU (index_add_ rather than
    # index_put_ with accumulation, whose order varies with the threads): repeated rounds are bit-identical.
    d = unoriented_disagreement(normals[:, None, :], normals.index_select(0, flat).view(m, k, 3))  # [M, k]
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


class Smoothing(NamedTuple):
    """The normal smoothing loss of a round with its constant weights precomputed (see ``smoothing_grad``)."""

    neighbours: Tensor  # [M, k] neighbour rows
    pair_weight: Tensor  # [M, k] w_i w_j, 0 where the neighbour is missing, divided by its sum
    target: Tensor  # [M, 3] depth normals
    target_weight: Tensor  # [M] w_i where the depth normal is valid, divided by its sum (all 0 when none)


def smoothing(neighbours: Neighbours, weight: Tensor, target: Tensor, target_valid: Tensor) -> Smoothing:
    """Set up ``neighbour_loss(n, neighbours, weight) + mean_w (1 - |n . target|)`` for ``smoothing_grad``."""
    m, k = neighbours.index.shape
    pair_w = weight[:, None] * weight.index_select(0, neighbours.index.reshape(-1)).view(m, k) * neighbours.valid
    tw = weight * target_valid
    tw_sum = tw.sum()
    return Smoothing(
        neighbours=neighbours.index,
        pair_weight=pair_w / pair_w.sum().clamp(min=1e-8),
        target=target,
        target_weight=tw / tw_sum if bool(tw_sum > 0) else torch.zeros_like(tw),
    )


# Column c of R(q) is column 0 of R for the quaternion with its vector part's axes cycled c times,
# with the column's components cycled back: R(w, x, y, z) e_1 = C R(w, y, z, x) e_0, C (a, b, c) = (c, a, b).
# So every normal is column 0 of a permuted quaternion, one formula for all three axes.
_QUAT_ORDER = torch.tensor([[0, 1, 2, 3], [0, 2, 3, 1], [0, 3, 1, 2]])  # q' = q[order[c]]
_QUAT_BACK = torch.argsort(_QUAT_ORDER, dim=1)  # q = q'[back[c]]
_COLUMN_ORDER = torch.tensor([[0, 1, 2], [2, 0, 1], [1, 2, 0]])  # n = col0(q')[order[c]]
_COLUMN_BACK = torch.argsort(_COLUMN_ORDER, dim=1)


@torch.no_grad()
def smoothing_grad(quats: Tensor, log_scales: Tensor, terms: Smoothing) -> Tensor:
    """[M, 4] gradient in ``quats`` of the smoothing loss of ``gaussian_normals(quats, log_scales)``.

    The same loss as ``neighbour_loss`` plus the depth-normal disagreement, differentiated by hand:
    fusion needs only the gradient, and autograd's graph of these small per-Gaussian operations cost
    more than the rest of a fusion step's bookkeeping together. |x| has gradient sign(x), 0 at 0, as
    in autograd. Checked against autograd in the tests.
    """
    m = quats.shape[0]
    norm = quats.norm(dim=1, keepdim=True).clamp(min=1e-12)  # [M, 1] (F.normalize's eps)
    axis = torch.argmin(log_scales, dim=1)  # [M] the normal is this column of R
    quat_order = _QUAT_ORDER.to(quats.device).index_select(0, axis)  # [M, 4]
    q = quats / norm  # [M, 4] the unit quaternion
    w, x, y, z = q.gather(1, quat_order).T.contiguous()  # each [M]: permuted
    col = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)])  # [3, M] column 0
    n = col.gather(0, _COLUMN_ORDER.to(quats.device).index_select(0, axis).T)  # [3, M] the normals
    # d loss / d n [3, M]: the pair term from both ends of each pair, then the depth-normal term.
    flat = terms.neighbours.reshape(-1)  # [M k]
    k = terms.neighbours.shape[1]
    nb = n.index_select(1, flat).view(3, m, k)  # [3, M, k]
    coef = terms.pair_weight * torch.sign((n[:, :, None] * nb).sum(dim=0))  # [M, k], the gradient's negative
    g_n = (coef * nb).sum(dim=2)  # [3, M] as the first of each pair
    g_n.index_add_(1, flat, (coef * n[:, :, None]).view(3, m * k))  # as the second
    target = terms.target.T  # [3, M]
    g_n.addcmul_(terms.target_weight * torch.sign((n * target).sum(dim=0)), target)
    # Back through column 0 of R(q') and the permutations ...
    ga, gb, gc = g_n.neg_().gather(0, _COLUMN_BACK.to(quats.device).index_select(0, axis).T)  # each [M]
    g_q = 2 * torch.stack([z * gb - y * gc, y * gb + z * gc, x * gb - w * gc - 2 * y * ga,
                           w * gb + x * gc - 2 * z * ga], dim=1)  # [M, 4] in q'
    g_q = g_q.gather(1, _QUAT_BACK.to(quats.device).index_select(0, axis))  # in the unit quaternion
    # ... and the normalisation: drop the radial part, divide by |q|.
    return (g_q - q * (q * g_q).sum(dim=1, keepdim=True)) / norm
