"""The compiled screen-space stage (csrc/screen_cpu.cpp, _cpu_raster.ScreenSpaceCPU) against the torch
``screen_space`` of _torch_raster: which Gaussians are kept, their features, radii and gradients, the
full ``rasterize`` with it against the pure-torch path, gradcheck, thread-count determinism, and the
fallback to the torch stage when the camera needs gradients.

Tolerances: in float64 both stages evaluate the same formulas in a different order (the kernel's
explicit 3x3 products vs torch's matmuls, its hand-written chain rule vs autograd), so features agree to
~1e-14 and gradients to ~1e-12 relative; the asserts leave a few decades of room. Radii are integers
(ceil of the same float64 expression) and must match exactly, as must the set of kept Gaussians.
"""
# ruff: noqa: E402  (torch is imported through pytest.importorskip first)

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gsplat.cuda._torch_impl")

from test_rasterizer import FIELDS, as64, camera_tensors

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.render import _cpu_raster, _torch_raster, rasterize, to_tensors
from glimpse3d.core.splat import Splat

pytestmark = pytest.mark.skipif(
    not _cpu_raster.available(),
    reason="compiled CPU rasterizer not built (python -m glimpse3d.core.render.build_ext, part of make setup)",
)


def _hard_splat(n: int, seed: int, sh_degree: int) -> Splat:
    """Gaussians around and behind an orbit camera 2.5 units out: some behind it or just past the near
    plane, some far off screen, large ones whose centre is outside the frustum guard but whose footprint
    reaches the image (the clamped Jacobian), very anisotropic and sub-pixel ones, unnormalised
    quaternions, transparent ones (opacity < 1/255, culled), SH coefficients that push colours below 0."""
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    means = rng.uniform(-1.0, 1.0, (n, 3))
    means[: n // 6] *= 4.0  # spread out: off screen and behind the camera
    log_scales = np.log(rng.uniform(0.002, 0.15, (n, 3)))
    log_scales[n // 6 : n // 3, 0] += 2.5  # needles
    log_scales[n // 3 : n // 2] = np.log(rng.uniform(1e-4, 1e-3, (n // 2 - n // 3, 3)))  # sub-pixel
    logits = rng.normal(0.5, 2.0, n)
    logits[:5] = -8.0  # below the 1/255 opacity threshold
    sh = rng.normal(0.0, 0.4, (n, k, 3))
    sh[:, 0] = rng.normal(0.0, 1.5, (n, 3))
    return Splat(
        means=means.astype(np.float32),
        quats=(rng.normal(size=(n, 4)) * rng.uniform(0.2, 3.0, (n, 1))).astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        opacity_logits=logits.astype(np.float32),
        sh=sh.astype(np.float32),
    )


def _with_edge_gaussians(splat: Splat, camera) -> Splat:
    """Append Gaussians placed in camera space: just in front of and just behind the near plane, and
    big ones at 1.5x and 2x the half field of view (frustum guard active) that still reach the image."""
    cam_pts = np.array([[0.0, 0.0, 0.0102], [0.0, 0.0, 0.0098], [0.02, -0.01, 0.05],
                        [1.5, 0.2, 1.0], [-2.0, -1.0, 1.2], [0.3, 2.2, 1.1]])
    c2w = np.linalg.inv(camera.world_to_camera)
    world = cam_pts @ c2w[:3, :3].T + c2w[:3, 3]
    m = len(cam_pts)
    k = splat.sh.shape[1]
    rng = np.random.default_rng(7)
    extra = Splat(
        means=world.astype(np.float32),
        quats=rng.normal(size=(m, 4)).astype(np.float32),
        log_scales=np.log(np.array([[0.01] * 3, [0.01] * 3, [0.002] * 3, [0.6, 0.3, 0.4], [0.8, 0.5, 0.3],
                                    [0.5, 0.7, 0.2]])).astype(np.float32),
        opacity_logits=np.full(m, 2.0, dtype=np.float32),
        sh=rng.normal(0.0, 0.5, (m, k, 3)).astype(np.float32),
    )
    return Splat(**{f: np.concatenate([getattr(splat, f), getattr(extra, f)]) for f in FIELDS})


def _case(sh_degree: int, seed: int):
    camera = orbit_camera(20.0, 15.0, 2.5, width=61, height=47)
    return _with_edge_gaussians(_hard_splat(400, seed, sh_degree), camera), camera


def _outside_frustum_guard(means, camera):
    """Whether each mean lies beyond gsplat's frustum guard (the Jacobian is evaluated clamped)."""
    viewmat, K, _ = camera_tensors(camera, means.dtype)
    t = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    x, y = t[:, 0] / t[:, 2], t[:, 1] / t[:, 2]
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    w, h = camera.width, camera.height
    gx, gy = 0.3 * 0.5 * w / fx, 0.3 * 0.5 * h / fy
    return (x > (w - cx) / fx + gx) | (x < -cx / fx - gx) | (y > (h - cy) / fy + gy) | (y < -cy / fy - gy)


def _stage(fn, g, camera, degree):
    viewmat, K, campos = camera_tensors(camera, g.dtype)
    return fn(g, viewmat, K, campos, camera.width, camera.height, degree)


@pytest.mark.parametrize(("sh_degree", "render_degree"), [(0, 0), (1, 1), (2, 2), (3, 3), (3, 1)])
def test_screen_space_matches_torch_stage(sh_degree, render_degree):
    splat, camera = _case(sh_degree, seed=40 + sh_degree)
    g = as64(splat, requires_grad=True)
    mine_feats, mine_radii = _stage(_cpu_raster.screen_space, g, camera, render_degree)
    ref_feats, ref_radii = _stage(_torch_raster.screen_space, g, camera, render_degree)
    # The scene exercises every culling rule and both sides of each clamp.
    viewmat, _, _ = camera_tensors(camera)
    depth = g.means.detach() @ viewmat[2, :3] + viewmat[2, 3]
    assert int((depth <= 0.01).sum()) > 10 and 0 < len(ref_feats) < int((depth > 0.01).sum()) - 10
    assert torch.equal(mine_radii, ref_radii)
    torch.testing.assert_close(mine_feats.detach(), ref_feats.detach(), rtol=1e-12, atol=1e-12)
    assert float(ref_feats[:, 6:9].detach().min()) == 0.0  # some colours clamped at 0
    _, _, kept = _cpu_raster.ScreenSpaceCPU.apply(*(getattr(g, f) for f in FIELDS), *camera_tensors(camera),
                                                  camera.width, camera.height, render_degree)
    assert int(_outside_frustum_guard(g.means.detach()[kept], camera).sum()) >= 3  # the clamped Jacobian
    gen = torch.Generator().manual_seed(sh_degree)
    weights = torch.randn(ref_feats.shape, generator=gen, dtype=torch.float64)
    fields = [getattr(g, f) for f in FIELDS]
    mine_g = torch.autograd.grad((mine_feats * weights).sum(), fields, materialize_grads=True)
    ref_g = torch.autograd.grad((ref_feats * weights).sum(), fields, materialize_grads=True)
    for f, a, b in zip(FIELDS, mine_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, f=f: f"d/d{f}: {m}")
        assert float(b.abs().max()) > 0, f


def _render_grads(splat, camera, backend, dtype):
    g = as64(splat, requires_grad=True) if dtype == torch.float64 else to_tensors(splat, requires_grad=True)
    out = rasterize(g, camera, background=(0.2, 0.4, 0.6), backend=backend)
    gen = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in out)
    return [o.detach() for o in out], torch.autograd.grad(loss, [getattr(g, f) for f in FIELDS],
                                                          materialize_grads=True)


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_rasterize_with_fused_stage_matches_torch_path(sh_degree):
    splat, camera = _case(sh_degree, seed=50 + sh_degree)
    mine, mine_g = _render_grads(splat, camera, "cpu", torch.float64)
    ref, ref_g = _render_grads(splat, camera, "torch", torch.float64)
    assert float(ref[2].max()) > 0.9
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    for f, a, b in zip(FIELDS, mine_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, f=f: f"d/d{f}: {m}")
    # float32: the same culling and formulas in float32 (the composite accumulates in double)
    mine, mine_g = _render_grads(splat, camera, "cpu", torch.float32)
    ref, ref_g = _render_grads(splat, camera, "torch", torch.float32)
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for f, a, b in zip(FIELDS, mine_g, ref_g, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-3, f


def test_gradcheck_screen_space_kernel_float64():
    splat, camera = _case(3, seed=60)
    splat = splat.subset(np.arange(len(splat.means) - 3, len(splat.means)))  # the frustum-guard Gaussians
    extra = _hard_splat(40, seed=61, sh_degree=3)
    splat = Splat(**{f: np.concatenate([getattr(splat, f), getattr(extra, f)]) for f in FIELDS})
    g = as64(splat)
    viewmat, K, campos = camera_tensors(camera)
    inputs = tuple(getattr(g, f).clone().requires_grad_(True) for f in FIELDS)

    def fn(*fields):
        return _cpu_raster.ScreenSpaceCPU.apply(*fields, viewmat, K, campos, camera.width, camera.height, 3)[0]

    feats = fn(*inputs).detach()
    assert len(feats) > 12  # a good part of the Gaussians are kept, among them
    assert int(_outside_frustum_guard(inputs[0].detach()[:3], camera).sum()) == 3  # the off-frustum ones
    assert torch.equal(_cpu_raster.ScreenSpaceCPU.apply(*inputs, viewmat, K, campos, camera.width, camera.height,
                                                        3)[2][:3], torch.arange(3))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-6, rtol=1e-5)


def test_fused_stage_is_bit_identical_for_any_thread_count():
    splat, camera = _case(3, seed=70)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            g = to_tensors(splat, requires_grad=True)
            feats, radii = _stage(_cpu_raster.screen_space, g, camera, 3)
            (feats * torch.linspace(-1, 1, feats.numel()).reshape(feats.shape)).sum().backward()
            runs.append([feats.detach(), radii, *(getattr(g, f).grad for f in FIELDS)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))


def test_camera_gradients_fall_back_to_the_torch_stage():
    splat, camera = _case(1, seed=80)
    g = as64(splat)
    viewmat, K, campos = camera_tensors(camera)
    assert _cpu_raster.fused_screen_space_applies(g, viewmat, K, campos)
    results = []
    for compiled in (True, False):
        vm = viewmat.clone().requires_grad_(True)
        assert not _cpu_raster.fused_screen_space_applies(g, vm, K, campos)
        rgb, depth, _ = _torch_raster.render(g, vm, K, campos, (camera.width, camera.height),
                                                 torch.zeros(3, dtype=torch.float64), 1, compiled=compiled)
        (rgb.sum() + depth.sum()).backward()
        assert vm.grad is not None
        results.append(vm.grad)
    assert float(results[1].abs().max()) > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-8, atol=1e-10)
    with torch.no_grad():  # no gradients wanted: the fused stage applies again
        assert _cpu_raster.fused_screen_space_applies(g, viewmat.clone().requires_grad_(True), K, campos)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_binning_matches_torch_binning(dtype):
    gen = torch.Generator().manual_seed(90)
    n, width, height, tile = 3000, 70, 45, 8
    feats = torch.rand(n, 10, generator=gen, dtype=dtype)
    feats[:, 0] = feats[:, 0] * 110 - 20  # centres on and off the image
    feats[:, 1] = feats[:, 1] * 85 - 20
    feats[:, 9] = torch.randint(0, 40, (n,), generator=gen).to(dtype) * 0.25 + 0.5  # many equal depths
    radii = torch.ceil(torch.rand(n, 2, generator=gen, dtype=dtype) ** 4 * 30)
    radii[:50] = 0  # empty boxes
    feats[50:60, :2] = torch.tensor([16.0, 24.0], dtype=dtype)  # boxes ending exactly on tile borders
    radii[50:60] = 8
    grid = (-(-height // tile), -(-width // tile))
    mine = _cpu_raster.bin_compiled(feats, radii, grid, tile)
    ref = _torch_raster.bin_gaussians(feats[:, :2], radii, feats[:, -1], grid, tile)
    assert len(ref.ids) > 2 * n and len(ref.tiles) == grid[0] * grid[1]
    for name, a, b in zip(ref._fields, mine, ref, strict=True):
        assert torch.equal(a, b), name
    empty = _cpu_raster.bin_compiled(feats[:0], radii[:0], grid, tile)
    assert all(t.numel() == 0 and t.dtype == torch.long for t in empty)
