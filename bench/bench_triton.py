"""Triton's cost per call: each learned backend called in-process and through its Triton model,
side by side in one run, with the same tiny weights and inputs (issue 6).

A local tritonserver (the nvidia-pytriton wheel, `make triton`) serves deploy/triton on the CPU. For
every model the suite times the in-process backend and the service's ``triton`` backend on the same
request; ``triton / direct`` is what moving a model behind Triton costs (tensor encoding, gRPC,
the Python backend's IPC). With tiny models the model work is small, so the ratio is an upper
bound of production's, where the model dominates; ``triton - direct`` is the fixed cost per call.
Skipped (one row saying why) when the wheel is not installed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.core.synthetic import render_image, textured_object
from glimpse3d.core.tinymodels import write_all
from glimpse3d.core.triton.server import LocalTriton, find_install, prepare_repository

SIZE = 64
REPEATS = 5
OPTIONS = {"reconstruction_triposr": {"grid_resolution": 48, "max_gaussians": 3000},
           "multiview_zero123": {"steps": 2}, "diffusion_sdxl": {"resolution": 64}}


def _median_s(fn: Callable[[], Any]) -> float:
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pair(service: str, local: str, model: str, model_dir: Path, url: str) -> tuple[Any, Any]:
    registry = BackendRegistry(service)
    direct = registry.create(local, context={"model_dir": model_dir, "device": "cpu"}, **OPTIONS.get(model, {}))
    remote = registry.create("triton", url=url, model=model)
    direct.load()
    remote.load()
    return direct, remote


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            find_install(work)
        except FailedPrecondition as err:
            return [{"name": "triton suite skipped", "value": 0, "unit": "", "note": err.message}]
        model_dir = work / "models"
        write_all(model_dir, seed=0)
        models = ["depth_dpt", "reconstruction_triposr", "diffusion_sdxl", "multiview_zero123"]
        repo = prepare_repository(work / "repo", models=models, cpu=True, options=OPTIONS)
        cam = orbit_camera(0.0, 0.0, 2.5, width=SIZE, height=SIZE)
        img = (np.clip(render_image(textured_object(), cam), 0, 1) * 255).astype(np.uint8)[..., :3]
        views = [orbit_camera(a, 10.0, 2.5, width=SIZE, height=SIZE) for a in (90.0, 180.0)]
        rows: list[dict] = []
        with LocalTriton(repo, work, model_dir) as server:
            depth_d, depth_r = _pair("depth", "dpt", "depth_dpt", model_dir, server.url)
            est = depth_d.estimate(img, cam)
            calls = {
                "depth_dpt": (depth_d, depth_r, lambda b: b.estimate(img, cam)),
                "reconstruction_triposr": (*_pair("reconstruction", "triposr", "reconstruction_triposr", model_dir,
                                                  server.url),
                                           lambda b: b.reconstruct(img, est.depth, est.mask, cam, seed=1)),
                "diffusion_sdxl": (*_pair("diffusion", "sdxl", "diffusion_sdxl", model_dir, server.url),
                                   lambda b: b.enhance(img, depth=est.depth, alpha=est.mask, reference=img,
                                                       prompt="", strength=0.5, steps=2, guidance=5.0, seed=1)),
                "multiview_zero123": (*_pair("multiview", "zero123", "multiview_zero123", model_dir, server.url),
                                      lambda b: b.generate(img, est.mask, cam, None, views, seed=1)),
            }
            for model, (direct, remote, call) in calls.items():
                d = _median_s(lambda call=call, direct=direct: call(direct))
                r = _median_s(lambda call=call, remote=remote: call(remote))
                rows.append({"name": f"{model} direct (tiny, {SIZE} px)", "value": d * 1e3, "unit": "ms",
                             "note": f"median of {REPEATS}"})
                rows.append({"name": f"{model} via Triton", "value": r * 1e3, "unit": "ms"})
                rows.append({"name": f"{model} triton / direct", "value": r / d, "unit": "x",
                             "note": "same weights and inputs, one run"})
                rows.append({"name": f"{model} triton - direct", "value": (r - d) * 1e3, "unit": "ms",
                             "note": "fixed cost per call (tensors, gRPC, Python backend IPC)"})
        return rows
