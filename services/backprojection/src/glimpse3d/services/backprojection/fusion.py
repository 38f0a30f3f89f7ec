"""Weighted fusion: Adam on the trust-weighted photometric loss through the differentiable rasterizer.

Optimised per Gaussian: all SH coefficients, opacity logits, log-scales, quaternions and a small
mean offset ``delta`` (means = means0 + delta * s_i, s_i the Gaussian's geometric-mean scale,
|delta| clamped to 1 after every step). Learning rates per group are multiples of ``learning_rate``
(the band-0 SH rate): rest of the SH 1/20, opacity 1/4, log-scales and quaternions 1/10, offsets
1/20; geometry is only weakly observable from one view, so it moves slower than colour.

Loss, with n = number of object pixels in the view:

    L = 1/n [ sum_p w_p rho(render_p - view_p) + sum_p k_p alpha_p + sum_i a_i ||theta_i - theta_i^0||^2 ]
        + normal terms

``k_p`` (carving, mvcrm.py) weighs the rendered alpha where the view shows background.

rho is the Charbonnier penalty averaged over the channels. Each trusted view (the input photo)
adds ``lambda_t / n_t [sum_p m_p rho(.) + sum_p k_p alpha_p]`` over its mask ``m`` (and its carving
weights ``k``, when set), normalised by its own object pixels.
``a_i`` is the anchor strength (mvcrm.py). Every update is scaled per Gaussian by ``step_scale``
in [0, 1] (mvcrm.py), so the trust weights act on the result, not only on the gradient direction.

How the gradient is computed (a step is two renders and this bookkeeping, 60 times a round, and at
these sizes torch's per-operation cost dominates the bookkeeping): autograd differentiates only
through the rasterizer. Each image term computes its gradient in the same pass as its value
(``_ImageFit``); the anchor and normal terms add their closed-form gradients after the backward
pass (``_add_closed_form_grads``, ``normals.smoothing_grad``). tests/unit/test_fusion_grads.py
checks the sum against autograd of L written out in full. Adam runs fused (one kernel per group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from glimpse3d.core.cameras import Camera
from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.render import GaussianTensors, RenderOutput, rasterize
from glimpse3d.services.backprojection import normals as nrm

CHARBONNIER_EPS = 1e-3
MAX_OFFSET = 1.0  # mean offset bound per round, in units of the Gaussian's scale
_LR_FACTORS = {"sh_dc": 1.0, "sh_rest": 0.05, "opacity_logits": 0.25, "log_scales": 0.1, "quats": 0.1, "offset": 0.05}


@dataclass(frozen=True)
class NormalTerms:
    """Normal smoothing set up once per round for the ``active`` Gaussians."""

    active: Tensor  # [A] rows of the splat that take part
    neighbours: nrm.Neighbours  # [A, k] rows into ``active``
    flat: Tensor  # [A] flatness weight
    target: Tensor  # [A, 3] world normal of the rendered depth at the projected centre
    target_valid: Tensor  # [A] bool
    weight: float


@dataclass(frozen=True)
class TrustedTerm:
    """A trusted view's photometric term: a view fused together with the round's view as ground truth."""

    camera: Camera
    view: Tensor  # [H, W, 3] in [0, 1]
    pixel_weight: Tensor  # [H, W] (its mask)
    normaliser: float  # its object pixels (>= 1)
    background: Tensor  # [3]
    weight: float
    carve: Tensor | None = None  # [H, W] weight on the rendered alpha where the view shows background


@dataclass(frozen=True)
class FusionProblem:
    camera: Camera
    view: Tensor  # [H, W, 3] target colours in [0, 1]
    pixel_weight: Tensor  # [H, W] trust per pixel
    normaliser: float  # n: object pixels in the view (>= 1)
    step_scale: Tensor  # [N] in [0, 1] per-Gaussian update scale
    anchor: Tensor  # [N] >= 0 anchor strength a_i
    background: Tensor  # [3]
    normals: NormalTerms | None
    trusted: tuple[TrustedTerm, ...] = ()
    carve: Tensor | None = None  # [H, W] weight on the rendered alpha where the view shows background


class _Params:
    """Leaf tensors being optimised, and the fixed starting point theta^0."""

    def __init__(self, g0: GaussianTensors) -> None:
        self.g0 = g0
        self.scale = torch.exp(g0.log_scales.detach().mean(dim=1, keepdim=True))  # [N, 1] world units
        self.leaves = {
            "sh_dc": g0.sh[:, :1].detach().clone(),  # [N, 1, 3]
            "sh_rest": g0.sh[:, 1:].detach().clone(),  # [N, K - 1, 3]
            "opacity_logits": g0.opacity_logits.detach().clone(),  # [N]
            "log_scales": g0.log_scales.detach().clone(),  # [N, 3]
            "quats": g0.quats.detach().clone(),  # [N, 4]
            "offset": torch.zeros_like(g0.means),  # [N, 3] in units of self.scale
        }
        if self.leaves["sh_rest"].shape[1] == 0:
            del self.leaves["sh_rest"]
        self.start = {name: t.clone() for name, t in self.leaves.items()}
        for t in self.leaves.values():
            t.requires_grad_(True)

    def gaussians(self) -> GaussianTensors:
        sh = self.leaves["sh_dc"]
        if "sh_rest" in self.leaves:
            sh = torch.cat([sh, self.leaves["sh_rest"]], dim=1)
        means = self.g0.means.detach() + self.leaves["offset"] * self.scale
        leaves = self.leaves
        return GaussianTensors(means, leaves["quats"], leaves["log_scales"], leaves["opacity_logits"], sh)


class _ImageFit(torch.autograd.Function):
    """sum_p w_p mean_c rho(rgb_p - view_p) [+ sum_p k_p alpha_p], its gradient computed in the same pass.

    The same value as writing the expression out in torch, with one pass over the image instead of
    autograd's eight (the fusion loop is bound by per-operation cost at these sizes).
    """

    @staticmethod
    def forward(ctx: Any, rgb: Tensor, alpha: Tensor, view: Tensor, weight: Tensor, carve: Tensor | None) -> Tensor:
        d = rgb - view  # [H, W, 3]
        r = torch.sqrt(d * d + CHARBONNIER_EPS**2)
        w = weight[..., None] / 3.0  # channel mean
        value = (w * (r - CHARBONNIER_EPS)).sum()
        if carve is not None:
            value = value + (carve * alpha).sum()
        ctx.save_for_backward(w * d / r, carve)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_rgb, carve = ctx.saved_tensors
        return grad * grad_rgb, None if carve is None else grad * carve, None, None, None


def _image_fit(out: RenderOutput, view: Tensor, weight: Tensor, carve: Tensor | None) -> Tensor:
    return _ImageFit.apply(out.rgb, out.alpha, view, weight, carve)


def _loss(p: _Params, prob: FusionProblem) -> Tensor:
    """The rendered terms of L (the photometric and carving terms of the view and the trusted views)."""
    g = p.gaussians()
    out = rasterize(g, prob.camera, background=prob.background)
    loss = _image_fit(out, prob.view, prob.pixel_weight, prob.carve) / prob.normaliser
    for term in prob.trusted:
        if term.weight > 0:
            seen = rasterize(g, term.camera, background=term.background)
            loss = loss + term.weight * _image_fit(seen, term.view, term.pixel_weight, term.carve) / term.normaliser
    return loss


@dataclass(frozen=True)
class _ClosedForm:
    """The anchor and normal terms of L, set up once per round for ``_add_closed_form_grads``."""

    anchor: dict[str, Tensor]  # per group: 2 a_i / n, shaped to broadcast over the group's rows
    smoothing: nrm.Smoothing | None


def _closed_form(p: _Params, prob: FusionProblem) -> _ClosedForm:
    anchor = {name: (2.0 / prob.normaliser * prob.anchor).to(t.dtype).reshape(-1, *([1] * (t.ndim - 1)))
              for name, t in p.leaves.items()}
    terms = prob.normals
    smoothing = None
    if terms is not None and terms.weight > 0 and terms.active.numel() > 0:
        smoothing = nrm.smoothing(terms.neighbours, terms.flat, terms.target, terms.target_valid)
    return _ClosedForm(anchor, smoothing)


def _add_closed_form_grads(p: _Params, prob: FusionProblem, closed: _ClosedForm) -> None:
    """Add the gradients of the anchor and normal terms of L, whose derivatives are written out here."""
    with torch.no_grad():
        for name, t in p.leaves.items():  # d/d theta of a_i ||theta_i - theta_i^0||^2 / n
            g = closed.anchor[name] * (t - p.start[name])
            t.grad = g if t.grad is None else t.grad.add_(g)
        if closed.smoothing is not None and prob.normals is not None:
            active = prob.normals.active
            q = p.leaves["quats"]
            log_scales = p.leaves["log_scales"].index_select(0, active)
            g_q = nrm.smoothing_grad(q.index_select(0, active), log_scales, closed.smoothing)
            assert q.grad is not None
            q.grad.index_add_(0, active, (prob.normals.weight * g_q).to(q.grad.dtype))


def fuse(g0: GaussianTensors, prob: FusionProblem, steps: int, learning_rate: float) -> GaussianTensors:
    """Run ``steps`` Adam steps from ``g0``; returns detached tensors of the result."""
    n = g0.num_gaussians
    assert prob.step_scale.shape == (n,) and prob.anchor.shape == (n,), "step_scale and anchor must be [N]"
    assert prob.view.shape[:2] == prob.pixel_weight.shape == (prob.camera.height, prob.camera.width)
    p = _Params(g0)
    groups = [{"params": [t], "lr": learning_rate * _LR_FACTORS[name]} for name, t in p.leaves.items()]
    opt = torch.optim.Adam(groups, fused=True)
    scale = {name: prob.step_scale.to(t.dtype).reshape(-1, *([1] * (t.ndim - 1))) for name, t in p.leaves.items()}
    closed = _closed_form(p, prob)
    for _ in range(steps):
        check_cancelled()  # a cancelled call stops here instead of fusing on
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            _loss(p, prob).backward()
        _add_closed_form_grads(p, prob, closed)
        before = {name: t.detach().clone() for name, t in p.leaves.items()}
        opt.step()
        with torch.no_grad():
            for name, t in p.leaves.items():  # theta <- before + s_i (adam(theta) - before)
                t.sub_(before[name]).mul_(scale[name]).add_(before[name])
            off = p.leaves["offset"]
            off.mul_(MAX_OFFSET / off.norm(dim=1, keepdim=True).clamp(min=MAX_OFFSET))
    with torch.no_grad():
        g = p.gaussians()
        return GaussianTensors(*(t.detach().clone() for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)))
