"""Front-to-back alpha blending of one chunk of Gaussians into a batch of tiles, with a hand-written
backward pass.

Work blocks are laid out [B, P, G]: B tiles, P = S*S pixels (row-major in the tile), G Gaussians in
depth order, contiguous along G so the running products over G are fast. The forward pass saves only
its inputs; the backward pass recomputes the block (as activation checkpointing would) and applies
the closed-form gradients of 3DGS blending, so autograd never stores per-pixel intermediates.

Per pixel, with T0 the transmittance entering the chunk and C_i = prod_{j<=i} (1 - a_j):
    a_i = min(0.999, exp(p_i)) if exp(p_i) > 1/255 else 0,   p_i = ln o_i - q_i / 2,
    T_i = T0 C_{i-1} (before i),   k_i = [T0 C_i > 1e-4] (gsplat's stopping rule),
    w_i = a_i T_i k_i,   out = sum_i w_i (r, g, b, z, 1)_i,   T_out = T0 C_G.
T_out counts every Gaussian (also those past the stop), so k stays a prefix mask across chunks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional

from glimpse3d.core.render._project import ALPHA_THRESHOLD, MAX_ALPHA

MIN_TRANSMITTANCE = 1e-4
# Columns of a screen-space Gaussian: u, v, conic a, b, c, log opacity, r, g, b, depth.
FEATURES = 10
LOG_OPACITY = 5
_VALUES = slice(6, 10)


class _Block(NamedTuple):
    alpha: Tensor  # [B, P, G]
    slope: Tensor  # [B, P, G] d alpha / d p: alpha where visible and below the cap, else 0
    dx: Tensor  # [B, S, G] pixel x minus u, per tile column
    dy: Tensor  # [B, S, G] pixel y minus v, per tile row


# Masks are applied with threshold / clamp rather than torch.where: on CPU these are several times
# faster, and this block is where all the rasterizer's time goes.
def _alphas(f: Tensor, xs: Tensor, ys: Tensor) -> _Block:
    """Alpha of every Gaussian (f [B, G, F]) at every pixel of its tile (xs, ys [B, S] centres)."""
    u, v, a, b, c, log_o = (f[..., k] for k in range(LOG_OPACITY + 1))  # each [B, G]
    dx = xs[:, :, None] - u[:, None, :]  # [B, S, G]
    dy = ys[:, :, None] - v[:, None, :]  # [B, S, G]
    row = log_o[:, None, :] - 0.5 * a[:, None, :] * dx * dx  # [B, S(x), G]
    col = 0.5 * c[:, None, :] * dy * dy  # [B, S(y), G]
    power = torch.addcmul(row[:, None] - col[:, :, None], (b[:, None, :] * dx)[:, None], dy[:, :, None],
                          value=-1.0)  # [B, S(y), S(x), G]
    visible = functional.threshold(torch.exp(power.flatten(1, 2)), ALPHA_THRESHOLD, 0.0)  # [B, P, G]
    slope = visible - functional.threshold(visible, MAX_ALPHA, 0.0)  # [B, P, G]
    return _Block(visible.clamp(max=MAX_ALPHA), slope, dx, dy)


def _transmittance(alpha: Tensor, t_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(1 - alpha, T_i k_i: transmittance before each Gaussian where it passes the stop rule,
    C_G = prod(1 - alpha)) for alpha [B, P, G] and incoming transmittance t_in [B, P]."""
    keep = 1.0 - alpha  # [B, P, G], >= 0.001
    running = torch.cumprod(keep, dim=-1)  # [B, P, G] C_i
    after = functional.threshold(t_in[..., None] * running, MIN_TRANSMITTANCE, 0.0)  # [B, P, G] T0 C_i k_i
    return keep, after / keep, running[..., -1]


def _values_t(f: Tensor) -> Tensor:
    """[B, 5, G] what the weights accumulate: colour, depth and 1 (for alpha)."""
    return torch.cat([f[..., _VALUES], torch.ones_like(f[..., :1])], dim=-1).transpose(1, 2).contiguous()


