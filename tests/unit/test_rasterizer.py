"""Rasterizer tests: the projection and SH kernels against gsplat's pure-torch reference, the full
torch rasterizer against a dense (untiled) reference and analytic images, gradients, a fit, bounded
memory, input validation, and (with a GPU) gsplat's CUDA rasterizer."""
# ruff: noqa: E402  (torch and gsplat are imported through pytest.importorskip first)

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gsplat_ref = pytest.importorskip("gsplat.cuda._torch_impl")

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import GaussianTensors, _torch_raster, from_tensors, rasterize, to_tensors
from glimpse3d.core.render._project import covariance_3d, pixel_radii, project
from glimpse3d.core.render._sh import eval_sh
from glimpse3d.core.splat import Splat

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """These images are small, so per-op overhead dominates and a second OpenMP thread only adds
    synchronisation (and stalls badly on a busy machine). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- helpers


def random_splat(n: int, seed: int, *, sh_degree: int = 1, spread: float = 0.7,
                 scale_range: tuple[float, float] = (0.03, 0.12)) -> Splat:
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    sh = rng.normal(0.0, 0.25, (n, k, 3))
    sh[:, 0] = rng.normal(0.0, 1.0, (n, 3))
    return Splat(
        means=rng.uniform(-spread, spread, (n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=np.log(rng.uniform(*scale_range, (n, 3))).astype(np.float32),
        opacity_logits=rng.normal(0.5, 1.5, n).astype(np.float32),
        sh=sh.astype(np.float32),
    )


def as64(splat: Splat, requires_grad: bool = False) -> GaussianTensors:
    return GaussianTensors(
        **{f: torch.tensor(getattr(splat, f), dtype=torch.float64).requires_grad_(requires_grad) for f in FIELDS}
    )


def camera_tensors(camera: Camera, dtype: torch.dtype = torch.float64):
    viewmat = torch.tensor(camera.world_to_camera, dtype=dtype)
    K = torch.tensor(camera.K, dtype=dtype)
    campos = torch.tensor(camera.position, dtype=dtype)
    return viewmat, K, campos


def dense_reference(g: GaussianTensors, camera: Camera, background=(0.0, 0.0, 0.0)):
    """Untiled rasterizer built from gsplat's pure-torch reference kernels: every pixel against every
    Gaussian ([H*W, N] tensors), sorted by depth, same alpha / stopping rules as gsplat's CUDA kernel."""
    viewmat, K, campos = camera_tensors(camera, g.dtype)
    w, h = camera.width, camera.height
    covars, _ = gsplat_ref._quat_scale_to_covar_preci(g.quats, torch.exp(g.log_scales), compute_preci=False)
    radii, means2d, depths, conics, _ = gsplat_ref._fully_fused_projection(
        g.means, covars, viewmat[None], K[None], w, h, eps2d=0.3, near_plane=0.01
    )
    valid = (radii[0] > 0).all(dim=-1)
    colors = gsplat_ref._spherical_harmonics(g.sh_degree, g.means - campos, g.sh) + 0.5
    colors = torch.clamp(colors, min=0.0)[valid]
    m2d, con, z = means2d[0][valid], conics[0][valid], depths[0][valid]
    opac = torch.sigmoid(g.opacity_logits)[valid]
    order = torch.argsort(z, stable=True)
    m2d, con, z, opac, colors = m2d[order], con[order], z[order], opac[order], colors[order]
    jj, ii = torch.meshgrid(torch.arange(w, dtype=g.dtype), torch.arange(h, dtype=g.dtype), indexing="xy")
    pix = torch.stack([jj, ii], dim=-1).reshape(-1, 2) + 0.5  # [P, 2]
    d = pix[:, None, :] - m2d[None]  # [P, N, 2]
    sigma = 0.5 * (con[:, 0] * d[..., 0] ** 2 + con[:, 2] * d[..., 1] ** 2) + con[:, 1] * d[..., 0] * d[..., 1]
    alpha = torch.clamp(opac * torch.exp(-sigma), max=0.999)
    alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255), alpha, 0.0)
    t_incl = torch.cumprod(1 - alpha, dim=1)
    weights = alpha * (t_incl / (1 - alpha)) * (t_incl > 1e-4)
    acc = weights.sum(dim=1)
    bg = torch.tensor(background, dtype=g.dtype)
    rgb = weights @ colors + (1 - acc)[:, None] * bg
    depth_sum = weights @ z
    depth = torch.where(acc > 1e-6, depth_sum / torch.where(acc > 1e-6, acc, 1.0), 0.0)
    return rgb.reshape(h, w, 3), depth.reshape(h, w), acc.reshape(h, w)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(torch.mean((a - b) ** 2)))


