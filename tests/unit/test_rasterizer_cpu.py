"""The compiled CPU composite kernel (csrc/raster_cpu.cpp, backend="cpu") against the pure-torch path
and the dense gsplat-reference rasterizer of test_rasterizer.py: values and gradients, edge cases,
gradcheck, determinism, backend selection and the build module.

Tolerances: in float64 both paths evaluate the same formulas in a different order (a running product
vs torch's cumprod, division by 1 - alpha in the backward pass vs cumulative sums), so values agree to
~1e-12 and gradients to ~1e-9 relative; the asserts leave a decade or two of room. In float32 the
kernel accumulates in double while torch accumulates in float32: values within 1e-5, gradients within
1e-4 relative (norm of the difference over the norm of the torch gradient).
"""
# ruff: noqa: E402  (torch is imported through pytest.importorskip first)

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gsplat.cuda._torch_impl")

from test_rasterizer import FIELDS, _border_scene, as64, dense_reference, random_splat

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import GaussianTensors, _cpu_raster, build_ext, rasterize, to_tensors
from glimpse3d.core.render._rasterize import Backend
from glimpse3d.core.render._torch_raster import bin_gaussians
from glimpse3d.core.splat import Splat

needs_kernel = pytest.mark.skipif(
    not _cpu_raster.available(),
    reason="compiled CPU rasterizer not built (python -m glimpse3d.core.render.build_ext, part of make setup)",
)


def _render_and_grads(splat: Splat, camera, backend: Backend, dtype=torch.float64, bg=(0.3, 0.5, 0.1), seed=9):
    g = as64(splat, requires_grad=True) if dtype == torch.float64 else to_tensors(splat, requires_grad=True)
    out = rasterize(g, camera, background=bg, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in out)
    grads = torch.autograd.grad(loss, [getattr(g, f) for f in FIELDS], materialize_grads=True)
    return [o.detach() for o in out], grads


def _scenes():
    """(name, splat, camera): overlapping and opaque Gaussians (stop rule, alpha cap, tile borders),
    Gaussians far off screen, sizes that are not multiples of 16, a 1x1 image."""
    border = _border_scene()
    return [
        ("border_stack_70x50", border, orbit_camera(25.0, 10.0, 2.5, width=70, height=50)),
        ("offscreen_17x33", random_splat(200, seed=30, spread=2.5, scale_range=(0.02, 0.3)),
         orbit_camera(10.0, 5.0, 2.5, width=17, height=33)),
        ("dense_opaque_48", random_splat(400, seed=31, spread=0.4, scale_range=(0.05, 0.2)),
         orbit_camera(0.0, 0.0, 2.2, width=48, height=48)),
        ("one_pixel", border, orbit_camera(25.0, 10.0, 2.5, width=1, height=1)),
    ]


@needs_kernel
@pytest.mark.parametrize(("name", "splat", "camera"), _scenes(), ids=[s[0] for s in _scenes()])
def test_cpu_kernel_matches_torch_path_in_float64(name, splat, camera):
    mine, mine_g = _render_and_grads(splat, camera, "cpu")
    ref, ref_g = _render_and_grads(splat, camera, "torch")
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    for f, a, b in zip(FIELDS, mine_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, f=f: f"{name} d/d{f}: {m}")
    if name == "dense_opaque_48":  # the stop rule must actually have been exercised
        assert float(ref[2].max()) > 0.999


