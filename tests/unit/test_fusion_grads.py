"""Fusion's hand-written gradients against autograd of the loss written out in full.

MVCRM's fusion loop differentiates only the rendered terms with autograd; the anchor and normal
terms add their closed-form gradients, and the image terms compute theirs in the same pass as their
value (see fusion.py). Here the whole loss of the fusion docstring is written out in plain torch and
differentiated by autograd, and both must give the same gradient in every optimised group.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.render import GaussianTensors, rasterize, to_tensors
from glimpse3d.core.synthetic import textured_object
from glimpse3d.services.backprojection import fusion
from glimpse3d.services.backprojection import normals as nrm

SIZE = 48


def cam(azimuth: float) -> Camera:
    return orbit_camera(azimuth, 10.0, 2.7, width=SIZE, height=SIZE)


def random_smoothing_case(m: int, k: int, seed: int, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    quats = torch.randn(m, 4, generator=gen, dtype=dtype) * 1.7  # not unit: the normalisation is differentiated
    log_scales = torch.randn(m, 3, generator=gen, dtype=dtype)  # a random shortest axis per row
    index = torch.randint(0, m, (m, k), generator=gen)
    valid = torch.rand(m, k, generator=gen) > 0.2
    weight = torch.rand(m, generator=gen, dtype=dtype)
    target = torch.nn.functional.normalize(torch.randn(m, 3, generator=gen, dtype=dtype), dim=1)
    target_valid = torch.rand(m, generator=gen) > 0.3
    return quats, log_scales, nrm.Neighbours(index, valid), weight, target, target_valid


def autograd_smoothing(quats, log_scales, neighbours, weight, target, target_valid) -> torch.Tensor:
    """The normal loss of fusion.py as autograd sees it: d/d quats of neighbour + depth-normal terms."""
    q = quats.clone().requires_grad_(True)
    n = nrm.gaussian_normals(q, log_scales)
    loss = nrm.neighbour_loss(n, neighbours, weight)
    w = weight * target_valid
    if bool(w.sum() > 0):
        loss = loss + (w * nrm.unoriented_disagreement(n, target)).sum() / w.sum()
    loss.backward()
    assert q.grad is not None
    return q.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_hand_written_smoothing_gradient_equals_autograd(seed: int) -> None:
    case = random_smoothing_case(500, 8, seed)
    quats, log_scales, neighbours, weight, target, target_valid = case
    expected = autograd_smoothing(*case)
    got = nrm.smoothing_grad(quats, log_scales, nrm.smoothing(neighbours, weight, target, target_valid))
    assert expected.abs().max() > 1e-4  # a real gradient, not zeros on both sides
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_the_smoothing_gradient_without_valid_depth_normals_is_the_neighbour_term_alone() -> None:
    quats, log_scales, neighbours, weight, target, _ = random_smoothing_case(300, 6, 5)
    none_valid = torch.zeros(300, dtype=torch.bool)
    expected = autograd_smoothing(quats, log_scales, neighbours, weight, target, none_valid)
    got = nrm.smoothing_grad(quats, log_scales, nrm.smoothing(neighbours, weight, target, none_valid))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def written_out_loss(p: fusion._Params, prob: fusion.FusionProblem) -> torch.Tensor:
    """L of fusion.py's docstring, every term in plain torch."""

    def rho(d: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(d * d + fusion.CHARBONNIER_EPS**2) - fusion.CHARBONNIER_EPS

    def image_term(camera, view, weight, carve, background) -> torch.Tensor:
        out = rasterize(p.gaussians(), camera, background=background)
        value = (weight[..., None] * rho(out.rgb - view)).sum() / 3.0
        return value + (carve * out.alpha).sum() if carve is not None else value

    anchor = torch.zeros_like(p.leaves["opacity_logits"])
    for name, t in p.leaves.items():
        anchor = anchor + (t - p.start[name]).square().reshape(t.shape[0], -1).sum(dim=1)
    loss = (image_term(prob.camera, prob.view, prob.pixel_weight, prob.carve, prob.background)
            + (prob.anchor * anchor).sum()) / prob.normaliser
    terms = prob.normals
    assert terms is not None
    n = nrm.gaussian_normals(p.leaves["quats"][terms.active], p.leaves["log_scales"][terms.active])
    normal = nrm.neighbour_loss(n, terms.neighbours, terms.flat)
    w = terms.flat * terms.target_valid
    normal = normal + (w * nrm.unoriented_disagreement(n, terms.target)).sum() / w.sum()
    loss = loss + terms.weight * normal
    for t in prob.trusted:
        loss = loss + t.weight * image_term(t.camera, t.view, t.pixel_weight, t.carve, t.background) / t.normaliser
    return loss


def float64(g: GaussianTensors) -> GaussianTensors:
    return GaussianTensors(*(t.to(torch.float64) for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)))


