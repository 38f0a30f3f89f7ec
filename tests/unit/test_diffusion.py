"""Diffusion service logic: the weight-free classical enhancement backend, measured on synthetic views."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from glimpse3d.core.errors import InvalidInput
from glimpse3d.services.diffusion.api import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    apply_proto_defaults,
    make_backend,
)
from glimpse3d.services.diffusion.backends.classical import ClassicalDiffusionBackend

H, W = 128, 160


def _view(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A soft, textured, reddish disk on black (like a rendered splat): (view uint8, depth, alpha)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    rho2 = ((xx - 80) ** 2 + (yy - 64) ** 2) / 52.0**2
    inside = rho2 <= 1.0
    texture = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 1.5) * 0.06
    rgb = np.zeros((H, W, 3), np.float32)
    rgb[inside] = (0.70, 0.38, 0.30)
    rgb += (texture * inside)[:, :, None]
    view = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    depth = np.where(inside, 2.7 - 0.5 * np.sqrt(np.clip(1 - rho2, 0, 1)), 0).astype(np.float32)
    return view, depth, inside.astype(np.float32)


def _reference() -> np.ndarray:
    """A photo of a blue object on a light background (no alpha)."""
    ref = np.full((150, 200, 3), 235, np.uint8)
    ref[30:120, 50:150] = (50, 90, 190)
    return ref


def _backend(**options) -> ClassicalDiffusionBackend:
    backend = ClassicalDiffusionBackend(**options)
    backend.load()
    return backend


def _enhance(backend: ClassicalDiffusionBackend, view: np.ndarray, **overrides) -> np.ndarray:
    args = {"depth": None, "alpha": None, "reference": None, "prompt": "", "strength": 1.0,
            "steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "seed": 0}
    args.update(overrides)
    return backend.enhance(view, **args)


def _laplacian_var(img: np.ndarray, region: np.ndarray) -> float:
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F)[region].var())


# --------------------------------------------------------------------------------------------- #
# Determinism, seed, strength
# --------------------------------------------------------------------------------------------- #


def test_same_seed_gives_bit_identical_output():
    view, depth, alpha = _view()
    backend = _backend()
    a = _enhance(backend, view, depth=depth, alpha=alpha, reference=_reference(), seed=1234)
    b = _enhance(_backend(), view.copy(), depth=depth.copy(), alpha=alpha.copy(), reference=_reference(), seed=1234)
    assert a.dtype == np.uint8 and a.shape == view.shape
    np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_outputs():
    view, depth, alpha = _view()
    backend = _backend()
    a = _enhance(backend, view, depth=depth, alpha=alpha, seed=1, strength=0.5)
    b = _enhance(backend, view, depth=depth, alpha=alpha, seed=2, strength=0.5)
    assert (a != b).mean() > 0.05
    big = _enhance(backend, view, depth=depth, alpha=alpha, seed=2**64 - 1)
    assert big.shape == view.shape


def test_strength_zero_returns_the_input():
    view, depth, alpha = _view()
    out = _enhance(_backend(), view, depth=depth, alpha=alpha, reference=_reference(), strength=0.0)
    np.testing.assert_array_equal(out, view)
    rgba = np.concatenate([view, (alpha[:, :, None] * 255).astype(np.uint8)], axis=-1)
    np.testing.assert_array_equal(_enhance(_backend(), rgba, strength=0.0), view)  # RGB out


def test_strength_blends_linearly():
    view, depth, alpha = _view()
    backend = _backend()
    full = _enhance(backend, view, depth=depth, alpha=alpha, reference=_reference()).astype(np.float32)
    half = _enhance(backend, view, depth=depth, alpha=alpha, reference=_reference(), strength=0.5)
    expected = 0.5 * view + 0.5 * full
    assert np.abs(half - expected).max() <= 1.0  # rounding only


def test_background_is_left_alone():
    view, depth, alpha = _view()
    view[alpha == 0] = (10, 200, 30)
    out = _enhance(_backend(), view, depth=depth, alpha=alpha, reference=_reference())
    np.testing.assert_array_equal(out[alpha == 0], view[alpha == 0])


# --------------------------------------------------------------------------------------------- #
# What the enhancement does, measured
# --------------------------------------------------------------------------------------------- #


def test_colour_transfer_moves_the_object_colour_towards_the_reference():
    """A red render of an object the photo shows blue: its colours move to the photo's object.

    The photo carries its alpha: without one, the whole photo is the colour palette and the nearest
    photo colours to this red are the light backdrop's (see test_classical_colour.py).
    """
    view, depth, alpha = _view()
    ref = np.dstack([_reference(), np.zeros((150, 200), np.uint8)])
    ref[30:120, 50:150, 3] = 255
    out = _enhance(_backend(grain=0.0), view, depth=depth, alpha=alpha, reference=ref)
    inside = alpha > 0.5
    target = ref[30:120, 50:150, :3].reshape(-1, 3).mean(axis=0)
    before = np.linalg.norm(view[inside].mean(axis=0) - target)
    after = np.linalg.norm(out[inside].mean(axis=0) - target)
    assert after < 0.2 * before, (before, after)


def test_reference_alpha_is_used_as_its_foreground():
    view, depth, alpha = _view()
    ref = np.zeros((100, 100, 4), np.uint8)
    ref[..., :3] = (240, 240, 240)  # transparent pixels: must not count
    ref[20:80, 20:80] = (40, 160, 60, 255)
    out = _enhance(_backend(grain=0.0), view, depth=depth, alpha=alpha, reference=ref)
    mean = out[alpha > 0.5].mean(axis=0)
    assert np.linalg.norm(mean - (40, 160, 60)) < 15


def test_sharpening_adds_high_frequency_energy_inside_the_object():
    view, depth, alpha = _view()
    interior = cv2.erode((alpha > 0.5).astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
    out = _enhance(_backend(grain=0.0), view, depth=depth, alpha=alpha)
    ratio = _laplacian_var(out, interior) / _laplacian_var(view, interior)
    assert ratio > 2.0, ratio  # the default gain of 1.75 gives ~3x
    weak = _enhance(_backend(grain=0.0), view, depth=depth, alpha=alpha, guidance=2.0)
    assert 1.0 < _laplacian_var(weak, interior) / _laplacian_var(view, interior) < ratio


def test_detail_gain_follows_the_reference_photo():
    view, depth, alpha = _view()
    interior = cv2.erode((alpha > 0.5).astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
    rng = np.random.default_rng(9)
    crisp = _reference()
    crisp[30:120, 50:150] = np.clip(crisp[30:120, 50:150] + rng.integers(-40, 41, (90, 100, 1)), 0, 255)
    flat = _reference()
    backend = _backend(grain=0.0)
    gain_crisp = _laplacian_var(_enhance(backend, view, depth=depth, alpha=alpha, reference=crisp), interior)
    gain_flat = _laplacian_var(_enhance(backend, view, depth=depth, alpha=alpha, reference=flat), interior)
    base = _laplacian_var(view, interior)
    assert gain_crisp > 2.0 * base  # a detailed photo: boost up to the guidance cap
    assert gain_flat < 1.2 * base  # a flat photo: no detail to match, no boost


def test_no_halo_across_a_depth_edge():
    """Two surfaces at different depths meet at column 80 with only a faint colour step.

    The colour step is too weak for the edge-aware base layer to keep, so an ungated detail boost
    overshoots on both sides (a halo); the depth edge must switch the boost off there.
    """
    rng = np.random.default_rng(3)
    left = np.arange(W) < W // 2
    level = np.where(left, 0.45, 0.55)[None, :].repeat(H, 0)
    texture = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 1.2) * 0.05
    view = np.rint(np.clip(level + texture, 0, 1)[:, :, None].repeat(3, 2) * 255).astype(np.uint8)
    step_depth = np.where(left, 2.0, 3.0)[None, :].repeat(H, 0).astype(np.float32)
    flat_depth = np.full((H, W), 2.5, np.float32)
    backend = _backend(grain=0.0)

    def overshoot(out: np.ndarray) -> float:  # row-averaged profile change near the edge
        band = slice(W // 2 - 8, W // 2 + 8)
        change = out[:, band, 0].astype(np.float32).mean(0) - view[:, band, 0].astype(np.float32).mean(0)
        return float(np.abs(change).max())

    gated = _enhance(backend, view, depth=step_depth)
    ungated = _enhance(backend, view, depth=flat_depth)
    assert overshoot(ungated) > 3.0  # the measurement sees a halo when there is one
    assert overshoot(gated) < 1.0
    interior = np.zeros((H, W), bool)
    interior[10:-10, 10 : W // 2 - 16] = True
    assert _laplacian_var(gated, interior) > 2.0 * _laplacian_var(view, interior)  # still sharpened


def test_holes_inside_the_object_are_filled():
    view, depth, alpha = _view()
    hole = np.zeros((H, W), bool)
    hole[58:70, 74:86] = True
    view[hole] = 0
    alpha[hole] = 0.0
    out = _enhance(_backend(grain=0.0), view, depth=depth, alpha=alpha)
    surround = (cv2.dilate(hole.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & ~hole
    assert np.abs(out[hole].mean(axis=0) - view[surround].mean(axis=0)).max() < 20
    kept = _enhance(_backend(grain=0.0, hole_filling=False), view, depth=depth, alpha=alpha)
    assert kept[hole].max() == 0


# --------------------------------------------------------------------------------------------- #
# Validation, registry (lifecycle and options: tests/unit/test_contract_diffusion.py)
# --------------------------------------------------------------------------------------------- #

BAD_ARGUMENTS = [
    ({"strength": -0.1}, "strength"),
    ({"strength": 1.5}, "strength"),
    ({"strength": math.nan}, "strength"),
    ({"strength": "0.5"}, "strength"),
    ({"steps": 0}, "steps"),
    ({"steps": 201}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"guidance": -1.0}, "guidance"),
    ({"guidance": 31.0}, "guidance"),
    ({"guidance": math.inf}, "guidance"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"prompt": 7}, "prompt"),
    ({"depth": np.zeros((4, 4), np.float32)}, "depth"),
    ({"depth": np.full((H, W), -1.0, np.float32)}, "depth"),
    ({"depth": np.full((H, W), np.nan, np.float32)}, "depth"),
    ({"alpha": np.full((H, W), 2.0, np.float32)}, "alpha"),
    ({"alpha": np.zeros((H, W, 1), np.float32)}, "alpha"),
    ({"reference": np.zeros((8, 8), np.uint8)}, "reference"),
    ({"reference": np.zeros((8, 8, 3), np.int16)}, "reference"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_ARGUMENTS)
def test_bad_arguments_name_the_field(overrides, field):
    view, _, _ = _view()
    with pytest.raises(InvalidInput) as info:
        _enhance(_backend(), view, **overrides)
    assert info.value.field == field, info.value.message


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 2), np.uint8),
                                 np.zeros((0, 8, 3), np.uint8), None])
def test_bad_view_is_rejected(bad):
    with pytest.raises(InvalidInput) as info:
        _enhance(_backend(), bad)  # type: ignore[arg-type]
    assert info.value.field == "view"


def test_proto_defaults_are_applied_by_the_caller():
    assert apply_proto_defaults(0.0, 0, 0.0) == (DEFAULT_STRENGTH, DEFAULT_STEPS, DEFAULT_GUIDANCE)
    assert apply_proto_defaults(0.8, 10, 3.0) == (0.8, 10, 3.0)


def test_an_unknown_backend_name_lists_the_known_ones():
    with pytest.raises(InvalidInput) as info:
        make_backend("sdxl-turbo")
    assert info.value.field == "backend" and "classical" in info.value.message
