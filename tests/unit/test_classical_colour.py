"""The classical enhancement keeps the photo's exposure and saturation: known answers on a colour chart
and on real photos.

A render that already has the photo's colours must come back with the same colours (an enhancement
round must never make the model worse); a darker or paler render must be pulled towards the photo.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from glimpse3d.services.diffusion.api import DEFAULT_GUIDANCE, DEFAULT_STEPS
from glimpse3d.services.diffusion.backends.classical import ClassicalDiffusionBackend

# The 24 patches of the ColorChecker Classic chart, row by row, in 8-bit sRGB (X-Rite's published values).
COLORCHECKER_SRGB = [
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
]
PATCH, GAP = 32, 6  # px
FRAME = (20, 20, 20)  # the chart's black surround


def _chart() -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """The 4 x 6 chart on its surround, uint8 [158, 234, 3], and each patch's interior (4 px in from its edge)."""
    img = np.empty((4 * PATCH + 5 * GAP, 6 * PATCH + 7 * GAP, 3), np.uint8)
    img[:] = FRAME
    interiors = []
    for i, rgb in enumerate(COLORCHECKER_SRGB):
        row, col = divmod(i, 6)
        y, x = GAP + row * (PATCH + GAP), GAP + col * (PATCH + GAP)
        img[y : y + PATCH, x : x + PATCH] = rgb
        interiors.append((slice(y + 4, y + PATCH - 4), slice(x + 4, x + PATCH - 4)))
    return img, interiors


def _lab(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB [H, W, 3] -> CIE Lab (D65) float32 [H, W, 3]."""
    return cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _patch_lab(img: np.ndarray, interiors: list[tuple[slice, slice]]) -> np.ndarray:
    lab = _lab(img)
    return np.array([lab[region].reshape(-1, 3).mean(axis=0) for region in interiors])  # [24, 3]


def _delta_e76(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    return np.linalg.norm(lab1 - lab2, axis=-1)


def _degrade(img: np.ndarray, exposure: float = 1.0, saturation: float = 1.0) -> np.ndarray:
    """Scale Lab lightness by ``exposure`` and a, b by ``saturation`` (a darker / paler render)."""
    lab = _lab(img)
    lab[..., 0] *= exposure
    lab[..., 1:] *= saturation
    return np.rint(np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0) * 255.0).astype(np.uint8)


def _mean_lightness_chroma(img: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    lab = _lab(img)[region]
    return float(lab[:, 0].mean()), float(np.hypot(lab[:, 1], lab[:, 2]).mean())


def _enhance(view: np.ndarray, reference: np.ndarray, alpha: np.ndarray, depth: np.ndarray | None = None,
             strength: float = 1.0, grain: float = 0.5) -> np.ndarray:
    backend = ClassicalDiffusionBackend(grain=grain)
    backend.load()
    return backend.enhance(view, depth=depth, alpha=alpha, reference=reference, prompt="", strength=strength,
                           steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, seed=0)


def _with_alpha(img: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.dstack([img, np.rint(alpha * 255).astype(np.uint8)])


# --------------------------------------------------------------------------------------------- #
# Colour chart
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("photo_alpha", [False, True], ids=["photo", "matted-photo"])
def test_a_chart_render_that_matches_the_photo_keeps_every_patch_colour(photo_alpha):
    chart, interiors = _chart()
    chart_alpha = np.zeros(chart.shape[:2], np.float32)
    chart_alpha[GAP // 2 : -GAP // 2, GAP // 2 : -GAP // 2] = 1.0  # the chart, less half its surround
    reference = _with_alpha(chart, chart_alpha) if photo_alpha else chart
    out = _enhance(chart, reference, chart_alpha)
    de = _delta_e76(_patch_lab(out, interiors), _patch_lab(chart, interiors))
    assert de.mean() < 1.0 and de.max() < 2.0, de.round(1)


@pytest.mark.parametrize(("exposure", "saturation"), [(0.8, 1.0), (1.0, 0.7), (0.85, 0.75), (1.1, 1.0)])
def test_a_darker_or_paler_chart_render_is_pulled_towards_the_photo(exposure, saturation):
    chart, interiors = _chart()
    target = _patch_lab(chart, interiors)
    view = _degrade(chart, exposure, saturation)
    out = _enhance(view, chart, np.ones(chart.shape[:2], np.float32))
    before = _delta_e76(_patch_lab(view, interiors), target)
    after = _delta_e76(_patch_lab(out, interiors), target)
    assert after.mean() < 0.25 * before.mean(), (before.mean(), after.mean())
    assert (after <= before + 0.5).all(), (before.round(1), after.round(1))  # no patch is pushed away


def test_a_render_unlike_the_photo_is_not_snapped_to_its_backdrop():
    """Without the photo's alpha its backdrop is in the palette; colours far from all the photo's stay put."""
    chart, _ = _chart()
    view = np.zeros_like(chart)
    view[20:-20, 20:-20] = (230, 20, 200)  # a magenta nowhere on the chart (CIE76 > 25 from every patch)
    alpha = (view.max(axis=-1) > 0).astype(np.float32)
    out = _enhance(view, chart, alpha, grain=0.0)
    np.testing.assert_array_equal(out, view)


# --------------------------------------------------------------------------------------------- #
# Real photos
# --------------------------------------------------------------------------------------------- #


def _photo(name: str) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")  # bundled photos; scikit-image is a research dependency
    return getattr(skimage_data, name)()


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return ((xx - centre[0] * w) / (radii[0] * w)) ** 2 + ((yy - centre[1] * h) / (radii[1] * h)) ** 2 <= 1.0


def _render_of(photo: np.ndarray) -> np.ndarray:
    """The photo scaled by 0.97 about its centre and shifted by (3, 2) px: a render from nearly its camera."""
    h, w = photo.shape[:2]
    s = 0.97
    m = np.float32([[s, 0, 3 + (1 - s) * w / 2], [0, s, 2 + (1 - s) * h / 2]])
    return cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_a_photo_render_keeps_the_photo_exposure_and_saturation(name, strength):
    photo = _photo(name)
    inside = _ellipse(photo.shape[:2], (0.5, 0.5), (0.38, 0.42))
    view = _render_of(photo)
    view[~inside] = 0  # rendered on black
    depth = np.where(inside, 2.0, 0.0).astype(np.float32)
    out = _enhance(view, photo, inside.astype(np.float32), depth=depth, strength=strength)
    l_in, c_in = _mean_lightness_chroma(view, inside)
    l_out, c_out = _mean_lightness_chroma(out, inside)
    assert abs(l_out - l_in) < 2.0, (l_in, l_out)
    assert abs(c_out / c_in - 1.0) < 0.05, (c_in, c_out)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_a_view_of_part_of_the_photo_keeps_its_own_exposure(name):
    """The view shows only part of what the photo shows (here the cup, or the cat's face), so its colour
    mix differs from the photo's as a whole; that is no reason to shift its colours."""
    photo = _photo(name)
    inside = _ellipse(photo.shape[:2], (0.45, 0.4), (0.15, 0.18))
    out = _enhance(photo, photo, inside.astype(np.float32))
    l_in, c_in = _mean_lightness_chroma(photo, inside)
    l_out, c_out = _mean_lightness_chroma(out, inside)
    assert abs(l_out - l_in) < 2.0, (l_in, l_out)
    assert abs(c_out / c_in - 1.0) < 0.05, (c_in, c_out)