class BlendChunk(torch.autograd.Function):
    """(f [B, G, F], t_in [B, P], xs [B, S], ys [B, S]) -> (sums [B, 5, P], t_out [B, P]).

    sums are channel-first (colour, depth, alpha) because the [5, G] x [G, P] products are much
    faster on CPU than [P, G] x [G, 5].
    """

    @staticmethod
    def forward(ctx: Any, f: Tensor, t_in: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        b, _, features = f.shape
        s = xs.shape[1]
        assert features == FEATURES and t_in.shape == (b, s * s) and ys.shape == (b, s), (
            f"f must be [B, G, {FEATURES}], t_in [B, S*S], ys [B, S]; got {list(f.shape)}, "
            f"{list(t_in.shape)}, {list(xs.shape)}, {list(ys.shape)}"
        )
        block = _alphas(f, xs, ys)
        _, before, total = _transmittance(block.alpha, t_in)
        weights = block.alpha * before  # [B, P, G]
        ctx.save_for_backward(f, t_in, xs, ys)
        return torch.bmm(_values_t(f), weights.transpose(1, 2)), t_in * total  # [B, 5, P], [B, P]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_sums: Tensor, grad_t_out: Tensor) -> tuple[Tensor, Tensor, None, None]:
        f, t_in, xs, ys = ctx.saved_tensors
        block = _alphas(f, xs, ys)
        keep, before, total = _transmittance(block.alpha, t_in)
        weights = block.alpha * before  # [B, P, G]
        grad_w = torch.bmm(grad_sums.transpose(1, 2), _values_t(f))  # [B, P, G] dL/dw_i
        contrib = weights * grad_w  # [B, P, G]
        behind = contrib.sum(dim=-1, keepdim=True) - torch.cumsum(contrib, dim=-1)  # [B, P, G] sum over j > i
        t_out = t_in * total  # [B, P]
        # d/d a_i: through w_i directly, and through the transmittance of every later Gaussian and T_out.
        grad_alpha = before * grad_w - (behind + (grad_t_out * t_out)[..., None]) / keep  # [B, P, G]
        # w_i is proportional to T0 when T0 > 1e-4; at or below it the chunk contributes nothing.
        live = t_in > MIN_TRANSMITTANCE
        grad_t_in = contrib.sum(dim=-1) / torch.where(live, t_in, 1.0) * live + grad_t_out * total  # [B, P]
        grad_values_t = torch.bmm(grad_sums, weights)  # [B, 5, G]
        grads = _feature_grads(f, block, grad_alpha * block.slope, grad_values_t.transpose(1, 2))
        return grads, grad_t_in, None, None


def _feature_grads(f: Tensor, block: _Block, grad_power: Tensor, grad_values: Tensor) -> Tensor:
    """dL/df [B, G, F] from dL/dp [B, P, G] and dL/d(values) [B, G, 5],
    using p = ln o - (a dx^2 + c dy^2) / 2 - b dx dy."""
    bsz, s, g = block.dx.shape
    a, b, c = f[..., 2], f[..., 3], f[..., 4]  # [B, G]
    grid = grad_power.view(bsz, s, s, g)  # [B, S(y), S(x), G]
    per_col = grid.sum(dim=1)  # [B, S(x), G] summed over rows
    per_row = grid.sum(dim=2)  # [B, S(y), G] summed over columns
    dx, dy = block.dx, block.dy
    sum_dx = (per_col * dx).sum(dim=1)  # [B, G]
    sum_dy = (per_row * dy).sum(dim=1)  # [B, G]
    sum_dxdy = ((grid * dx[:, None]).sum(dim=2) * dy).sum(dim=1)  # [B, G]
    grads = [
        a * sum_dx + b * sum_dy,  # u (dx = x - u)
        c * sum_dy + b * sum_dx,  # v
        -0.5 * (per_col * dx * dx).sum(dim=1),  # conic a
        -sum_dxdy,  # conic b
        -0.5 * (per_row * dy * dy).sum(dim=1),  # conic c
        per_col.sum(dim=1),  # log opacity
    ]
    return torch.cat([torch.stack(grads, dim=-1), grad_values[..., :4]], dim=-1)  # [B, G, F]