@needs_kernel
def test_cpu_kernel_matches_dense_gsplat_reference():
    splat = _border_scene()
    camera = orbit_camera(25.0, 10.0, 2.5, width=70, height=50)
    bg = (0.3, 0.5, 0.1)
    mine, mine_g = _render_and_grads(splat, camera, "cpu", bg=bg)
    g = as64(splat, requires_grad=True)
    ref = dense_reference(g, camera, bg)
    assert 0.999 < float(ref[2].detach().max()) < 1 - 5e-5  # the opaque stack hits the stop rule
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-9)
    gen = torch.Generator().manual_seed(9)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in ref)
    ref_g = torch.autograd.grad(loss, [getattr(g, f) for f in FIELDS], materialize_grads=True)
    for a, b in zip(mine_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@needs_kernel
def test_cpu_kernel_matches_torch_path_in_float32():
    splat = random_splat(1500, seed=32, spread=0.6, scale_range=(0.01, 0.08), sh_degree=2)
    camera = orbit_camera(30.0, 15.0, 2.5, width=100, height=75)
    mine, mine_g = _render_and_grads(splat, camera, "cpu", dtype=torch.float32)
    ref, ref_g = _render_and_grads(splat, camera, "torch", dtype=torch.float32)
    assert all(o.dtype == torch.float32 for o in mine)
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for f, a, b in zip(FIELDS, mine_g, ref_g, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-4, f


@needs_kernel
def test_cpu_kernel_empty_and_invisible_scenes():
    camera = orbit_camera(0.0, 0.0, 3.0, width=20, height=10)
    behind = Splat.from_colors(np.array([[0.0, 0.0, 5.0]]), np.array([[1.0, 0, 0]]), 0.1, 0.9)  # behind the camera
    far_left = Splat.from_colors(np.array([[-50.0, 0.0, 0.0]]), np.array([[0, 1.0, 0]]), 0.1, 0.9)  # off screen
    for splat in (behind.subset(np.zeros(0, dtype=int)), behind, far_left):
        g = to_tensors(splat, requires_grad=True)
        out = rasterize(g, camera, background=(0.1, 0.2, 0.3), backend="cpu")
        torch.testing.assert_close(out.rgb.detach(), torch.tensor([0.1, 0.2, 0.3]).expand(10, 20, 3))
        assert (out.alpha == 0).all() and (out.depth == 0).all()
        out.rgb.sum().backward()
        assert all((getattr(g, f).grad == 0).all() for f in FIELDS)


def _screen_feats(n: int, size: int, seed: int):
    """Random screen-space Gaussians [n, 10] (float64): positive-definite conics, mixed opacities."""
    gen = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
    sx, sy = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 3 + 1.5).unbind(1)
    rho = torch.rand(n, generator=gen, dtype=torch.float64) * 1.2 - 0.6
    det = (sx * sy) ** 2 * (1 - rho**2)
    conic = torch.stack([sy**2 / det, -rho * sx * sy / det, sx**2 / det], 1)
    log_o = torch.log(torch.rand(n, generator=gen, dtype=torch.float64) * 0.9 + 0.05)
    rest = torch.rand(n, 4, generator=gen, dtype=torch.float64) + torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)
    return torch.cat([uv, conic, log_o[:, None], rest], 1)


@needs_kernel
def test_gradcheck_composite_kernel_float64():
    size, tile = 10, 4  # several tiles, one partial
    feats = _screen_feats(12, size, seed=33)
    radii = torch.full((12, 2), 12, dtype=torch.long)  # every Gaussian in every tile
    b = bin_gaussians(feats[:, :2], radii, feats[:, -1], (-(-size // tile), -(-size // tile)), tile)

    def fn(f):
        return _cpu_raster.CompositeCPU.apply(f, b.tiles, b.starts, b.counts, b.ids, size, size, tile)

    x = feats.clone().requires_grad_(True)
    assert float(fn(x).detach()[..., 4].max()) > 0.5
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def _image_and_grads(splat, camera) -> list:
    """The compiled path's image and the gradients of every field of rgb.sum() + depth.sum()."""
    g = to_tensors(splat, requires_grad=True)
    out = rasterize(g, camera, backend="cpu")
    (out.rgb.sum() + out.depth.sum()).backward()
    return [out.rgb.detach(), *(getattr(g, f).grad for f in FIELDS)]


def _all_equal(runs: list) -> bool:
    return all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run, strict=True))


@needs_kernel
def test_cpu_kernel_gradients_are_bit_identical_for_any_thread_count():
    splat = random_splat(3000, seed=15, spread=0.6, scale_range=(0.01, 0.05), sh_degree=1)
    camera = orbit_camera(0.0, 0.0, 2.5, width=96, height=96)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 3, 4):
            torch.set_num_threads(n)
            runs.append(_image_and_grads(splat, camera))
    finally:
        torch.set_num_threads(threads)
    assert _all_equal(runs)


@needs_kernel
def test_auto_backend_uses_the_kernel_on_cpu():
    splat = random_splat(300, seed=34)
    camera = orbit_camera(0.0, 0.0, 3.0, width=40, height=24)
    auto, cpu = rasterize(splat, camera), rasterize(splat, camera, backend="cpu")
    assert all(torch.equal(a, b) for a, b in zip(auto, cpu, strict=True))


