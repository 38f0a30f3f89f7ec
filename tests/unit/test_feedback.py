"""The product's figures against the photo (glimpse3d.core.feedback) on a splat whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.feedback import (
    MAX_ROUND_LOSS_DB,
    TURNS_DEG,
    background_colour,
    feedback_cameras,
    input_view_figures,
    photo_figures,
    round_rejection,
    ssim_map,
)
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat, rgb_to_sh0
from glimpse3d.core.synthetic import textured_object

SIZE = 96
BG = (1.0, 1.0, 1.0)


def renders(splat: Splat, cameras) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    with torch.no_grad():
        for cam in cameras:
            r = rasterize(splat, cam, background=BG)
            out.append((r.rgb.numpy(), r.depth.numpy(), r.alpha.numpy()))
    return out


def recoloured(splat: Splat, select: np.ndarray, colour: tuple[float, float, float]) -> Splat:
    sh = splat.sh.copy()
    sh[select, 0, :] = rgb_to_sh0(np.broadcast_to(np.asarray(colour, np.float32), (int(select.sum()), 3)))
    return Splat(splat.means, splat.quats, splat.log_scales, splat.opacity_logits, sh)


@pytest.fixture(scope="module")
def scene():
    truth = textured_object(0, n=3000)
    cameras = feedback_cameras(orbit_camera(0.0, 0.0, 2.7, width=SIZE, height=SIZE))
    photo = renders(truth, cameras[:1])[0][0]
    return truth, cameras, photo


def test_the_true_splat_scores_high_and_damage_where_turned_views_look_lowers_it(scene) -> None:
    truth, cameras, photo = scene
    assert len(cameras) == 1 + len(TURNS_DEG)
    true = photo_figures(photo, cameras, renders(truth, cameras))
    assert true["photo_psnr_db"] == float("inf")  # the photo is this splat's own render
    assert true["photo_consistency_db"] > 20.0  # measured 23.4: resampling a checker texture, not colour error
    assert true["photo_consistency_coverage"] > 0.6

    # Darken the side the photo sees obliquely (x > 0.3): both figures fall.
    side = recoloured(truth, truth.means[:, 0] > 0.3, (0.1, 0.1, 0.1))
    damaged = photo_figures(photo, cameras, renders(side, cameras))
    assert damaged["photo_psnr_db"] < 30.0 and damaged["photo_consistency_db"] < true["photo_consistency_db"] - 5.0

    # Damage on the far side, which no camera here sees, leaves both figures where they were.
    back = recoloured(truth, truth.means[:, 2] < -0.5, (0.1, 0.1, 0.1))
    far = photo_figures(photo, cameras, renders(back, cameras))
    assert far["photo_psnr_db"] > 40.0
    assert abs(far["photo_consistency_db"] - true["photo_consistency_db"]) < 1.0


def test_background_colour_and_bad_input() -> None:
    photo = np.zeros((40, 40, 3), np.uint8)
    photo[:] = (10, 200, 30)
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 1.0
    assert background_colour(photo, mask) == pytest.approx((10 / 255, 200 / 255, 30 / 255))
    assert background_colour(photo, None) == (1.0, 1.0, 1.0)
    assert background_colour(photo, np.ones((40, 40))) == (1.0, 1.0, 1.0)  # no background to see
    cams = feedback_cameras(orbit_camera(0.0, 0.0, 2.7, width=40, height=40))
    with pytest.raises(ValueError, match="one render per camera"):
        photo_figures(photo, cams, [])
    with pytest.raises(ValueError, match="differ in size"):
        blank = (np.zeros((20, 20, 3), np.float32), np.zeros((20, 20), np.float32), np.zeros((20, 20), np.float32))
        photo_figures(photo, cams, [blank] * len(cams))


# ---------------------------------------------------------------------------- input view, SSIM, the round rule


def test_ssim_map_is_scikit_images() -> None:
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((40, 52, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0.0, 1.0)
    _, full = skm.structural_similarity(a, b, channel_axis=2, data_range=1.0, full=True)
    np.testing.assert_allclose(ssim_map(a, b), full.mean(axis=2), atol=1e-9)
    np.testing.assert_allclose(ssim_map(a, a), 1.0)
    with pytest.raises(ValueError, match="one shape"):
        ssim_map(a, b[:10])


def test_input_view_figures_score_the_whole_matte_not_the_models_alpha() -> None:
    """A render that lost half of the object inside the photo's matte is scored over the whole matte:
    half the object's pixels now show the background, and the figures say so."""
    rng = np.random.default_rng(1)
    photo = (rng.random((32, 48, 3)) * 0.5).astype(np.float32)
    mask = np.zeros((32, 48), np.float32)
    mask[8:24, 12:36] = 1.0
    perfect = input_view_figures(photo, mask, photo)
    assert perfect["input_view_psnr_db"] == float("inf") and perfect["input_view_ssim"] == pytest.approx(1.0)
    assert perfect["matte_coverage"] == pytest.approx(16 * 24 / (32 * 48))
    lost = photo.copy()
    lost[8:24, 24:36] = 1.0  # the right half of the object gone, white background there
    figures = input_view_figures(photo, mask, lost)
    expected = 10 * np.log10(1.0 / np.mean(np.square(lost[mask > 0.5] - photo[mask > 0.5])))
    assert figures["input_view_psnr_db"] == pytest.approx(expected) and figures["input_view_psnr_db"] < 10.0
    assert figures["input_view_ssim"] < 0.6
    outside_only = photo.copy()
    outside_only[:4] = 1.0  # a change outside the matte does not count
    assert input_view_figures(photo, mask, outside_only)["input_view_psnr_db"] == float("inf")
    empty = input_view_figures(photo, np.zeros_like(mask), photo)
    assert np.isnan(empty["input_view_psnr_db"]) and empty["matte_coverage"] == 0.0
    with pytest.raises(ValueError, match="one size"):
        input_view_figures(photo, mask[:10], photo)


def test_round_rejection_rule() -> None:
    assert MAX_ROUND_LOSS_DB == 0.5
    assert round_rejection(30.0, 29.6) is None and round_rejection(30.0, 31.0) is None
    reason = round_rejection(30.0, 29.2)
    assert reason is not None and "30.00 to 29.20 dB (-0.80 dB; at most -0.5 dB" in reason and "unchanged" in reason
    assert round_rejection(float("nan"), 10.0) is None and round_rejection(30.0, float("nan")) is None
    # Small losses cannot add up: all rounds together may cost at most 0.5 dB below version 1.
    assert round_rejection(30.0, 29.6, first_db=30.0) is None
    assert round_rejection(29.6, 29.3, first_db=30.0) is not None
    assert "below version 1's 30.00 dB" in round_rejection(29.6, 29.3, first_db=30.0)
    assert round_rejection(29.6, 29.3, first_db=float("nan")) is None
