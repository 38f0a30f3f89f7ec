"""The weight-free matte on real photos (hand-labelled boxes), and the matte plausibility check."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.images import resize_longest
from glimpse3d.core.matte import MatteCheck, check_matte, component_sizes
from glimpse3d.services.depth.common import estimate_mask

skimage_data = pytest.importorskip("skimage.data")  # the photos; scikit-image is a research-only dependency

WORK_SIDE = 256  # the product's working resolution

# Hand-labelled boxes (x0, y0, x1, y1) as fractions of the photo's width and height: "object" boxes lie
# wholly on the object, "background" boxes wholly off it. A crop is (x0, y0, x1, y1) of the full photo.
PHOTOS = {
    # An espresso cup on a saucer, wood all around: the classic case, nothing touches the frame.
    "coffee": dict(
        crop=(0.0, 0.0, 1.0, 1.0),
        objects={"cup": (0.33, 0.12, 0.62, 0.6), "saucer_left": (0.16, 0.35, 0.28, 0.65),
                 "saucer_bottom": (0.35, 0.82, 0.6, 0.92), "saucer_right": (0.7, 0.4, 0.76, 0.7),
                 "spoon": (0.56, 0.65, 0.66, 0.78)},
        background={"top_left": (0.0, 0.0, 0.2, 0.15), "top_right": (0.72, 0.0, 1.0, 0.15),
                    "right": (0.85, 0.2, 1.0, 0.9), "bottom_left": (0.0, 0.6, 0.12, 1.0),
                    "bottom_right": (0.82, 0.85, 1.0, 1.0)}),
    # A close-up cat whose head touches the top, left and bottom of the frame.
    "chelsea": dict(
        crop=(0.0, 0.0, 1.0, 1.0),
        objects={"face": (0.3, 0.3, 0.65, 0.75), "forehead_at_top": (0.3, 0.0, 0.6, 0.15),
                 "chin_at_bottom": (0.35, 0.88, 0.6, 1.0), "left_cheek": (0.08, 0.3, 0.25, 0.6)},
        background={"right": (0.86, 0.2, 1.0, 0.6), "top_right": (0.9, 0.0, 1.0, 0.15)}),
    # The coffee photo cropped through the cup: the cup's far rim nears the top, its crema and inner
    # wall are cut by the bottom edge.
    "coffee_cut": dict(
        source="coffee",
        crop=(0.22, 0.0, 0.82, 0.45),
        objects={"cup_rim_top": (0.34, 0.08, 0.62, 0.2), "crema": (0.38, 0.22, 0.55, 0.35),
                 "cup_at_bottom_edge": (0.38, 0.36, 0.62, 0.45)},
        background={"top_left": (0.22, 0.0, 0.3, 0.12), "top_right": (0.74, 0.0, 0.82, 0.22)}),
}


def _photo(name: str) -> tuple[np.ndarray, dict, dict]:
    """(uint8 RGB photo, object boxes, background boxes), boxes in the (cropped) photo's fractions."""
    spec = PHOTOS[name]
    img = getattr(skimage_data, spec.get("source", name))()
    h, w = img.shape[:2]
    cx0, cy0, cx1, cy1 = spec["crop"]
    img = np.ascontiguousarray(img[round(cy0 * h):round(cy1 * h), round(cx0 * w):round(cx1 * w)])

    def local(box):
        x0, y0, x1, y1 = box
        return ((x0 - cx0) / (cx1 - cx0), (y0 - cy0) / (cy1 - cy0), (x1 - cx0) / (cx1 - cx0), (y1 - cy0) / (cy1 - cy0))

    return img, {k: local(b) for k, b in spec["objects"].items()}, {k: local(b) for k, b in spec["background"].items()}


def _cover(mask: np.ndarray, box) -> float:
    h, w = mask.shape
    x0, y0, x1, y1 = box
    return float((mask[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)] >= 0.5).mean())


