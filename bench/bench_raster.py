"""CPU rasterizer benchmark: the compiled kernel ("cpu" backend) against the pure-torch path.

Two parts, each in a fresh child process:

* comparison: forward+backward (and forward alone) of ``rasterize`` with ``backend="torch"`` (the
  reference path, ``_blend.BlendChunk``), ``backend="cpu"`` (the C++/OpenMP kernels: screen-space
  stage, binning and composite), ``cpu_composite`` (the previous CPU path: screen-space stage and
  binning in torch, only the composite compiled) and, when numba is importable, the composite kernel
  in numba (``bench/raster_numba.py``, not shipped, torch screen-space stage and binning), at
  12k Gaussians / 256 px and 100k Gaussians / 512 px. Calls alternate between the backends so that
  each ratio is measured side by side under the same machine load; times are the best of up to
  three calls of each (fewer on a slow machine). The backward pass is driven by
  ``rgb.mean() + depth.mean()``.
  The comparison child also times the composite kernel alone (``CompositeCPU``'s forward and
  backward calls on the scene's tile lists, no autograd, random dL/dsums), best of three.
* memory, per backend at 100k / 512 px: the growth of the child's peak resident set size
  (``ru_maxrss``; Linux reports KiB) across its first forward call and across its first
  forward+backward call, from a baseline taken after a small warm-up render has paid one-time costs
  (lazy initialisation, allocator pools). It counts everything the render allocated on top of what
  the process already held: projected Gaussians, tile lists, work blocks, the autograd graph and the
  gradients.

Threads: torch's default (``torch.get_num_threads()``; 2 on the reference machine) with
``OMP_WAIT_POLICY=PASSIVE`` (set by the Makefile). On a machine shared with other jobs times vary
widely; the ratios much less.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

NUM_GAUSSIANS = 100_000  # the memory figures' scene
SIZE = 512
SCENES = ((12_000, 256), (100_000, 512))  # (Gaussians, image side) of the timing comparison
MAX_SAMPLES = 3  # timed calls of each kind and backend, fewer once TIME_BUDGET_S has passed (per scene)
TIME_BUDGET_S = 60.0
_CHILD_TIMEOUT_S = 600


def random_scene(n: int, size: int, seed: int = 0):
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


def _backends() -> list[str]:
    from glimpse3d.core.render import _cpu_raster

    names = ["torch"]
    if _cpu_raster.available():
        names += ["cpu", "cpu_composite"]
    if importlib.util.find_spec("numba") is not None:
        names.append("numba")
    return names


def _renderer(backend: str):
    """backend -> f(g, camera) -> (rgb, depth, alpha)."""
    import torch

    from glimpse3d.core.render import rasterize
    from glimpse3d.core.render._rasterize import Backend

    if backend in ("torch", "cpu"):
        chosen: Backend = "torch" if backend == "torch" else "cpu"
        return lambda g, camera: tuple(rasterize(g, camera, backend=chosen))
    if backend == "cpu_composite":
        return _composite_only_render
    from bench import raster_numba

    def numba_render(g, camera):
        viewmat = torch.tensor(camera.world_to_camera, dtype=g.dtype)
        K = torch.tensor(camera.K, dtype=g.dtype)
        campos = torch.tensor(camera.position, dtype=g.dtype)
        return raster_numba.render(g, viewmat, K, campos, (camera.width, camera.height),
                                   torch.zeros(3, dtype=g.dtype), g.sh_degree)

    return numba_render


def _composite_only_render(g, camera):
    """The CPU path before the screen-space stage and binning were compiled: both in torch (autograd
    through projection and SH), then the compiled composite kernel."""
    import torch

    from glimpse3d.core.render import _cpu_raster, _torch_raster

    viewmat, K, campos = (torch.tensor(a, dtype=g.dtype) for a in (camera.world_to_camera, camera.K, camera.position))
    width, height, tile = camera.width, camera.height, _torch_raster.TILE_SIZE
    feats, radii = _torch_raster.screen_space(g, viewmat, K, campos, width, height, g.sh_degree)
    b = _torch_raster.bin_gaussians(feats[:, :2].detach(), radii, feats[:, -1].detach(),
                                    (-(-height // tile), -(-width // tile)), tile)
    sums = _cpu_raster.CompositeCPU.apply(feats, b.tiles, b.starts, b.counts, b.ids, width, height, tile)
    alpha = sums[..., 4]
    covered = alpha > _torch_raster.MIN_DEPTH_ALPHA
    depth = torch.where(covered, sums[..., 3] / torch.where(covered, alpha, 1.0), 0.0)
    return sums[..., :3], depth, alpha


def _timers(render):
    import torch

    def forward(g, camera) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            render(g, camera)
        return time.perf_counter() - start

    def forward_backward(g, camera) -> float:
        for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh):
            t.grad = None
        start = time.perf_counter()
        rgb, depth, _ = render(g, camera)
        (rgb.mean() + depth.mean()).backward()
        return time.perf_counter() - start

    return forward, forward_backward


def _warm_up(renders: dict) -> None:
    from glimpse3d.core.render import to_tensors

    small, small_cam = random_scene(2_000, 64, seed=1)
    for render in renders.values():  # one-time costs: lazy initialisation, numba's compilation
        _timers(render)[1](to_tensors(small, requires_grad=True), small_cam)


def _memory_child(backend: str) -> dict:
    """First forward and first forward+backward at NUM_GAUSSIANS / SIZE: peak RSS growth and times."""
    import torch

    from glimpse3d.core.render import to_tensors

    render = _renderer(backend)
    _warm_up({backend: render})
    forward, forward_backward = _timers(render)
    splat, camera = random_scene(NUM_GAUSSIANS, SIZE)
    g = to_tensors(splat, requires_grad=True)
    base = _peak_rss_mib()
    fwd = forward(g, camera)
    peak_forward = _peak_rss_mib() - base
    fwd_bwd = forward_backward(g, camera)
    return {"peak_forward_mib": peak_forward, "peak_forward_backward_mib": _peak_rss_mib() - base,
            "forward_s": fwd, "forward_backward_s": fwd_bwd, "threads": torch.get_num_threads()}


def _composite_kernel_times(g, camera) -> dict[str, float]:
    """The composite kernel alone (``CompositeCPU``'s forward and backward calls) on the scene's
    screen-space Gaussians and tile lists: best of MAX_SAMPLES calls each, in seconds."""
    import torch

    from glimpse3d.core.render import _cpu_raster, _torch_raster

    viewmat, K, campos = (torch.tensor(a, dtype=g.dtype) for a in (camera.world_to_camera, camera.K, camera.position))
    width, height, tile = camera.width, camera.height, _torch_raster.TILE_SIZE
    with torch.no_grad():
        feats, radii = _cpu_raster.screen_space(g, viewmat, K, campos, width, height, g.sh_degree)
        b = _cpu_raster.bin_compiled(feats, radii, (-(-height // tile), -(-width // tile)), tile)
    ext = _cpu_raster.kernel()
    assert ext is not None
    args = (feats.contiguous(), b.tiles, b.starts, b.counts, b.ids, width, height, tile)
    grad = torch.randn(height, width, 5, generator=torch.Generator().manual_seed(0), dtype=feats.dtype)
    fwd, bwd = [], []
    for _ in range(MAX_SAMPLES):
        start = time.perf_counter()
        _, t_final, used = ext.forward(*args)
        middle = time.perf_counter()
        ext.backward(*args, grad, t_final, used)
        fwd.append(middle - start)
        bwd.append(time.perf_counter() - middle)
    return {"fwd": min(fwd), "bwd": min(bwd)}


def _compare_child() -> dict:
    """Best forward and forward+backward times per scene and backend, calls interleaved."""
    import torch

    from glimpse3d.core.render import to_tensors

    renders = {name: _renderer(name) for name in _backends()}
    _warm_up(renders)
    results: dict = {"threads": torch.get_num_threads(), "backends": list(renders), "scenes": {}}
    for n, size in SCENES:
        splat, camera = random_scene(n, size)
        g = to_tensors(splat, requires_grad=True)
        times: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "fwd_bwd": []} for name in renders}
        begin = time.perf_counter()
        while True:
            for name, render in renders.items():
                forward, forward_backward = _timers(render)
                times[name]["fwd"].append(forward(g, camera))
                times[name]["fwd_bwd"].append(forward_backward(g, camera))
            samples = len(times["torch"]["fwd"])
            if samples >= MAX_SAMPLES or time.perf_counter() - begin > TIME_BUDGET_S:
                break
        with torch.no_grad():
            coverage = float(renders["torch"](g, camera)[2].mean())
        results["scenes"][f"{n // 1000}k_{size}"] = {
            "samples": samples, "coverage": coverage,
            **{name: {k: min(v) for k, v in t.items()} for name, t in times.items()},
        }
        if "cpu" in renders:
            results["scenes"][f"{n // 1000}k_{size}"]["composite"] = _composite_kernel_times(g, camera)
    return results


def _run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"rasterizer benchmark child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run() -> list[dict]:
    """Benchmark rows: {"name", "value", "unit", "note"}."""
    start = time.perf_counter()
    cmp = _run_child("compare")
    rows: list[dict] = []
    threads = cmp["threads"]
    if "cpu" not in cmp["backends"]:
        logger.warning("compiled CPU rasterizer not built (make setup): only the torch path is measured")
    if "numba" not in cmp["backends"]:
        logger.info("numba not importable: its comparison rows are left out")
    for key, r in cmp["scenes"].items():
        scene = f"{key.replace('_', ' Gaussians (SH 3), ')} px, {threads} threads, best of {r['samples']}"
        for name in cmp["backends"]:
            for kind, label in (("fwd", "forward, no grad"), ("fwd_bwd", "forward+backward")):
                rows.append({"name": f"raster_{name}_{kind}_{key}", "value": r[name][kind], "unit": "s",
                             "note": f"backend {name}: {label}, {scene}; mean alpha {r['coverage']:.2f}"})
        for name in cmp["backends"]:
            if name == "torch":
                continue
            for kind in ("fwd", "fwd_bwd"):
                rows.append({"name": f"raster_speedup_{name}_{kind}_{key}", "value": r["torch"][kind] / r[name][kind],
                             "unit": "x", "note": f"torch time / {name} time, {kind}, same run, calls interleaved"})
        if "composite" in r:
            for kind, label in (("fwd", "forward"), ("bwd", "backward")):
                rows.append({"name": f"raster_cpu_composite_kernel_{kind}_{key}", "value": r["composite"][kind],
                             "unit": "s", "note": f"the composite kernel's {label} call alone (no autograd), "
                                                  f"{key}, {threads} threads, best of {MAX_SAMPLES}; random dL/dsums"})
        if "cpu_composite" in cmp["backends"]:
            for kind in ("fwd", "fwd_bwd"):
                rows.append({"name": f"raster_speedup_fused_stages_{kind}_{key}",
                             "value": r["cpu_composite"][kind] / r["cpu"][kind], "unit": "x",
                             "note": f"cpu_composite time / cpu time, {kind}: compiling the screen-space stage "
                                     "and binning, same run, calls interleaved"})
    for name in [b for b in cmp["backends"] if b in ("torch", "cpu")]:
        m = _run_child("memory", name)
        note = f"backend {name}, {NUM_GAUSSIANS // 1000}k Gaussians, {SIZE} px, fresh process after a small warm-up"
        rows += [
            {"name": f"raster_{name}_peak_rss_forward", "value": m["peak_forward_mib"], "unit": "MiB",
             "note": f"growth of ru_maxrss over the first forward pass; {note}"},
            {"name": f"raster_{name}_peak_rss_forward_backward", "value": m["peak_forward_backward_mib"], "unit": "MiB",
             "note": f"growth of ru_maxrss over forward + backward (same baseline); {note}"},
        ]
    logger.info("rasterizer benchmark finished in %.1f s", time.perf_counter() - start)
    return rows


def _print_table(rows: list[dict]) -> None:
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']:>10.4g} {r['unit']:<4} {r['note']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench.raster_numba
        result = _compare_child() if sys.argv[2] == "compare" else _memory_child(sys.argv[3])
        print(json.dumps(result))
    else:
        logging.basicConfig(level=logging.INFO)
        _print_table(run())
