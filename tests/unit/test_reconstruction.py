"""The weight-free ``lift`` reconstruction backend on a synthetic object with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from glimpse3d.core import synthetic
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import rasterize
from glimpse3d.core.splat import Splat
from glimpse3d.services.reconstruction.api import (
    ReconstructionBackend,
    ReconstructionResult,
    RenderedImage,
    make_backend,
)
from glimpse3d.services.reconstruction.backends.lift import LiftBackend
from glimpse3d.services.reconstruction.common import masked_psnr

SIZE = 112
WHITE = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def obj() -> Splat:
    return synthetic.textured_object(seed=0, n=4000)


@pytest.fixture(scope="module")
def scene(obj: Splat) -> dict:
    cam = synthetic.default_input_camera(SIZE)
    depth, alpha = synthetic.render_depth_alpha(obj, cam)
    return {"camera": cam, "image": synthetic.render_image(obj, cam, WHITE), "depth": depth, "mask": alpha}


@pytest.fixture(scope="module")
def backend() -> LiftBackend:
    b = make_backend("lift")
    b.load()
    return b


@pytest.fixture(scope="module")
def result(backend: LiftBackend, scene: dict) -> ReconstructionResult:
    """The default fit (steps) with a budget sized to the small test photo, to keep the suite fast."""
    return backend.reconstruct(scene["image"], scene["depth"], scene["mask"], scene["camera"], max_gaussians=6000,
                               seed=0)


def _small(backend: LiftBackend, scene: dict, **kwargs) -> ReconstructionResult:
    args = {"fit_steps": 2, "max_gaussians": 1500, "seed": 0} | kwargs
    return backend.reconstruct(scene["image"], scene["depth"], scene["mask"], scene["camera"], **args)


def test_synthetic_object_is_textured_and_closed(obj: Splat) -> None:
    assert obj.num_gaussians == 4000
    assert np.abs(obj.means).max() <= 0.81
    views = [synthetic.render_image(obj, orbit_camera(a, 0, 2.7, width=48, height=48)) for a in (0, 90, 180, 270)]
    for a, b in itertools.pairwise(views):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # the texture differs around the object
    rgba = synthetic.render_image(obj, synthetic.default_input_camera(48), rgba=True)
    assert rgba.shape == (48, 48, 4) and rgba.dtype == np.uint8
    assert rgba[24, 24, 3] == 255 and rgba[0, 0, 3] == 0  # opaque centre, empty corner
    assert synthetic.textured_object(seed=3, n=100).allclose(synthetic.textured_object(seed=3, n=100), atol=0)


def test_backend_protocol(backend: LiftBackend) -> None:
    assert isinstance(backend, ReconstructionBackend)
    assert backend.name == "lift" and backend.ready
    with pytest.raises(InvalidInput) as err:
        make_backend("nope")
    assert err.value.field == "backend"


def test_input_view_psnr_at_least_28_db(result: ReconstructionResult, scene: dict) -> None:
    assert result.metrics["input_view_psnr_db"] >= 28.0
    # Recompute independently: render the splat at the input camera over the photo's white background.
    with torch.no_grad():
        rgb = rasterize(result.splat, scene["camera"], background=WHITE).rgb.numpy()
    photo = scene["image"].astype(np.float32) / 255.0
    psnr = masked_psnr(rgb, photo, scene["mask"])
    assert psnr >= 28.0
    assert math.isclose(psnr, result.metrics["input_view_psnr_db"], abs_tol=0.05)


@pytest.mark.parametrize("azimuth", [180, 90])
def test_back_side_is_closed(result: ReconstructionResult, obj: Splat, azimuth: float) -> None:
    cam = orbit_camera(azimuth, 0, 2.7, width=SIZE, height=SIZE)
    _, true_alpha = synthetic.render_depth_alpha(obj, cam)
    _, alpha = synthetic.render_depth_alpha(result.splat, cam)
    silhouette = true_alpha > 0.5
    coverage = float((alpha[silhouette] > 0.5).mean())
    assert coverage >= 0.9, f"only {coverage:.2%} of the silhouette is covered from azimuth {azimuth}"
    spill = float((alpha[~silhouette] > 0.5).mean())
    assert spill < 0.1


def test_gaussian_count_respects_max_gaussians(backend: LiftBackend, scene: dict, result: ReconstructionResult) -> None:
    assert result.splat.num_gaussians <= 6000
    for budget in (1, 50, 1500):
        res = _small(backend, scene, max_gaussians=budget)
        assert 1 <= res.splat.num_gaussians <= budget
        assert res.metrics["num_gaussians"] == res.splat.num_gaussians
    assert _small(backend, scene, max_gaussians=1500).splat.num_gaussians > 1000  # uses the budget


def test_deterministic_for_a_seed(backend: LiftBackend, scene: dict) -> None:
    a = _small(backend, scene, seed=7)
    b = _small(backend, scene, seed=7)
    assert a.splat.allclose(b.splat, atol=0)
    assert a.metrics["input_view_psnr_db"] == b.metrics["input_view_psnr_db"]
    c = _small(backend, scene, seed=8)
    assert c.splat.num_gaussians != a.splat.num_gaussians or not c.splat.allclose(a.splat)


def test_downscaled_work_resolution(scene: dict) -> None:
    b = LiftBackend(work_max_side=64)
    b.load()
    res = b.reconstruct(scene["image"], scene["depth"], scene["mask"], scene["camera"], fit_steps=10)
    assert res.metrics["input_view_psnr_db"] > 22.0  # measured at the photo's own resolution


def test_rgba_image_and_missing_mask(backend: LiftBackend, scene: dict) -> None:
    rgba = np.concatenate([scene["image"], np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=-1)
    depth = np.where(scene["mask"] >= 0.5, scene["depth"], 0.0).astype(np.float32)
    res = backend.reconstruct(rgba, depth, None, scene["camera"], fit_steps=2, max_gaussians=800)
    assert 0 < res.splat.num_gaussians <= 800


def test_silhouette_depth_estimate(backend: LiftBackend, scene: dict, obj: Splat) -> None:
    silhouette = pytest.importorskip("glimpse3d.services.depth.backends.silhouette")
    depth_backend = silhouette.SilhouetteDepthBackend()
    depth_backend.load()
    est = depth_backend.estimate(scene["image"], scene["camera"])
    res = backend.reconstruct(scene["image"], est.depth, est.mask, scene["camera"], max_gaussians=6000, seed=0)
    assert res.metrics["input_view_psnr_db"] >= 25.0
    cam = orbit_camera(180, 0, 2.7, width=SIZE, height=SIZE)
    _, true_alpha = synthetic.render_depth_alpha(obj, cam)
    _, alpha = synthetic.render_depth_alpha(res.splat, cam)
    assert float((alpha[true_alpha > 0.5] > 0.5).mean()) >= 0.85


def test_render(backend: LiftBackend, result: ReconstructionResult) -> None:
    cams = [orbit_camera(30, 10, 2.7, width=40, height=32), orbit_camera(200, -5, 3.0, width=24, height=24)]
    views = backend.render(result.splat, cams, background=(0.2, 0.4, 0.6))
    assert len(views) == 2 and all(isinstance(v, RenderedImage) for v in views)
    assert views[0].rgb.shape == (32, 40, 3) and views[0].depth.shape == (32, 40) and views[0].alpha.shape == (32, 40)
    v = views[1]
    assert v.rgb.dtype == np.float32 and 0.0 <= v.rgb.min() and v.rgb.max() <= 1.0
    empty = v.alpha < 1e-4
    assert empty.any() and np.allclose(v.rgb[empty], (0.2, 0.4, 0.6), atol=1e-3)
    assert (v.depth[empty] == 0).all() and (v.depth[v.alpha > 0.5] > 1.5).all()
    with pytest.raises(InvalidInput) as err:
        backend.render("not a splat", cams)  # type: ignore[arg-type]
    assert err.value.field == "splat"
    with pytest.raises(InvalidInput) as err:
        backend.render(result.splat, [])
    assert err.value.field == "cameras"


def _bad_inputs(scene: dict) -> dict[str, tuple[dict, str]]:
    nan_depth = scene["depth"].copy()
    nan_depth[SIZE // 2, SIZE // 2] = np.nan
    return {
        "mask shape": ({"mask": scene["mask"][:-1]}, "mask"),
        "nan depth": ({"depth": nan_depth}, "depth"),
        "empty mask": ({"mask": np.zeros_like(scene["mask"])}, "mask"),
        "mask range": ({"mask": scene["mask"] * 3}, "mask"),
        "depth shape": ({"depth": scene["depth"][:, :-2]}, "depth"),
        "no depth in mask": ({"depth": np.zeros_like(scene["depth"])}, "depth"),
        "image shape": ({"image": scene["image"][..., :2]}, "image"),
        "image dtype": ({"image": scene["image"].astype(np.int32)}, "image"),
        "image type": ({"image": "photo.png"}, "image"),
        "camera size": ({"camera": synthetic.default_input_camera(SIZE + 1)}, "camera"),
        "camera type": ({"camera": None}, "camera"),
        "fit_steps": ({"fit_steps": 5001}, "fit_steps"),
        "max_gaussians": ({"max_gaussians": -1}, "max_gaussians"),
        "seed": ({"seed": -3}, "seed"),
        "views": ({"views": [None] * 17}, "views"),
    }


BAD_CASES = ["mask shape", "nan depth", "empty mask", "mask range", "depth shape", "no depth in mask", "image shape",
             "image dtype", "image type", "camera size", "camera type", "fit_steps", "max_gaussians", "seed", "views"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_name_the_field(backend: LiftBackend, scene: dict, case: str) -> None:
    override, field = _bad_inputs(scene)[case]
    args = {"image": scene["image"], "depth": scene["depth"], "mask": scene["mask"], "camera": scene["camera"]}
    args |= override
    with pytest.raises(InvalidInput) as err:
        backend.reconstruct(**args)
    assert err.value.field == field

