"""GPU rasterizer benchmark: gsplat's fused CUDA kernels (``rasterize(..., backend="gsplat")``) against
the pure-torch reference path on the same GPU.

Runs only where the bench device (``python -m bench --device``, bench/device.py) is CUDA; elsewhere it
logs ``no CUDA device: skipped`` and reports no rows. Scenes are random degree-3 splats filling a unit
ball seen from 3 units away: 100k Gaussians at 512 px (both backends, calls interleaved, so the ratio
is measured side by side) and 1M Gaussians at 1024 px (gsplat only; the torch path's tile lists would
take minutes there). Times are wall clock with ``torch.cuda.synchronize()`` around each call, the best
of up to ``MAX_SAMPLES`` after one warm-up call (gsplat's first call also loads its compiled kernels);
peak memory is the growth of ``torch.cuda.max_memory_allocated`` over one forward+backward call.
The backward pass is driven by ``rgb.mean() + depth.mean()``, as in bench_raster.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from bench.bench_raster import random_scene  # the same random degree-3 scene as the CPU comparison

Backend = Literal["gsplat", "torch"]

logger = logging.getLogger(__name__)

# (Gaussians, image side, backends): the torch path only where it finishes in seconds.
SCENES: tuple[tuple[int, int, tuple[Backend, ...]], ...] = (
    (100_000, 512, ("gsplat", "torch")), (1_000_000, 1024, ("gsplat",)))
MAX_SAMPLES = 5
TIME_BUDGET_S = 30.0  # per scene, after the warm-up


def _timed(fn) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _measure(g, camera, backend: Backend) -> dict[str, float]:
    """One warm-up, then the best forward and forward+backward times and the backward's peak memory."""
    import torch

    from glimpse3d.core.render import rasterize

    def forward() -> None:
        with torch.no_grad():
            rasterize(g, camera, backend=backend)

    def forward_backward() -> None:
        for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh):
            t.grad = None
        out = rasterize(g, camera, backend=backend)
        (out.rgb.mean() + out.depth.mean()).backward()

    return {"fwd": _timed(forward), "fwd_bwd": _timed(forward_backward)}


def _peak_mib(g, camera, backend: Backend) -> float:
    import torch

    from glimpse3d.core.render import rasterize

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = rasterize(g, camera, backend=backend)
    (out.rgb.mean() + out.depth.mean()).backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run() -> list[dict]:
    """Benchmark rows: {"name", "value", "unit", "note"}; none without a CUDA device."""
    from bench.device import bench_device

    if bench_device() != "cuda":
        logger.warning("bench_gsplat: no CUDA device: skipped")
        return []
    import torch

    from glimpse3d.core.render import to_tensors

    gpu = torch.cuda.get_device_name()
    rows: list[dict] = []
    for n, size, backends in SCENES:
        splat, camera = random_scene(n, size)
        g = to_tensors(splat, device="cuda", requires_grad=True)
        key = f"{n // 1000}k_{size}"
        for backend in backends:  # warm-up: kernel loading, allocator pools
            _measure(g, camera, backend)
        best: dict[str, dict[str, float]] = {b: {"fwd": float("inf"), "fwd_bwd": float("inf")} for b in backends}
        begin, samples = time.perf_counter(), 0
        while samples < MAX_SAMPLES and (samples == 0 or time.perf_counter() - begin < TIME_BUDGET_S):
            for backend in backends:
                for kind, value in _measure(g, camera, backend).items():
                    best[backend][kind] = min(best[backend][kind], value)
            samples += 1
        scene = f"{n // 1000}k Gaussians (SH 3), {size} px, {gpu}, best of {samples}"
        for backend in backends:
            for kind, label in (("fwd", "forward, no grad"), ("fwd_bwd", "forward+backward")):
                rows.append({"name": f"raster_cuda_{backend}_{kind}_{key}", "value": best[backend][kind], "unit": "s",
                             "note": f"backend {backend} on CUDA: {label}, {scene}"})
            peak = _peak_mib(g, camera, backend)
            rows.append({"name": f"raster_cuda_{backend}_peak_mem_fwd_bwd_{key}", "value": peak, "unit": "MiB",
                         "note": f"growth of max_memory_allocated over forward+backward; {scene}"})
        if "torch" in backends:
            for kind in ("fwd", "fwd_bwd"):
                rows.append({"name": f"raster_cuda_speedup_gsplat_{kind}_{key}",
                             "value": best["torch"][kind] / best["gsplat"][kind], "unit": "x",
                             "note": f"torch path time / gsplat time on the same GPU, {kind}, calls interleaved"})
        del g
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for r in run():
        print(f"{r['name']:<44} {r['value']:>10.4g} {r['unit']:<4} {r['note']}")