def test_without_the_kernel_auto_falls_back_and_cpu_names_the_backend(monkeypatch):
    monkeypatch.setitem(_cpu_raster._loaded, "module", None)  # as if it were not built
    splat = random_splat(50, seed=35)
    camera = orbit_camera(0.0, 0.0, 3.0, width=24, height=20)
    auto, ref = rasterize(splat, camera), rasterize(splat, camera, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(auto, ref, strict=True))
    with pytest.raises(InvalidInput) as err:
        rasterize(splat, camera, backend="cpu")
    assert err.value.field == "backend" and "build_ext" in err.value.message


def test_cpu_backend_rejects_other_dtypes():
    g = to_tensors(random_splat(5, seed=36))
    half = GaussianTensors(*(getattr(g, f).to(torch.bfloat16) for f in FIELDS))
    with pytest.raises(InvalidInput) as err:
        rasterize(half, orbit_camera(0.0, 0.0, 3.0, width=8, height=8), backend="cpu")
    assert err.value.field == "backend" and "float32 or float64" in err.value.message


def test_build_reports_a_missing_compiler(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(build_ext.CACHE_ENV, str(tmp_path))  # nothing built there
    monkeypatch.setenv("CXX", "no-such-compiler-g3d")
    with pytest.raises(build_ext.BuildError, match="no C\\+\\+ compiler"):
        build_ext.build()
    assert build_ext.load() is None
    assert build_ext.main([]) == 1
    assert build_ext.main(["--optional"]) == 0
    assert "no-such-compiler-g3d" in capsys.readouterr().err


@needs_kernel
def test_the_kernels_own_thread_count_is_independent_of_torchs_and_changes_nothing_but_speed():
    """set_threads pins the kernels' OpenMP threads whatever torch's intra-op count is (what
    configure_torch does for services that run torch single-threaded), with the same results."""
    splat = random_splat(2000, seed=16, spread=0.6, scale_range=(0.01, 0.05), sh_degree=1)
    camera = orbit_camera(20.0, 10.0, 2.5, width=80, height=64)
    threads = torch.get_num_threads()
    runs = []
    try:
        for torch_n, kernel_n in ((threads, 0), (1, 3), (1, 1)):
            torch.set_num_threads(torch_n)
            assert _cpu_raster.set_threads(kernel_n)
            assert _cpu_raster.threads() == (kernel_n or torch_n)
            runs.append(_image_and_grads(splat, camera))
    finally:
        torch.set_num_threads(threads)
        _cpu_raster.set_threads(0)
    assert _all_equal(runs)
    with pytest.raises(ValueError, match=r"0\.\.1024"):
        _cpu_raster.set_threads(-1)


@needs_kernel
def test_configure_torch_keeps_the_kernels_on_torchs_default_threads():
    from glimpse3d.core.service import ServiceSettings, configure_torch

    threads = torch.get_num_threads()
    try:
        configure_torch(ServiceSettings(torch_threads=1))
        assert torch.get_num_threads() == 1 and _cpu_raster.threads() == threads
        configure_torch(ServiceSettings(torch_threads=1, raster_threads=3))
        assert torch.get_num_threads() == 1 and _cpu_raster.threads() == 3
    finally:
        torch.set_num_threads(threads)
        _cpu_raster.set_threads(0)


def test_the_embedded_stack_runs_weight_free_services_with_single_threaded_torch():
    from glimpse3d.gateway.stack import WEIGHT_FREE_TORCH_THREADS, service_environment

    base = {"GLIMPSE3D_LOG_JSON": "true"}
    assert service_environment(base, {})["GLIMPSE3D_TORCH_THREADS"] == WEIGHT_FREE_TORCH_THREADS == "1"
    assert service_environment({**base, "GLIMPSE3D_TORCH_THREADS": "4"}, {})["GLIMPSE3D_TORCH_THREADS"] == "4"
    assert "GLIMPSE3D_TORCH_THREADS" not in service_environment(base, {"GLIMPSE3D_BACKEND": "depth_anything"})
    assert service_environment(base, {})["GLIMPSE3D_LOG_JSON"] == "true"
