"""The product's figures against the photo (glimpse3d.core.feedback) on a splat whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.feedback import TURNS_DEG, background_colour, feedback_cameras, photo_figures
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
