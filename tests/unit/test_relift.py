"""The re-lift of an observed photo (glimpse3d.services.backprojection.relift, options.relift): on a
two-sided object whose answer is known, the guessed back is replaced by the photo's, at the photo's
depth and in its colours, and nothing observed is touched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import rasterize, to_tensors
from glimpse3d.core.splat import SH_C0, Splat
from glimpse3d.services.backprojection.api import RefineOptions, TrustedView
from glimpse3d.services.backprojection.mvcrm import footprints, observation_strength, observed_by_photos, refine
from glimpse3d.services.backprojection.relift import relift

SIDE = 64
RED, BLUE, GREY = (0.85, 0.15, 0.1), (0.1, 0.2, 0.8), (0.5, 0.5, 0.5)


def _plane(z: float, colour: tuple[float, float, float], half: float = 0.4, n: int = 24) -> Splat:
    """n x n flat discs (normal along z) on the square |x|, |y| <= ``half`` at depth ``z``."""
    t = (np.arange(n) + 0.5) / n * 2 * half - half
    xx, yy = np.meshgrid(t, t)
    means = np.stack([xx.ravel(), yy.ravel(), np.full(n * n, z)], axis=1).astype(np.float32)
    s = 2 * half / n * 0.6
    m = n * n
    return Splat(means, np.tile(np.array([1, 0, 0, 0], np.float32), (m, 1)),
                 np.tile(np.log(np.array([s, s, 0.1 * s], np.float32)), (m, 1)),
                 np.full(m, math.log(0.95 / 0.05), np.float32),
                 np.tile(((np.array(colour, np.float32) - 0.5) / SH_C0)[None, None, :], (m, 1, 1)))


def _join(*parts: Splat) -> Splat:
    return Splat(*(np.concatenate([getattr(p, k) for p in parts])
                   for k in ("means", "quats", "log_scales", "opacity_logits", "sh")))


def _render(splat: Splat, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = rasterize(to_tensors(splat, "cpu"), camera, background=torch.ones(3))
    return out.rgb.numpy(), out.depth.numpy(), out.alpha.numpy()


def _camera(azimuth: float) -> Camera:
    return orbit_camera(azimuth, 0.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0)


@pytest.fixture(scope="module")
def scene():
    """(splat, confidence, back photo, its depth, truth): the front (red, at z = +0.25, facing the
    input camera at azimuth 0) observed; the back guessed grey and too shallow (z = -0.05); the truth's
    back is blue at z = -0.25, photographed from azimuth 180."""
    front, guess = _plane(0.25, RED), _plane(-0.05, GREY)
    truth = _join(front, _plane(-0.25, BLUE))
    back = _camera(180.0)
    photo, depth, alpha = _render(truth, back)
    depth = np.where(alpha > 0.5, depth, 0.0).astype(np.float32)  # expected depth on the object, 0 off it
    conf = np.concatenate([np.full(front.num_gaussians, 0.5, np.float32), np.zeros(guess.num_gaussians, np.float32)])
    return _join(front, guess), conf, photo, depth, truth


def _strength(splat: Splat, camera: Camera) -> np.ndarray:
    cov, _ = footprints(to_tensors(splat, "cpu"), camera, torch.ones(camera.height, camera.width))
    return observation_strength(cov).numpy()


def test_the_guessed_back_is_replaced_at_the_photos_depth_in_its_colours(scene) -> None:
    splat, _, photo, depth, _ = scene
    back = _camera(180.0)
    _, rendered_depth, _ = _render(splat, back)
    g = to_tensors(splat, "cpu")
    guessed = ~observed_by_photos(g, [_camera(0.0)])
    n_front = splat.num_gaussians // 2
    assert not guessed[:n_front].any() and guessed[n_front:].all()  # the input photo shows the front only
    out = relift(g, guessed, _strength(splat, back), back, photo, depth, rendered_depth)
    assert out is not None
    assert out.kept[:n_front].all(), "an observed Gaussian was removed"
    assert not out.kept[n_front:].any(), "part of the guessed back the photo shows was kept"
    assert 0 < out.added <= out.removed
    new = slice(int(out.kept.sum()), None)
    z = out.gaussians.means[new, 2].numpy()
    assert abs(float(np.median(z)) + 0.25) < 0.01, np.median(z)  # the photo's depth, not the guess's -0.05
    colour = out.gaussians.sh[new, 0, :].numpy() * SH_C0 + 0.5  # [M, 3]
    # every one blue, those at the outline too (the photo's edge pixels are blends with its white background)
    assert np.abs(colour - np.array(BLUE)).max() < 0.05, np.abs(colour - np.array(BLUE)).max()


def test_the_relifted_round_reproduces_the_photo_and_leaves_the_observed_side(scene) -> None:
    splat, conf, photo, depth, truth = scene
    back, front_cam = _camera(180.0), _camera(0.0)
    plain = refine(splat, photo, back, depth, conf, RefineOptions(steps=20, observed=True), background=(1, 1, 1))
    relit = refine(splat, photo, back, depth, conf, RefineOptions(steps=20, observed=True, relift=True),
                   background=(1, 1, 1))
    assert relit.report.relift_replaced == splat.num_gaussians // 2 and relit.report.relift_added > 0
    assert plain.report.relift_replaced == plain.report.relift_added == 0
    assert relit.confidence.shape == (relit.splat.num_gaussians,)

    def err(s: Splat, camera: Camera) -> float:
        return float(np.abs(_render(s, camera)[0] - _render(truth, camera)[0]).mean())

    # From behind both reach the photo; from the side only the re-lift has the back where it is.
    side = orbit_camera(120.0, 20.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0)
    assert err(relit.splat, back) < 0.02
    assert err(relit.splat, side) < 0.5 * err(plain.splat, side), (err(relit.splat, side), err(plain.splat, side))
    # The observed front did not move: from the input camera the render is unchanged (but for the new
    # back's colour leaking through the front's 0.95 opacity).
    assert np.abs(_render(relit.splat, front_cam)[0] - _render(splat, front_cam)[0]).max() < 0.01


def test_a_photo_of_the_observed_side_relifts_nothing(scene) -> None:
    splat, conf, *_ = scene
    front_cam = _camera(0.0)
    photo, depth, alpha = _render(splat, front_cam)
    depth = np.where(alpha > 0.5, depth, 0.0).astype(np.float32)
    out = refine(splat, photo, front_cam, depth, conf, RefineOptions(steps=5, observed=True, relift=True),
                 background=(1, 1, 1))
    assert out.report.relift_replaced == out.report.relift_added == 0
    assert out.splat.num_gaussians == splat.num_gaussians


def test_relift_needs_the_photos_depth(scene) -> None:
    splat, conf, photo, _, _ = scene
    with pytest.raises(InvalidInput) as e:
        refine(splat, photo, _camera(180.0), None, conf, RefineOptions(steps=1, observed=True, relift=True))
    assert e.value.field == "view_depth"


def test_relift_needs_an_observed_photo() -> None:
    with pytest.raises(InvalidInput) as e:
        RefineOptions(relift=True)
    assert e.value.field == "options.relift"
    with pytest.raises(InvalidInput) as e:
        RefineOptions(observed=True, relift=1)  # type: ignore[arg-type]
    assert e.value.field == "options.relift"


def test_the_photos_cameras_not_the_confidence_tell_what_was_observed(scene) -> None:
    """Enhancement rounds raise the guess's confidence too; with the input photo as a trusted view the
    back photo still replaces it, and a camera of an earlier photo of the back protects what that shows."""
    splat, conf, photo, depth, _ = scene
    back, front_cam = _camera(180.0), _camera(0.0)
    confirmed = np.full_like(conf, 0.6)  # as if rounds had confirmed everything
    opts = RefineOptions(steps=5, observed=True, relift=True)
    input_photo = _render(splat, front_cam)
    matte = (input_photo[2] > 0.5).astype(np.float32)
    trusted = [TrustedView(input_photo[0], front_cam, matte), TrustedView(photo, back, (depth > 0).astype(np.float32))]
    blind = refine(splat, photo, back, depth, confirmed, opts, background=(1, 1, 1))
    assert blind.report.relift_replaced == 0  # no photo camera known: the confidence decides
    seen = refine(splat, photo, back, depth, confirmed, opts, background=(1, 1, 1), trusted=trusted)
    assert seen.report.relift_replaced == splat.num_gaussians // 2
    earlier = refine(splat, photo, back, depth, confirmed, opts, background=(1, 1, 1), trusted=trusted,
                     photo_cameras=[orbit_camera(175.0, 5.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0)])
    assert earlier.report.relift_replaced == 0


def test_photo_cameras_must_be_cameras(scene) -> None:
    splat, conf, photo, depth, _ = scene
    with pytest.raises(InvalidInput) as e:
        refine(splat, photo, _camera(180.0), depth, conf, RefineOptions(steps=1, observed=True, relift=True),
               photo_cameras=["front"])  # type: ignore[list-item]
    assert e.value.field == "photo_cameras[0]"


def test_guesses_that_stay_take_the_colour_of_the_photo_whose_surface_they_lie_at() -> None:
    """A wall between the first photo's front and a later photo's back: its end at the front takes the
    front photo's colour, a point deep behind that surface keeps its own, as does one outside the photo's
    object."""
    from glimpse3d.services.backprojection.relift import PhotoView, recolour_near_photos

    front = _plane(0.25, RED)
    probes = _join(*(_plane(z, GREY, half=0.01, n=1) for z in (0.24, -0.6)),
                   Splat(np.array([[0.8, 0.0, 0.24]], np.float32), front.quats[:1], front.log_scales[:1],
                         front.opacity_logits[:1], ((np.array(GREY, np.float32) - 0.5) / SH_C0)[None, None, :]))
    splat = _join(front, probes)
    cam = _camera(0.0)
    photo, _, alpha = _render(front, cam)
    green = np.where(alpha[..., None] > 0.5, np.array([0.1, 0.8, 0.2], np.float32), photo)  # the photo says green
    out = recolour_near_photos(to_tensors(splat, "cpu"), np.arange(front.num_gaussians, splat.num_gaussians),
                               [PhotoView(green, (alpha > 0.5).astype(np.float32), cam)])
    colour = out.sh[front.num_gaussians:, 0, :].numpy() * SH_C0 + 0.5  # [3, 3]
    np.testing.assert_allclose(colour[0], [0.1, 0.8, 0.2], atol=0.02)  # at the surface: the photo's colour
    np.testing.assert_allclose(colour[1], GREY, atol=1e-4)  # far behind it
    np.testing.assert_allclose(colour[2], GREY, atol=1e-4)  # outside the photo's object
    before = to_tensors(splat, "cpu").sh[:front.num_gaussians].numpy()
    np.testing.assert_allclose(out.sh[:front.num_gaussians].numpy(), before)  # only the index is recoloured