# ------------------------------------------------------------- 1. kernels against gsplat's torch reference


def _grads(outputs, inputs, seed: int):
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, retain_graph=True, materialize_grads=True)


def test_covariance_matches_gsplat_reference_values_and_gradients():
    gen = torch.Generator().manual_seed(1)
    quats = torch.randn(64, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    scales = (torch.rand(64, 3, generator=gen, dtype=torch.float64) * 0.5 + 0.01).requires_grad_(True)
    mine = covariance_3d(quats, scales)
    ref, _ = gsplat_ref._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads([mine], (quats, scales), 7), _grads([ref], (quats, scales), 7), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_projection_matches_gsplat_reference_values_and_gradients():
    splat = random_splat(200, seed=2, spread=1.5, scale_range=(0.01, 0.4))
    g = as64(splat, requires_grad=True)
    camera = orbit_camera(35.0, 20.0, 3.0, width=96, height=72)
    viewmat, K, _ = camera_tensors(camera)
    scales = torch.exp(g.log_scales)
    inputs = (g.means, g.quats, g.log_scales)

    mine = project(g.means, covariance_3d(g.quats, scales), viewmat, K, 96, 72)
    covars, _ = gsplat_ref._quat_scale_to_covar_preci(g.quats, scales, compute_preci=False)
    _, ref_m2d, ref_depths, ref_conics, _ = gsplat_ref._fully_fused_projection(
        g.means, covars, viewmat[None], K[None], 96, 72, eps2d=0.3, near_plane=0.01
    )
    assert (mine.depths > 0.01).all(), "the scene is meant to lie in front of the camera"
    # Many Gaussians lie outside the view: that exercises gsplat's frustum clamp in the Jacobian.
    u, v = mine.means2d.detach().unbind(-1)
    assert ((u < -0.3 * 48) | (u > 96 + 0.3 * 48) | (v < -0.3 * 36) | (v > 72 + 0.3 * 36)).sum() >= 10
    torch.testing.assert_close(mine.means2d, ref_m2d[0], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(mine.depths, ref_depths[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine.conics, ref_conics[0], rtol=1e-9, atol=1e-12)
    mine_g = _grads([mine.means2d, mine.conics, mine.depths], inputs, 3)
    ref_g = _grads([ref_m2d[0], ref_conics[0], ref_depths[0]], inputs, 3)
    for a, b in zip(mine_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_reference_values_and_gradients(degree):
    gen = torch.Generator().manual_seed(degree)
    dirs = torch.randn(300, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(300, 16, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mine = eval_sh(degree, dirs, coeffs)
    ref = gsplat_ref._spherical_harmonics(degree, dirs, coeffs)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads([mine], (dirs, coeffs), 5), _grads([ref], (dirs, coeffs), 5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_radii_bound_every_pixel_above_the_alpha_threshold():
    splat = random_splat(150, seed=4, spread=0.8, scale_range=(0.01, 0.3))
    g = as64(splat)
    camera = orbit_camera(10.0, 5.0, 2.5, width=64, height=64)
    viewmat, K, _ = camera_tensors(camera)
    proj = project(g.means, covariance_3d(g.quats, torch.exp(g.log_scales)), viewmat, K, 64, 64)
    opac = torch.sigmoid(g.opacity_logits)
    radii = pixel_radii(proj.cov_diag, opac)
    # Dense check on a pixel grid much larger than the image: alpha >= 1/255 only inside the box.
    jj, ii = torch.meshgrid(torch.arange(-100, 164, dtype=torch.float64), torch.arange(-100, 164, dtype=torch.float64),
                            indexing="xy")
    pix = torch.stack([jj, ii], dim=-1).reshape(-1, 2) + 0.5
    d = pix[:, None, :] - proj.means2d[None]
    a, b, c = proj.conics.unbind(-1)
    alpha = opac * torch.exp(-0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) - b * d[..., 0] * d[..., 1])
    outside = (d.abs() > radii[None]).any(dim=-1)
    assert not ((alpha >= 1 / 255) & outside).any()
    assert (radii[opac < 1 / 255] == 0).all()


# --------------------------------------------------------------------------- 2. gradcheck of rasterize


def test_gradcheck_full_rasterize():
    rng = np.random.default_rng(11)
    n = 4
    splat = Splat(
        means=np.array([[0.0, 0.0, 0.0], [0.15, -0.1, 0.2], [-0.2, 0.1, -0.1], [0.05, 0.2, 0.1]], np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=np.log(rng.uniform(0.08, 0.18, (n, 3))).astype(np.float32),
        opacity_logits=rng.uniform(-0.5, 1.0, n).astype(np.float32),
        sh=rng.normal(0, 0.3, (n, 4, 3)).astype(np.float32),
    )
    g = as64(splat, requires_grad=True)
    camera = orbit_camera(20.0, 10.0, 2.0, width=12, height=10, fov_y_deg=50.0)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64, requires_grad=True)

    def fn(means, quats, log_scales, opacity_logits, sh, background):
        out = rasterize(GaussianTensors(means, quats, log_scales, opacity_logits, sh), camera, background=background)
        return out.rgb, out.depth, out.alpha

    inputs = (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh, bg)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# ------------------------------------------------------------------------ 3. one Gaussian, analytic image


def test_single_gaussian_matches_analytic_image():
    f, z, s, o = 40.0, 2.0, 0.05, 0.8
    camera = Camera(fx=f, fy=f, cx=20.5, cy=16.5, width=41, height=33)  # centre of pixel (row 16, col 20)
    color, bg = np.array([0.9, 0.3, 0.1]), (0.1, 0.2, 0.7)
    splat = Splat.from_colors(np.array([[0.0, 0.0, z]]), color[None], s, o)
    out = rasterize(splat, camera, background=bg)
    rgb, depth, alpha = (t.numpy().astype(np.float64) for t in out)

    assert np.unravel_index(np.argmax(alpha), alpha.shape) == (16, 20)
    assert alpha[16, 20] == pytest.approx(o, rel=1e-5)
    sigma2 = (f * s / z) ** 2 + 0.3
    expected = o * np.exp(-0.5 * (np.arange(41) - 20) ** 2 / sigma2)
    expected[expected < 1 / 255] = 0.0
    np.testing.assert_allclose(alpha[16], expected, rtol=1e-4, atol=1e-7)
    expected_col = o * np.exp(-0.5 * (np.arange(33) - 16) ** 2 / sigma2)
    expected_col[expected_col < 1 / 255] = 0.0
    np.testing.assert_allclose(alpha[:, 20], expected_col, rtol=1e-4, atol=1e-7)
    assert (expected == 0).sum() > 10, "the image must be wide enough to show the 1/255 cut-off"
    np.testing.assert_allclose(rgb, alpha[..., None] * color + (1 - alpha[..., None]) * np.array(bg), atol=1e-5)
    np.testing.assert_allclose(depth[alpha > 0], z, rtol=1e-5)
    assert (depth[alpha == 0] == 0).all()


def test_requested_size_rescales_intrinsics():
    splat = random_splat(60, seed=5)
    camera = orbit_camera(0.0, 0.0, 3.0, width=40, height=30)
    a = rasterize(splat, camera, width=80, height=60)
    b = rasterize(splat, camera.with_size(80, 60))
    assert a.rgb.shape == (60, 80, 3) and a.depth.shape == (60, 80) and a.alpha.shape == (60, 80)
    torch.testing.assert_close(a.rgb, b.rgb)
    torch.testing.assert_close(a.depth, b.depth)


# -------------------------------------------------------------------------------------------- 4. a fit


def test_adam_fits_a_splat_to_a_rendered_target():
    torch.manual_seed(0)
    camera = orbit_camera(30.0, 15.0, 2.6, width=48, height=48)
    target = rasterize(random_splat(40, seed=21, sh_degree=0, spread=0.5), camera, background=(1, 1, 1)).rgb
    g = to_tensors(random_splat(120, seed=22, sh_degree=0, spread=0.5, scale_range=(0.04, 0.08)),
                   requires_grad=True)
    params = [getattr(g, f) for f in FIELDS]
    opt = torch.optim.Adam(params, lr=0.02)
    start = psnr(rasterize(g, camera, background=(1, 1, 1)).rgb.detach(), target)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(rasterize(g, camera, background=(1, 1, 1)).rgb, target)
        loss.backward()
        opt.step()
    final = psnr(rasterize(g, camera, background=(1, 1, 1)).rgb.detach(), target)
    assert start < 20.0
    assert final >= 40.0, f"PSNR {start:.1f} -> {final:.1f} dB"


# ------------------------------------------------------------- 5. tiling, chunking, culling vs dense reference


def _border_scene() -> Splat:
    """Random Gaussians plus a few centred exactly on 16-px tile corners and edges (one nearly
    opaque), and an opaque stack that drives transmittance below 1e-4 (the stopping rule)."""
    base = random_splat(90, seed=6, sh_degree=2, spread=0.6)
    camera = orbit_camera(25.0, 10.0, 2.5, width=70, height=50)
    # Tile corners and edges, then one pixel centre (for the nearly opaque Gaussian).
    uv = np.array([[16.0, 16.0], [32.0, 16.0], [48.0, 32.0], [16.0, 40.0], [64.0, 48.0], [40.5, 8.5]])
    border_means = camera.unproject(uv, np.r_[np.full(5, 2.4), 1.8])
    stack_means = camera.unproject(np.full((12, 2), [40.0, 24.0]), np.linspace(2.0, 2.3, 12))
    extra = Splat.from_colors(
        np.concatenate([border_means, stack_means]).astype(np.float32),
        np.random.default_rng(7).uniform(0, 1, (18, 3)),
        np.r_[np.full(6, 0.06), np.full(12, 0.1)][:, None],
        np.r_[np.full(5, 0.9), 0.9999, np.full(12, 0.99)],  # 0.9999 exercises the 0.999 alpha cap
        sh_degree=2,
    )
    return Splat(*(np.concatenate([getattr(base, f), getattr(extra, f)]) for f in FIELDS))


@pytest.mark.parametrize(("tile_size", "max_work"), [(16, 1 << 20), (8, 1024), (16, 4096), (80, 1 << 22)])
def test_tiled_render_and_gradients_match_dense_reference(tile_size, max_work):
    splat = _border_scene()
    camera = orbit_camera(25.0, 10.0, 2.5, width=70, height=50)
    bg = (0.3, 0.5, 0.1)
    g = as64(splat, requires_grad=True)
    viewmat, K, campos = camera_tensors(camera)
    mine = _torch_raster.render(g, viewmat, K, campos, (70, 50), torch.tensor(bg, dtype=torch.float64),
                                g.sh_degree, tile_size=tile_size, max_work=max_work)
    ref = dense_reference(g, camera, bg)
    # The opaque stack saturates some pixels; without the stopping rule their alpha would be ~1 - 1e-12.
    assert 0.999 < float(ref[2].detach().max()) < 1 - 5e-5
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    inputs = [getattr(g, f) for f in FIELDS]
    for a, b in zip(_grads(mine, inputs, 9), _grads(ref, inputs, 9), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_plan_batches_respects_the_work_limit_and_covers_all_tiles():
    counts = sorted(np.random.default_rng(3).integers(1, 3000, 200).tolist())
    batches = _torch_raster.plan_batches(counts, tile_pixels=256, max_work=1 << 16)
    assert batches[0].first == 0 and batches[-1].last == len(counts)
    assert all(a.last == b.first for a, b in itertools.pairwise(batches))
    for b in batches:
        assert (b.last - b.first) * b.chunk * 256 <= 1 << 16
        assert b.chunk == min(counts[b.last - 1], (1 << 16) // 256)


# ------------------------------------------------------------------------------------ 6. bounded memory


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any torch op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_scales_with_pixels_times_gaussians():
    n, size = 3000, 128
    splat = random_splat(n, seed=8, spread=0.6, scale_range=(0.01, 0.04), sh_degree=0)
    camera = orbit_camera(0.0, 0.0, 2.5, width=size, height=size)
    g = to_tensors(splat, requires_grad=True)
    viewmat, K, campos = camera_tensors(camera, torch.float32)
    max_work = 1 << 15
    saved: dict[int, int] = {}  # storage address -> elements, for every tensor autograd keeps

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with _LargestTensor() as probe:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = _torch_raster.render(g, viewmat, K, campos, (size, size), torch.zeros(3), 0, max_work=max_work)
        (out[0].sum() + out[1].sum()).backward()
    assert float(out[2].detach().mean()) > 0.3, "the scene should cover much of the image"
    assert torch.isfinite(g.means.grad).all() and g.means.grad.abs().sum() > 0
    # Dense rasterization would need size*size*n = 49M elements; the tiled one never exceeds one
    # work block (max_work) or per-image / per-Gaussian buffers.
    assert probe.largest <= max(max_work, size * size * 5, n * 16 * 3), probe.largest
    # Checkpointing: what autograd keeps between forward and backward is O(pixels + Gaussians), not
    # O(intersections x pixels) (~30M elements here without checkpointing).
    assert sum(saved.values()) <= 32 * size * size + 128 * n, sum(saved.values())


def test_gradients_are_bit_identical_across_runs_with_threads():
    splat = random_splat(3000, seed=15, spread=0.6, scale_range=(0.01, 0.05), sh_degree=1)
    camera = orbit_camera(0.0, 0.0, 2.5, width=96, height=96)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)  # atomic-add scatters would make the accumulation order vary
    try:
        runs = []
        for _ in range(3):
            g = to_tensors(splat, requires_grad=True)
            out = rasterize(g, camera)
            (out.rgb.sum() + out.depth.sum()).backward()
            runs.append([getattr(g, f).grad for f in FIELDS])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))


# ----------------------------------------------------------------------------------- 7. gsplat CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for gsplat's kernels")
def test_gsplat_cuda_matches_torch_path():
    splat = random_splat(500, seed=9, sh_degree=3)
    camera = orbit_camera(40.0, 20.0, 2.5, width=96, height=80)
    bg = (0.2, 0.3, 0.4)
    g_cpu = to_tensors(splat, requires_grad=True)
    g_gpu = to_tensors(splat, device="cuda", requires_grad=True)
    cpu = rasterize(g_cpu, camera, background=bg, backend="torch")
    gpu = rasterize(g_gpu, camera, background=bg)  # auto -> gsplat
    # A Gaussian right at the 1/255 cut-off may be kept by one and dropped by the other (fast-math
    # exp on the GPU): that moves a pixel by < 1/255, and the depth only where alpha is tiny.
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, rtol=0, atol=5e-3)
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, rtol=0, atol=5e-3)
    solid = (cpu.alpha > 0.5) & (gpu.alpha.cpu() > 0.5)
    assert solid.sum() > 500
    torch.testing.assert_close(gpu.depth.cpu()[solid], cpu.depth[solid], rtol=1e-3, atol=1e-3)
    (cpu.rgb.sum() + cpu.alpha.sum()).backward()
    (gpu.rgb.sum() + gpu.alpha.sum()).backward()
    for f in FIELDS:
        a, b = getattr(g_gpu, f).grad.cpu(), getattr(g_cpu, f).grad
        assert float((a - b).norm() / b.norm()) < 2e-2, f


def test_gsplat_call_uses_the_torch_path_conventions(monkeypatch):
    """Runs anywhere: gsplat.rasterization is replaced by a recorder, checking what the CUDA path
    sends (float32, RGB+ED, SH degree, eps2d, near plane, background) and how it reads the result."""
    import gsplat

    from glimpse3d.core.render import _gsplat

    calls = []

    def fake_rasterization(**kwargs):
        calls.append(kwargs)
        h, w = kwargs["height"], kwargs["width"]
        colors = torch.full((1, h, w, 4), 0.5)
        colors[..., 3] = 2.0  # gsplat's "ED" channel: depth already divided by alpha
        alphas = torch.full((1, h, w, 1), 0.25)
        alphas[0, 0, 0, 0] = 1e-8
        return colors, alphas, {}

    monkeypatch.setattr(gsplat, "rasterization", fake_rasterization)
    g = as64(random_splat(7, seed=14, sh_degree=2))
    camera = orbit_camera(0.0, 0.0, 3.0, width=12, height=8)
    viewmat, K, _ = camera_tensors(camera)
    rgb, depth, alpha = _gsplat.render(g, viewmat, K, (12, 8), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), 1)
    (kw,) = calls
    assert kw["render_mode"] == "RGB+ED" and kw["sh_degree"] == 1 and kw["eps2d"] == 0.3 and kw["near_plane"] == 0.01
    assert kw["rasterize_mode"] == "classic" and (kw["width"], kw["height"]) == (12, 8)
    assert kw["colors"].shape == (7, 9, 3) and kw["viewmats"].shape == (1, 4, 4) and kw["Ks"].shape == (1, 3, 3)
    assert all(kw[k].dtype == torch.float32 for k in ("means", "quats", "scales", "opacities", "colors", "viewmats"))
    torch.testing.assert_close(kw["scales"], torch.exp(g.log_scales).float())
    torch.testing.assert_close(kw["opacities"], torch.sigmoid(g.opacity_logits).float())
    torch.testing.assert_close(kw["backgrounds"], torch.tensor([[0.1, 0.2, 0.3]]))
    assert rgb.shape == (8, 12, 3) and rgb.dtype == torch.float64 and (rgb == 0.5).all()
    assert depth[0, 0] == 0 and (depth.flatten()[1:] == 2.0).all()
    assert alpha.shape == (8, 12) and alpha[0, 1] == 0.25


# ----------------------------------------------------------------------------- conversions and inputs


def test_tensor_round_trip_and_splat_input():
    splat = random_splat(30, seed=10, sh_degree=3)
    g = to_tensors(splat, requires_grad=True)
    assert all(getattr(g, f).requires_grad and getattr(g, f).is_leaf for f in FIELDS)
    assert g.num_gaussians == 30 and g.sh_degree == 3
    assert from_tensors(g).allclose(splat, atol=0)
    g.means.data += 1.0  # the tensors are copies: the frozen splat is untouched
    assert not from_tensors(g).allclose(splat)
    camera = orbit_camera(0.0, 0.0, 3.0, width=32, height=32)
    torch.testing.assert_close(rasterize(splat, camera).rgb, rasterize(to_tensors(splat), camera).rgb)


def test_empty_and_invisible_scenes_render_background_with_zero_gradients():
    camera = orbit_camera(0.0, 0.0, 3.0, width=20, height=10)
    behind = Splat.from_colors(np.array([[0.0, 0.0, 5.0]]), np.array([[1.0, 0, 0]]), 0.1, 0.9)  # behind the camera
    empty = behind.subset(np.zeros(0, dtype=int))
    for splat in (empty, behind):
        g = to_tensors(splat, requires_grad=True)
        out = rasterize(g, camera, background=(0.1, 0.2, 0.3))
        torch.testing.assert_close(out.rgb.detach(), torch.tensor([0.1, 0.2, 0.3]).expand(10, 20, 3))
        assert (out.alpha == 0).all() and (out.depth == 0).all()
        out.rgb.sum().backward()
        assert all((getattr(g, f).grad == 0).all() for f in FIELDS)


# -------------------------------------------------------------------------------------- 8. bad inputs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 0}, "width"),
        ({"width": 100_000}, "width"),
        ({"height": 2.5}, "height"),
        ({"background": (0.0, 1.0)}, "background"),
        ({"background": (0.0, math.nan, 1.0)}, "background"),
        ({"background": "white"}, "background"),
        ({"sh_degree": 2}, "sh_degree"),
        ({"sh_degree": -1}, "sh_degree"),
        ({"backend": "vulkan"}, "backend"),
        ({"backend": "gsplat"}, "backend"),  # CPU tensors
    ],
)
def test_bad_rasterize_arguments_name_the_field(kwargs, field):
    splat = random_splat(5, seed=12, sh_degree=1)
    camera = orbit_camera(0.0, 0.0, 3.0, width=16, height=16)
    with pytest.raises(InvalidInput) as err:
        rasterize(splat, camera, **kwargs)
    assert err.value.field == field


