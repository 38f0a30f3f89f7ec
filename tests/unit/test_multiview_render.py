"""The weight-free ``render`` multiview backend: known answers (the contract is in test_contract_multiview.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from glimpse3d.core import synthetic
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.services.multiview.api import GeneratedView, make_backend
from glimpse3d.services.multiview.backends.render import RenderBackend
from glimpse3d.services.multiview.matte import object_hull

SIZE = 96
WHITE = np.ones(3, np.float32)


@pytest.fixture(scope="module")
def obj() -> Splat:
    return synthetic.textured_object(seed=1, n=3000)


@pytest.fixture(scope="module")
def photo(obj: Splat) -> dict:
    cam = synthetic.default_input_camera(SIZE)
    rgba = synthetic.render_image(obj, cam, rgba=True)
    return {"camera": cam, "image": rgba[..., :3], "mask": rgba[..., 3].astype(np.float32) / 255.0}


@pytest.fixture(scope="module")
def backend() -> RenderBackend:
    b = make_backend("render")
    b.load()
    return b


@pytest.fixture(scope="module")
def holed(obj: Splat) -> Splat:
    """The object with a see-through tunnel along z (seen from the front, the background shows)."""
    m = obj.means
    tunnel = (m[:, 0] - 0.15) ** 2 + (m[:, 1] - 0.1) ** 2 < 0.16**2
    return obj.subset(np.flatnonzero(~tunnel))


def _generate(backend: RenderBackend, photo: dict, splat: Splat | None, cameras: list, **kw) -> list[GeneratedView]:
    return backend.generate(photo["image"], photo["mask"], photo["camera"], splat, cameras, **kw)


def _direct(splat: Splat, camera, background=WHITE) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = rasterize(splat, camera, background=tuple(background.tolist()))
    return out.rgb.clamp(0, 1).numpy(), out.alpha.numpy()


def test_an_unknown_backend_name_is_invalid() -> None:
    with pytest.raises(InvalidInput) as err:
        make_backend("zero-one-two-three")
    assert err.value.field == "backend"


def test_views_have_the_requested_sizes(backend: RenderBackend, photo: dict, obj: Splat) -> None:
    cams = [orbit_camera(90, 10, 2.7, width=64, height=48), orbit_camera(200, -10, 3.2, width=40, height=72)]
    views = _generate(backend, photo, obj, cams)
    assert [v.rgb.shape for v in views] == [(48, 64, 3), (72, 40, 3)]
    assert [v.mask.shape for v in views] == [(48, 64), (72, 40)]
    for v in views:
        assert v.rgb.dtype == np.uint8 and v.mask.dtype == np.float32
        assert 0.0 <= v.mask.min() and v.mask.max() <= 1.0
        assert v.mask.max() == 1.0 and v.mask.min() == 0.0  # the object, and background around it


@pytest.mark.parametrize("azimuth", [0, 120, 230])
def test_matches_a_direct_render_where_opaque(backend: RenderBackend, photo: dict, obj: Splat, azimuth: float) -> None:
    cam = orbit_camera(azimuth, 15, 2.7, width=SIZE, height=SIZE)
    (view,) = _generate(backend, photo, obj, [cam])
    rgb, alpha = _direct(obj, cam)
    opaque = alpha > 0.98
    assert opaque.mean() > 0.3
    diff = np.abs(view.rgb.astype(np.float32) / 255.0 - rgb)[opaque]
    assert diff.max() <= 0.03
    np.testing.assert_allclose(view.mask[alpha > 0.5], 1.0)
    empty = alpha < 1e-3
    np.testing.assert_array_equal(view.rgb[empty], 255)  # white: the photo's background
    assert (view.mask[empty] < 1e-3).all()


def test_holes_are_filled_from_their_neighbours(backend: RenderBackend, photo: dict, holed: Splat) -> None:
    cam = orbit_camera(0, 0, 2.7, width=SIZE, height=SIZE)
    rgb, alpha = _direct(holed, cam)
    hull = object_hull(alpha, 0.5, 0.04)
    holes = hull & (alpha < 0.3)
    assert holes.sum() >= 20, "the tunnel should be see-through in a direct render"
    assert np.allclose(rgb[holes], 1.0, atol=0.3)  # the direct render shows the white background
    (view,) = _generate(backend, photo, holed, [cam])
    filled = view.rgb.astype(np.float32)[holes] / 255.0  # [K, 3]
    np.testing.assert_allclose(view.mask[holes], 1.0)
    # Not background: far from white.
    assert np.abs(filled - 1.0).max(axis=1).min() > 0.15
    # Close to the neighbours: inside the colour range of the opaque ring around the holes.
    ring = cv2.dilate(holes.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & (alpha > 0.9)
    ring_colors = rgb[ring]  # [R, 3]
    lo, hi = ring_colors.min(axis=0) - 0.05, ring_colors.max(axis=0) + 0.05
    assert ((filled >= lo) & (filled <= hi)).all()
    assert np.abs(filled.mean(axis=0) - ring_colors.mean(axis=0)).max() < 0.2


def test_background_follows_the_photo_or_the_option(photo: dict, obj: Splat) -> None:
    grey = np.where(photo["mask"][..., None] > 0.5, photo["image"], 128).astype(np.uint8)
    cam = orbit_camera(60, 0, 2.7, width=48, height=48)
    b = make_backend("render")
    b.load()
    (view,) = b.generate(grey, photo["mask"], photo["camera"], obj, [cam])
    assert (view.rgb[0, 0] == 128).all()
    rgba = np.concatenate([grey, (photo["mask"][..., None] * 255).astype(np.uint8)], axis=-1)
    (view,) = b.generate(rgba, None, photo["camera"], obj, [cam])  # the alpha channel is the matte
    assert (view.rgb[0, 0] == 128).all()
    forced = RenderBackend(background=(0.0, 0.0, 1.0))
    forced.load()
    (view,) = forced.generate(grey, photo["mask"], photo["camera"], obj, [cam])
    assert tuple(view.rgb[0, 0]) == (0, 0, 255)


def test_missing_splat_is_invalid(backend: RenderBackend, photo: dict) -> None:
    with pytest.raises(InvalidInput) as err:
        _generate(backend, photo, None, [orbit_camera(0, 0, 2.7, width=32, height=32)])
    assert err.value.field == "splat"
    with pytest.raises(InvalidInput) as err:
        _generate(backend, photo, "splat.ply", [orbit_camera(0, 0, 2.7, width=32, height=32)])  # type: ignore[arg-type]
    assert err.value.field == "splat"


@pytest.mark.parametrize(("options", "field"), [
    ({"background": (2.0, 0.0, 0.0)}, "background"), ({"background": [0.5, 0.5]}, "background"),
    ({"inpaint_radius": 0}, "inpaint_radius"), ({"close_fraction": 0.6}, "close_fraction"),
    ({"confident_alpha": "high"}, "confident_alpha"),
])
def test_bad_options_name_the_option(options: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        RenderBackend(**options)
    assert err.value.field == field


def test_background_option_accepts_a_json_list() -> None:
    assert RenderBackend(background=[0, 0, 1]).options.background == (0.0, 0.0, 1.0)
