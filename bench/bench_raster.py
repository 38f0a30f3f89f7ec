"""CPU rasterizer benchmark: 100k Gaussians at 512x512, forward and forward+backward.

Everything runs in a fresh child process so that the peak-memory figure belongs to the render
alone. Peak memory is the growth of the child's peak resident set size (``ru_maxrss``; Linux reports
KiB) across the first forward call and across the first forward+backward call, measured from the
same baseline taken after a small warm-up render has paid one-time costs (lazy initialisation,
allocator pools). It counts everything the render allocated on top of what the process already held:
projected Gaussians, tile lists, work blocks, the autograd graph and the gradients.
Times are wall clock, the best of up to three calls (fewer on a slow machine), with torch's default
thread count; on a machine shared with other jobs they vary widely.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time

logger = logging.getLogger(__name__)

NUM_GAUSSIANS = 100_000
SIZE = 512
MAX_SAMPLES = 3  # timed calls of each kind, fewer once TIME_BUDGET_S has passed
TIME_BUDGET_S = 45.0
_CHILD_TIMEOUT_S = 600


def _scene(n: int, size: int, seed: int = 0):
    """A random degree-3 splat filling a unit ball, seen by an orbit camera 3 units away."""
    import numpy as np

    from glimpse3d.core.cameras import orbit_camera
    from glimpse3d.core.splat import Splat

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    radius = rng.uniform(0.0, 1.0, (n, 1)) ** (1 / 3)
    splat = Splat(
        means=(direction / np.linalg.norm(direction, axis=1, keepdims=True) * radius).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=np.log(rng.uniform(0.004, 0.02, (n, 3))).astype(np.float32),
        opacity_logits=rng.normal(0.0, 2.0, n).astype(np.float32),
        sh=(rng.normal(size=(n, 16, 3)) * 0.2).astype(np.float32),
    )
    return splat, orbit_camera(30.0, 20.0, 3.0, width=size, height=size)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child() -> dict:
    """Runs in the child process: memory from the first calls, times as the best of all calls."""
    import torch

    from glimpse3d.core.render import rasterize, to_tensors

    def forward(g, camera) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            rasterize(g, camera)
        return time.perf_counter() - start

    def forward_backward(g, camera) -> float:
        for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh):
            t.grad = None
        start = time.perf_counter()
        out = rasterize(g, camera)
        (out.rgb.mean() + out.depth.mean()).backward()
        return time.perf_counter() - start

    small, small_cam = _scene(2_000, 64, seed=1)
    forward_backward(to_tensors(small, requires_grad=True), small_cam)  # warm-up
    splat, camera = _scene(NUM_GAUSSIANS, SIZE)
    g = to_tensors(splat, requires_grad=True)
    begin = time.perf_counter()
    base = _peak_rss_mib()
    fwd = [forward(g, camera)]
    peak_forward = _peak_rss_mib() - base
    fwd_bwd = [forward_backward(g, camera)]
    peak_train = _peak_rss_mib() - base
    while len(fwd) < MAX_SAMPLES and time.perf_counter() - begin < TIME_BUDGET_S:
        fwd.append(forward(g, camera))
        fwd_bwd.append(forward_backward(g, camera))
    with torch.no_grad():
        coverage = float(rasterize(g, camera).alpha.mean())
    return {
        "forward_s": min(fwd),
        "forward_backward_s": min(fwd_bwd),
        "samples": len(fwd),
        "peak_forward_mib": peak_forward,
        "peak_forward_backward_mib": peak_train,
        "coverage": coverage,
        "threads": torch.get_num_threads(),
    }


def run() -> list[dict]:
    """Benchmark rows: {"name", "value", "unit", "note"}."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child"], capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, check=False
    )
    logger.info("rasterizer benchmark child finished in %.1f s", time.perf_counter() - start)
    if proc.returncode != 0:
        raise RuntimeError(f"rasterizer benchmark child failed:\n{proc.stderr[-4000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    scene = f"{NUM_GAUSSIANS // 1000}k Gaussians (SH 3), {SIZE}x{SIZE}, CPU torch path, {r['threads']} threads"
    return [
        {"name": "raster_cpu_forward", "value": r["forward_s"], "unit": "s",
         "note": f"{scene}, no grad, best of {r['samples']}; mean alpha {r['coverage']:.2f}"},
        {"name": "raster_cpu_forward_backward", "value": r["forward_backward_s"], "unit": "s",
         "note": f"{scene}, best of {r['samples']}"},
        {"name": "raster_cpu_peak_rss_forward", "value": r["peak_forward_mib"], "unit": "MiB",
         "note": "growth of ru_maxrss over the forward pass, fresh process after a small warm-up"},
        {"name": "raster_cpu_peak_rss_forward_backward", "value": r["peak_forward_backward_mib"], "unit": "MiB",
         "note": "growth of ru_maxrss over forward + backward (same baseline)"},
    ]


def _print_table(rows: list[dict]) -> None:
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']:>10.4g} {r['unit']:<4} {r['note']}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(_child()))
    else:
        logging.basicConfig(level=logging.INFO)
        _print_table(run())