def test_bad_gaussians_and_camera_name_the_field():
    g = to_tensors(random_splat(5, seed=13))
    camera = orbit_camera(0.0, 0.0, 3.0, width=16, height=16)
    cases = {
        "means": {"means": torch.zeros(5, 2)},
        "quats": {"quats": torch.zeros(4, 4)},
        "log_scales": {"log_scales": torch.zeros(5, 3, dtype=torch.float64)},
        "opacity_logits": {"opacity_logits": torch.zeros(5, 1)},
        "sh": {"sh": torch.zeros(5, 5, 3)},
    }
    for field, override in cases.items():
        with pytest.raises(InvalidInput) as err:
            GaussianTensors(**{**{f: getattr(g, f) for f in FIELDS}, **override})
        assert err.value.field == field
        if field not in ("log_scales", "sh"):
            assert str(list(override[field].shape)) in err.value.message
    with pytest.raises(InvalidInput) as err:
        GaussianTensors(**{**{f: getattr(g, f) for f in FIELDS}, "means": np.zeros((5, 3))})
    assert err.value.field == "means"
    with pytest.raises(InvalidInput) as err:
        rasterize(g, "camera")
    assert err.value.field == "camera"
    with pytest.raises(InvalidInput) as err:
        rasterize([1, 2, 3], camera)
    assert err.value.field == "gaussians"