def _check_boxes(mask: np.ndarray, objects: dict, background: dict) -> None:
    cover_obj = {k: round(_cover(mask, b), 3) for k, b in objects.items()}
    cover_bg = {k: round(_cover(mask, b), 3) for k, b in background.items()}
    assert all(v >= 0.8 for v in cover_obj.values()), cover_obj
    assert all(v <= 0.2 for v in cover_bg.values()), cover_bg


@pytest.mark.parametrize("name", list(PHOTOS))
def test_matte_of_a_photo_at_working_resolution(name):
    img, objects, background = _photo(name)
    small = resize_longest(img, WORK_SIDE)
    mask = estimate_mask(small)
    assert mask.shape == small.shape[:2] and mask.dtype == np.float32
    _check_boxes(mask, objects, background)
    check = check_matte(mask)
    assert check.fragments == 1
    if name != "chelsea":  # the close-up cat touches half of the frame, which the check rightly reports
        assert check.warning is None, check.warning


@pytest.mark.parametrize("name", ["coffee_cut", "chelsea"])
def test_matte_of_a_photo_at_full_size(name):
    img, objects, background = _photo(name)
    mask = estimate_mask(img)
    assert mask.shape == img.shape[:2]
    _check_boxes(mask, objects, background)


def test_close_up_touching_the_frame_is_flagged_but_not_fragmented():
    img, _, _ = _photo("chelsea")
    check = check_matte(estimate_mask(resize_longest(img, WORK_SIDE)))
    assert check.border_fraction > 0.5 and check.warning is not None and "border" in check.warning
    assert 0.5 < check.coverage < 0.9


# --------------------------------------------------------------------------------------------- #
# check_matte
# --------------------------------------------------------------------------------------------- #


def _disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.float32)


def test_centred_disk_is_plausible():
    mask = _disk(100, 120, 60, 50, 30)
    check = check_matte(mask)
    assert isinstance(check, MatteCheck)
    assert check.coverage == pytest.approx(np.pi * 30**2 / 12000, rel=0.02)
    assert check.border_fraction == 0.0 and check.fragments == 1 and check.warning is None
    assert check.metrics() == {"matte_coverage": check.coverage, "matte_border_fraction": 0.0,
                               "matte_fragments": 1.0}


def test_tiny_dot_is_flagged():
    check = check_matte(_disk(100, 100, 50, 50, 3))
    assert check.coverage < 0.02 and check.fragments == 1
    assert check.warning is not None and "covers only" in check.warning


def test_frame_filling_mask_is_flagged():
    mask = np.ones((60, 80), np.float32)
    mask[:2, :3] = 0.2  # a soft corner, below the 0.5 threshold
    check = check_matte(mask)
    assert check.coverage == pytest.approx(1 - 6 / 4800)
    # The ring has 2 * 80 + 2 * 58 = 276 pixels; the corner takes 3 of the top row and 1 more of the left column.
    assert check.border_fraction == pytest.approx(1 - 4 / 276)
    assert check.fragments == 1
    assert "covers 100%" in check.warning and "border" in check.warning


def test_four_blobs_are_fragmented():
    mask = sum(_disk(100, 100, cx, cy, 10) for cx, cy in ((25, 25), (75, 25), (25, 75), (75, 75)))
    mask[50, 50] = 1.0  # a lone pixel is below 1 % of the foreground: not a fragment
    check = check_matte(mask)
    assert check.fragments == 4 and "4 separate pieces" in check.warning
    assert check.border_fraction == 0.0


def test_border_fraction_counts_the_outer_ring():
    mask = np.zeros((10, 10), np.float32)
    mask[:, :5] = 1.0  # left half: the whole left column, half of the top and bottom rows
    assert check_matte(mask).border_fraction == pytest.approx((10 + 4 + 4) / 36)
    assert check_matte(np.ones((1, 5), np.float32)).border_fraction == 1.0


def test_empty_mask():
    check = check_matte(np.zeros((32, 32), np.float32))
    assert check.coverage == 0.0 and check.fragments == 0 and "covers only 0.0%" in check.warning


