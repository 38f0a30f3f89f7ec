"""The whole pipeline with every learned backend selected, each loading a tiny random model through
its real loading code, across the six real processes on loopback (the CLI drives the gateway).

The tiny models' outputs are meaningless; what this proves is that every learned backend is
selectable by configuration in the running services and that the pipeline runs end to end with all
of them: generate (with novel views), one enhancement round, export. Reconstruction has two learned
backends, so the pipeline runs once with each: ``triposr`` from the photo alone, and ``lgm`` with
the three extra views the gateway first asks ``zero123`` for (``GLIMPSE3D_RECONSTRUCTION_VIEWS=3``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from glimpse3d.core.formats import read_ply
from glimpse3d.core.tinymodels import write_all
from glimpse3d.gateway import demo
from glimpse3d.gateway.stack import start_stack


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")
    names = write_all(model_dir, seed=0)
    return model_dir, names


# Options that keep the tiny models small on 2 CPU cores (production defaults work at 512-1024 px).
RECONSTRUCTION_OPTIONS = {"triposr": {"grid_resolution": 48, "max_gaussians": 3000}, "lgm": {}}


def _service_env(reconstruction: str) -> dict[str, dict[str, str]]:
    def backend(name: str, **options: object) -> dict[str, str]:
        return {"GLIMPSE3D_BACKEND": name, "GLIMPSE3D_BACKEND_OPTIONS": json.dumps(options)}

    return {
        "depth": backend("dpt", model="depth/dpt-hybrid-midas"),
        "reconstruction": backend(reconstruction, **RECONSTRUCTION_OPTIONS[reconstruction]),
        "multiview": backend("zero123", steps=2),
        "diffusion": backend("sdxl", resolution=64),
        # A tiny random CLIP scores arbitrary similarities; the lowest threshold keeps the run from
        # depending on them (rejection is tested in test_learned_clip.py).
        "backprojection": {"GLIMPSE3D_BACKEND_OPTIONS": json.dumps(
            {"clip_model": "clip/clip-vit-base-patch32", "clip_threshold": 0.0})},
    }


def _cli(addr: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glimpse3d.gateway.cli", "--addr", addr, *args],
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("reconstruction", ["triposr", "lgm"])
def test_pipeline_with_every_learned_backend(tiny_models, tmp_path, reconstruction):
    model_dir, names = tiny_models
    for group in ("depth/", "reconstruction/", "multiview/", "diffusion/", "clip/"):
        assert any(n.startswith(group) for n in names), f"no tiny model written for {group}"
    env = {"GLIMPSE3D_MODEL_DIR": str(model_dir), "GLIMPSE3D_DEVICE": "cpu",
           "GLIMPSE3D_RECONSTRUCTION_VIEWS": "3" if reconstruction == "lgm" else "0"}
    with start_stack(tmp_path / "stack", env=env, service_env=_service_env(reconstruction), timeout_s=300.0) as stack:
        logs = {}
        out = tmp_path / "out"
        gen = _cli(stack.gateway_addr, "--quiet", "generate", str(demo.SAMPLE), "--views", "1", "--enhance", "1",
                   "--resolution", "64", "--out", str(out))
        for name in ("depth", "reconstruction", "multiview", "diffusion", "backprojection"):
            logs[name] = (tmp_path / "stack" / f"{name}.log").read_text(errors="replace")
        assert gen.returncode == 0, gen.stderr + "\n".join(f"--- {k}\n{v[-3000:]}" for k, v in logs.items())
    splat = read_ply(out / "model.ply")
    assert splat.num_gaussians > 0
    for fmt in ("splat", "glb"):
        assert (out / f"model.{fmt}").stat().st_size > 0
    # Each service really served its learned backend (the servers log the backend they created).
    for service, backend in (("depth", "dpt"), ("reconstruction", reconstruction), ("multiview", "zero123"),
                             ("diffusion", "sdxl")):
        assert f'"backend": "{backend}"' in logs[service] or f"backend={backend}" in logs[service], (
            f"{service} did not report backend {backend}:\n{logs[service][-2000:]}")