def test_fusion_gradients_equal_autograd_of_the_whole_loss() -> None:
    truth = float64(to_tensors(textured_object(0, n=400)))
    g0 = float64(to_tensors(textured_object(1, n=400)))  # jittered: a real residual to fit
    n = g0.num_gaussians
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        view = rasterize(truth, cam(40), background=(1.0, 1.0, 1.0)).rgb
        photo = rasterize(truth, cam(0), background=(1.0, 1.0, 1.0))
    active = torch.arange(0, n, 2)
    means = g0.means[active]
    terms = fusion.NormalTerms(
        active=active,
        neighbours=nrm.knn(means, 6),
        flat=nrm.flatness(g0.log_scales[active]),
        target=torch.nn.functional.normalize(means, dim=1),
        target_valid=torch.rand(active.numel(), generator=gen) > 0.5,
        weight=0.3,
    )
    mask = (photo.alpha > 0.5).to(torch.float64)
    prob = fusion.FusionProblem(
        camera=cam(40), view=view, pixel_weight=torch.rand(SIZE, SIZE, generator=gen, dtype=torch.float64),
        normaliser=500.0, step_scale=torch.ones(n, dtype=torch.float64),
        anchor=torch.rand(n, generator=gen, dtype=torch.float64), background=torch.ones(3, dtype=torch.float64),
        normals=terms, carve=torch.rand(SIZE, SIZE, generator=gen, dtype=torch.float64),
        trusted=(fusion.TrustedTerm(cam(0), photo.rgb, mask, float(mask.sum()), torch.ones(3, dtype=torch.float64),
                                    0.7, carve=(1.0 - mask) * 0.5),),
    )
    expected, got = fusion._Params(g0), fusion._Params(g0)
    with torch.no_grad():  # away from the start, so that the anchor term has a gradient too
        for name, t in expected.leaves.items():
            step = 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
            t.add_(step)
            got.leaves[name].add_(step)
    written_out_loss(expected, prob).backward()
    fusion._loss(got, prob).backward()
    fusion._add_closed_form_grads(got, prob, fusion._closed_form(got, prob))  # fuse's own set-up
    for name, t in expected.leaves.items():
        assert t.grad is not None and got.leaves[name].grad is not None
        assert t.grad.abs().max() > 0, name
        torch.testing.assert_close(got.leaves[name].grad, t.grad, rtol=1e-7, atol=1e-12, msg=name)


def test_fusion_lowers_the_loss_it_differentiates() -> None:
    """60 steps of the production loop on a jittered splat: the written-out loss falls."""
    truth, g0 = to_tensors(textured_object(0, n=400)), to_tensors(textured_object(3, n=400))
    with torch.no_grad():
        view = rasterize(truth, cam(40), background=(1.0, 1.0, 1.0)).rgb
    n = g0.num_gaussians
    prob = fusion.FusionProblem(
        camera=cam(40), view=view, pixel_weight=torch.ones(SIZE, SIZE), normaliser=float(SIZE * SIZE),
        step_scale=torch.ones(n), anchor=torch.full((n,), 0.01), background=torch.ones(3),
        normals=fusion.NormalTerms(torch.arange(n), nrm.knn(g0.means, 6), nrm.flatness(g0.log_scales),
                                   torch.nn.functional.normalize(g0.means, dim=1), torch.ones(n, dtype=torch.bool),
                                   0.05),
    )
    with torch.no_grad():
        before = float(written_out_loss(fusion._Params(g0), prob))
        after = float(written_out_loss(fusion._Params(fusion.fuse(g0, prob, 60, 0.02)), prob))
    assert np.isfinite(after) and after < 0.7 * before