def test_component_sizes_match_eight_connectivity():
    fg = np.array([[1, 0, 0, 1],
                   [0, 1, 0, 1],
                   [0, 0, 0, 0],
                   [1, 1, 0, 1]], bool)
    assert sorted(component_sizes(fg).tolist()) == [1, 2, 2, 2]  # the diagonal pair is one component
    rng = np.random.default_rng(1)
    noise = rng.random((40, 50)) < 0.45
    cv2 = pytest.importorskip("cv2")
    _, _, stats, _ = cv2.connectedComponentsWithStats(noise.astype(np.uint8), connectivity=8)
    assert sorted(component_sizes(noise).tolist()) == sorted(stats[1:, cv2.CC_STAT_AREA].tolist())
    # A long serpentine (every column joined at alternate ends) is one component.
    snake = np.zeros((64, 64), bool)
    snake[:, ::2] = True
    snake[0, 1::4] = True
    snake[-1, 3::4] = True
    assert component_sizes(snake).tolist() == [int(snake.sum())]


def test_check_rejects_bad_masks():
    for bad in (np.zeros((4, 4, 1)), np.zeros((0, 4)), np.full((4, 4), np.nan), [[0.0]]):
        with pytest.raises(InvalidInput) as info:
            check_matte(bad)  # type: ignore[arg-type]
        assert info.value.field == "mask"


# ---------------------------------------------------------------------------- the user's corrections


def test_one_remove_click_takes_the_wood_off_an_off_centre_cup():
    """The cup left of centre with wood filling the right half: the automatic matte keeps the wood (a
    known failure of the weight-free matte); one "remove" click on the wood takes it off, the cup stays."""
    h, w = skimage_data.coffee().shape[:2]
    img = resize_longest(np.ascontiguousarray(skimage_data.coffee()[0:round(0.62 * h), round(0.2 * w):w]), WORK_SIDE)
    cup = {"inner_wall": (0.25, 0.15, 0.5, 0.3), "crema": (0.15, 0.4, 0.38, 0.6)}
    wood = {"right": (0.78, 0.1, 0.98, 0.5), "top": (0.6, 0.0, 0.9, 0.08)}
    automatic = estimate_mask(img)
    assert min(_cover(automatic, b) for b in wood.values()) > 0.8  # the failure the click is for
    corrected = estimate_mask(img, points=[(0.85, 0.3, False)])
    _check_boxes(corrected, cup, wood)


def test_keep_clicks_add_what_the_matte_missed_and_points_are_checked():
    """A pale grey disc on a slightly paler background, with a dark disc: the automatic matte takes the
    dark disc; a keep click on the pale disc adds it, a remove click on the dark one drops it."""
    img = np.full((120, 160, 3), 200, np.uint8)
    yy, xx = np.mgrid[:120, :160]
    img[(yy - 60) ** 2 + (xx - 50) ** 2 < 25 ** 2] = 40  # dark disc, left
    img[(yy - 60) ** 2 + (xx - 115) ** 2 < 22 ** 2] = 185  # pale disc, right
    dark, pale = (0.27, 0.42, 0.37, 0.58), (0.66, 0.42, 0.77, 0.58)
    automatic = estimate_mask(img)
    assert _cover(automatic, dark) > 0.8 and _cover(automatic, pale) < 0.2
    both = estimate_mask(img, points=[(115 / 159, 60 / 119, True)])
    assert _cover(both, dark) > 0.8 and _cover(both, pale) > 0.8
    swapped = estimate_mask(img, points=[(115 / 159, 60 / 119, True), (50 / 159, 60 / 119, False)])
    assert _cover(swapped, dark) < 0.2 and _cover(swapped, pale) > 0.8
    for bad, needle in (([(1.5, 0.5, True)], "must lie in"), ([(0.5,)], "triples"),
                        ([(0.5, 0.5, True)] * 65, "at most 64")):
        with pytest.raises(InvalidInput, match=needle):
            estimate_mask(img, points=bad)
