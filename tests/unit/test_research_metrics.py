"""Known-answer tests of every research metric."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.reproject import warp_into
from glimpse3d.research import metrics
from glimpse3d.research.groundtruth import ground_truth, surface_samples


def test_psnr_identical_is_infinite_and_known_value():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 3))
    assert metrics.psnr(a, a) == float("inf")
    b = np.clip(a + 0.1, None, None)  # error 0.1 everywhere: MSE 0.01 -> 20 dB
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    mask = np.zeros((16, 16))
    mask[:8] = 1.0
    c = a.copy()
    c[8:] += 0.5  # errors only outside the mask
    assert metrics.psnr(a, c, mask) == float("inf")
    assert metrics.psnr(a, c) < 10.0


def test_ssim_known_answers():
    rng = np.random.default_rng(1)
    a = rng.random((32, 32, 3))
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, rng.random((32, 32, 3))) < 0.2
    mask = np.zeros((32, 32))
    mask[:, :16] = 1
    b = a.copy()
    b[:, 24:] = 0.0  # damage far from the masked half (further than the 7 px window)
    assert metrics.ssim(a, b, mask) == pytest.approx(1.0)


def test_chamfer_of_a_shifted_set_is_the_shift():
    grid = np.stack(np.meshgrid(*[np.arange(6) * 0.2] * 3), -1).reshape(-1, 3)  # spacing 0.2
    shift = np.array([0.03, -0.04, 0.0])  # |shift| = 0.05 < half the spacing
    score = metrics.chamfer_fscore(grid + shift, grid)
    assert score.chamfer == pytest.approx(0.05, rel=1e-9)
    assert score.fscore == 1.0
    assert metrics.chamfer_fscore(grid + shift, grid, threshold=0.04).fscore == 0.0  # every point 0.05 off


def test_depth_scale_and_shift_recovered_exactly():
    rng = np.random.default_rng(2)
    target = 2.0 + rng.random((20, 20))
    pred = (target - 0.7) / 3.0  # target = 3 pred + 0.7
    score = metrics.depth_errors(pred, target, np.ones((20, 20), bool))
    assert score.scale == pytest.approx(3.0) and score.shift == pytest.approx(0.7)
    assert score.absrel == pytest.approx(0.0, abs=1e-12) and score.delta1 == 1.0
    noisy = metrics.depth_errors(pred * (1 + 0.5 * rng.standard_normal((20, 20))), target, np.ones((20, 20), bool))
    assert noisy.absrel > 0.01 and noisy.delta1 < 1.0


def test_warp_moves_a_known_pattern():
    cam = orbit_camera(0, 0, 2.7, width=64, height=64)
    depth = np.full((64, 64), 2.0)  # a plane facing the camera
    image = np.random.default_rng(3).random((64, 64, 3)).astype(np.float32)
    same, valid = warp_into(cam, depth, cam, image, depth)
    assert valid.all() and np.allclose(same, image, atol=1e-5)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    import os
    os.environ["GLIMPSE3D_RESEARCH_CACHE"] = str(tmp_path_factory.mktemp("gt"))
    return ground_truth("ellipsoid", 96)


def test_ground_truth_views_are_consistent_and_shifted_views_are_not(head):
    views = [head.input, *head.heldout[:3], *head.heldout[8:10]]
    args = ([v.camera for v in views], [v.depth for v in views], [v.mask for v in views])
    truth = metrics.inconsistency([v.rgb for v in views], *args)
    shifted = metrics.inconsistency([np.roll(v.rgb, 6, axis=1) for v in views], *args)
    assert truth < 0.01
    assert shifted > 3 * truth and shifted > 0.02


def test_depth_spread_zero_for_ground_truth(head):
    views = [head.input, *head.heldout[:4]]
    pts = surface_samples(head.obj, 3000)
    cams, depths = [v.camera for v in views], [v.depth for v in views]
    assert metrics.depth_spread(pts, cams, depths, depths) < 0.01
    rng = np.random.default_rng(4)
    noisy = [np.where(d > 0, d * (1 + 0.05 * rng.standard_normal(d.shape)), 0.0) for d in depths]
    assert metrics.depth_spread(pts, cams, depths, noisy) > 0.03


def test_chamfer_of_ground_truth_depth_points_is_small(head):
    pts = np.concatenate([metrics.depth_points(v.camera, v.depth, v.mask) for v in head.heldout])
    score = metrics.chamfer_fscore(pts, surface_samples(head.obj, 5000))
    assert score.chamfer < 0.01 and score.fscore > 0.99