# ------------------------------------------------------------------------------ resolving the sums


def _resolve_by_autograd(sums, background):
    """render()'s last step as plain expressions, for autograd to differentiate."""
    alpha = sums[..., 4]
    rgb = sums[..., :3] + (1.0 - alpha)[..., None] * background
    covered = alpha > _torch_raster.MIN_DEPTH_ALPHA
    depth = torch.where(covered, sums[..., 3] / torch.where(covered, alpha, 1.0), 0.0)
    return rgb, depth, alpha


@pytest.mark.parametrize("used", [("rgb",), ("alpha",), ("depth",), ("rgb", "depth", "alpha")])
def test_the_resolve_step_has_the_gradients_of_its_expressions(used):
    """_Resolve (one backward pass filling the sums' gradient) against autograd of the expressions, with
    uncovered pixels (alpha 0) among them and a background that takes a gradient."""
    gen = torch.Generator().manual_seed(len(used))
    sums = torch.rand(9, 7, 5, generator=gen, dtype=torch.float64)
    sums[2:4, 1:5] = 0.0  # no Gaussian reached these pixels: depth 0 and no depth gradient
    upstream = {"rgb": torch.randn(9, 7, 3, generator=gen, dtype=torch.float64),
                "depth": torch.randn(9, 7, generator=gen, dtype=torch.float64),
                "alpha": torch.randn(9, 7, generator=gen, dtype=torch.float64)}
    grads = []
    for fn in (_torch_raster._Resolve.apply, _resolve_by_autograd):
        s = sums.clone().requires_grad_(True)
        bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
        outs = dict(zip(("rgb", "depth", "alpha"), fn(s, bg), strict=True))
        torch.stack([(outs[k] * upstream[k]).sum() for k in used]).sum().backward()
        grads.append((s.grad, bg.grad))
        values = outs
    expected = _resolve_by_autograd(sums, torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    for got, want in zip(values.values(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)
    (got_s, got_bg), (want_s, want_bg) = grads
    assert want_s.abs().max() > 0
    torch.testing.assert_close(got_s, want_s, rtol=1e-12, atol=1e-12)
    if "rgb" in used:
        torch.testing.assert_close(got_bg, want_bg, rtol=1e-12, atol=1e-12)
    else:
        assert got_bg is None or float(got_bg.abs().max()) == 0.0
