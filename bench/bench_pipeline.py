"""Pipeline benchmarks against the speed targets (2 CPU cores, weight-free backends, the sample photo).

Measured in this one run:

- in process (direct backend calls, the way a library user would chain them): the coarse
  reconstruction (depth + lift) and one enhancement round (render, classical enhancement, depth,
  MVCRM with the photo as trusted view), each after a warm-up call;
- through the gateway: ``make demo`` as a subprocess (the five services and the gateway started on
  loopback, generate with 2 novel views, two "auto" rounds, exports, turntable), its wall time end
  to end and the generate and round times it records in ``metrics.json``.

Targets (the speed issue): coarse <= 2 s, one round through the gateway <= 3 s, generate with 2
novel views <= 8 s, ``make demo`` <= 25 s after setup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from glimpse3d.core.images import decode_image, resize_longest
from glimpse3d.core.splat import Splat
from glimpse3d.gateway.demo import SAMPLE
from glimpse3d.gateway.jobs import DEFAULT_RESOLUTION
from glimpse3d.gateway.pipeline import pick_least_confident_view
from glimpse3d.services.backprojection.api import TrustedView
from glimpse3d.services.backprojection.api import make_backend as make_bp
from glimpse3d.services.depth.api import make_backend as make_depth
from glimpse3d.services.depth.server import default_camera
from glimpse3d.services.diffusion.api import apply_proto_defaults
from glimpse3d.services.diffusion.api import make_backend as make_diffusion
from glimpse3d.services.reconstruction.api import make_backend as make_recon

DEMO_TIMEOUT_S = 900
TARGETS = {"coarse": 2.0, "round": 3.0, "generate": 8.0, "demo": 25.0}


def _in_process(photo: np.ndarray) -> tuple[float, float]:
    """(coarse seconds, round seconds), each the second of two identical calls."""
    depth_b, recon_b = make_depth("silhouette"), make_recon("lift")
    diff_b, bp_b = make_diffusion("classical"), make_bp("mvcrm")
    for b in (depth_b, recon_b, diff_b, bp_b):
        b.load()
    cam = default_camera(photo.shape[1], photo.shape[0])

    def coarse() -> tuple[Splat, Any]:
        d = depth_b.estimate(photo, cam)
        return recon_b.reconstruct(photo, d.depth, d.mask, cam).splat, d

    def round_(splat: Splat, d: Any) -> None:
        view_cam = pick_least_confident_view(splat.means, None, cam, [])
        r = recon_b.render(splat, [view_cam])[0]
        strength, steps, guidance = apply_proto_defaults(0.0, 0, 0.0)
        enhanced = diff_b.enhance((np.clip(r.rgb, 0, 1) * 255).astype(np.uint8), depth=r.depth, alpha=r.alpha,
                                  reference=photo, prompt="", strength=strength, steps=steps, guidance=guidance,
                                  seed=0)
        vd = depth_b.estimate(enhanced, view_cam)
        photo_view = TrustedView(photo, cam, d.mask.astype(np.float32))
        bp_b.refine(splat, enhanced, view_cam, vd.depth, None, None, reference=photo, trusted=[photo_view])

    times: dict[str, list[float]] = {"coarse": [], "round": []}
    for _ in range(2):
        t0 = time.perf_counter()
        splat, d = coarse()
        times["coarse"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        round_(splat, d)
        times["round"].append(time.perf_counter() - t0)
    return times["coarse"][-1], times["round"][-1]


def _demo() -> tuple[float, dict[str, float]]:
    """(wall seconds of ``python -m glimpse3d.gateway.demo``, its recorded timings)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, state = Path(tmp) / "out", Path(tmp) / "state"
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "glimpse3d.gateway.demo", "--out", str(out), "--state", str(state)],
                       check=True, capture_output=True, timeout=DEMO_TIMEOUT_S, env=env)
        wall = time.perf_counter() - t0
        timings = json.loads((out / "metrics.json").read_text())["timings_s"]
    return wall, {k: float(v) for k, v in timings.items()}


def _row(name: str, value: float, target: float | None = None, note: str = "") -> dict:
    if target is not None:
        met = "met" if value <= target else "not met"
        note = f"target <= {target:g} s: {met}" + (f"; {note}" if note else "")
    return {"name": name, "value": value, "unit": "s", "note": note}


def run() -> list[dict]:
    photo = resize_longest(decode_image(SAMPLE.read_bytes()), DEFAULT_RESOLUTION)
    coarse, round_ = _in_process(photo)
    wall, timings = _demo()
    rounds = [v for k, v in sorted(timings.items()) if k.startswith("round_")]
    size = f"{photo.shape[1]}x{photo.shape[0]} px"
    return [
        _row(f"coarse reconstruction, depth + lift, {size} (in process)", coarse, TARGETS["coarse"]),
        _row(f"one enhancement round, {size} (in process)", round_, note="MVCRM with the photo as trusted view"),
        _row("generate with 2 novel views (gateway, make demo)", timings["generate"], TARGETS["generate"]),
        *[_row(f"enhancement round {i + 1} (gateway, make demo)", t, TARGETS["round"]) for i, t in enumerate(rounds)],
        _row("make demo end to end, after setup", wall, TARGETS["demo"],
             "stack start, generate, 2 rounds, every export, turntable"),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<60} {row['value']:8.3f} {row['unit']:<3} {row['note']}")
