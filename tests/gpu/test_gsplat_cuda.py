"""gsplat's CUDA rasterizer (``rasterize(..., backend="gsplat")``) against the pure-torch reference path:
values and gradients at two scene sizes, the torch path itself on CUDA, and half-precision Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.render import GaussianTensors, rasterize, to_tensors
from glimpse3d.core.splat import Splat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")
# (Gaussians, width, height, SH degree): a small scene and one with heavy overlap and many tiles.
SCENES = [(2_000, 96, 80, 3), (30_000, 320, 240, 3)]
BACKGROUND = (0.2, 0.3, 0.4)


def _splat(n: int, seed: int, sh_degree: int) -> Splat:
    rng = np.random.default_rng(seed)
    sh = rng.normal(0.0, 0.25, (n, (sh_degree + 1) ** 2, 3))
    sh[:, 0] = rng.normal(0.0, 1.0, (n, 3))
    return Splat(
        means=rng.uniform(-0.7, 0.7, (n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=np.log(rng.uniform(0.01, 0.08, (n, 3))).astype(np.float32),
        opacity_logits=rng.normal(0.5, 1.5, n).astype(np.float32),
        sh=sh.astype(np.float32),
    )


def _loss(out) -> torch.Tensor:
    # Weighted so that every channel and pixel position contributes a different gradient.
    h, w = out.alpha.shape
    ramp = torch.linspace(0.5, 1.5, h * w, device=out.alpha.device).reshape(h, w)
    return (out.rgb * ramp[..., None]).sum() + (out.alpha * ramp).sum() + 0.1 * (out.depth * out.alpha).sum()


def _grads(g: GaussianTensors) -> dict[str, torch.Tensor]:
    return {f: getattr(g, f).grad.detach().cpu() for f in FIELDS}  # pyright: ignore[reportOptionalMemberAccess]


@pytest.mark.parametrize(("n", "width", "height", "sh_degree"), SCENES)
def test_gsplat_matches_the_torch_path_values_and_gradients(n, width, height, sh_degree):
    splat = _splat(n, seed=n, sh_degree=sh_degree)
    camera = orbit_camera(40.0, 20.0, 2.5, width=width, height=height)
    g_ref = to_tensors(splat, requires_grad=True)
    g_gpu = to_tensors(splat, device="cuda", requires_grad=True)
    ref = rasterize(g_ref, camera, background=BACKGROUND, backend="torch")
    gpu = rasterize(g_gpu, camera, background=BACKGROUND, backend="gsplat")
    assert gpu.rgb.device.type == "cuda" and gpu.rgb.shape == (height, width, 3)
    assert all(bool(torch.isfinite(t).all()) for t in gpu)
    # A Gaussian right at the 1/255 cut-off may be kept by one and dropped by the other (fast-math exp on
    # the GPU): that moves a pixel by < 1/255 per such Gaussian, and the depth only where alpha is tiny.
    torch.testing.assert_close(gpu.rgb.detach().cpu(), ref.rgb.detach(), rtol=0, atol=1e-2)
    torch.testing.assert_close(gpu.alpha.detach().cpu(), ref.alpha.detach(), rtol=0, atol=1e-2)
    assert float((gpu.rgb.detach().cpu() - ref.rgb.detach()).abs().mean()) < 1e-3
    solid = (ref.alpha > 0.5) & (gpu.alpha.detach().cpu() > 0.5)
    assert int(solid.sum()) > width * height // 10
    torch.testing.assert_close(gpu.depth.detach().cpu()[solid], ref.depth.detach()[solid], rtol=2e-3, atol=2e-3)
    _loss(ref).backward()
    _loss(gpu).backward()
    ref_grads, gpu_grads = _grads(g_ref), _grads(g_gpu)
    for f in FIELDS:
        a, b = gpu_grads[f], ref_grads[f]
        assert bool(torch.isfinite(a).all()), f
        rel = float((a - b).norm() / b.norm())
        assert rel < 3e-2, f"{f}: relative gradient difference {rel:.3g}"


def test_torch_path_on_cuda_matches_cpu():
    """The reference path is device-agnostic: on CUDA tensors it gives the CPU result to float32 rounding."""
    splat = _splat(3_000, seed=5, sh_degree=2)
    camera = orbit_camera(-30.0, 10.0, 2.6, width=128, height=96)
    g_cpu = to_tensors(splat, requires_grad=True)
    g_gpu = to_tensors(splat, device="cuda", requires_grad=True)
    cpu = rasterize(g_cpu, camera, background=BACKGROUND, backend="torch")
    gpu = rasterize(g_gpu, camera, background=BACKGROUND, backend="torch")
    for name, a, b in zip(("rgb", "depth", "alpha"), gpu, cpu, strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-4, atol=1e-4, msg=name)
    _loss(cpu).backward()
    _loss(gpu).backward()
    for f, a in _grads(g_gpu).items():
        b = _grads(g_cpu)[f]
        assert float((a - b).norm() / b.norm()) < 1e-3, f


def test_auto_backend_and_half_precision_gaussians_on_cuda():
    """``auto`` takes gsplat on CUDA; float16 Gaussians render (gsplat computes in float32) and come back
    in float16, close to the float32 render."""
    splat = _splat(2_000, seed=11, sh_degree=1)
    camera = orbit_camera(10.0, 5.0, 2.5, width=96, height=96)
    g32 = to_tensors(splat, device="cuda")
    g16 = GaussianTensors(**{f: getattr(g32, f).half() for f in FIELDS})
    auto = rasterize(g32, camera, background=BACKGROUND)
    explicit = rasterize(g32, camera, background=BACKGROUND, backend="gsplat")
    for a, b in zip(auto, explicit, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    half = rasterize(g16, camera, background=BACKGROUND)
    assert half.rgb.dtype == torch.float16 and bool(torch.isfinite(half.rgb).all())
    torch.testing.assert_close(half.rgb.float(), auto.rgb, rtol=0, atol=3e-2)
    torch.testing.assert_close(half.alpha.float(), auto.alpha, rtol=0, atol=3e-2)
