"""Triton going away under a running stack: jobs retry or fail with a clear status, never get lost.

The diffusion service runs its ``triton`` backend against a tritonserver that the test kills and
restarts on the same ports (the other services use their weight-free defaults, so only the
enhancement stage depends on Triton). A short ``retry_s`` keeps the failure case quick.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
from triton_server import triton_for_tests

from glimpse3d.core.formats import read_ply
from glimpse3d.core.triton.server import free_port
from glimpse3d.gateway import demo
from glimpse3d.gateway.stack import start_stack
from glimpse3d.services.diffusion.backends.triton import TritonDiffusionBackend

RETRY_S = 10.0


def cli(addr: str, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glimpse3d.gateway.cli", "--addr", addr, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_cli(addr: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glimpse3d.gateway.cli", "--addr", addr, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_backend_load_waits_until_the_model_is_ready(tiny_model_dir, tmp_path):
    """A service's load() (and so its SERVING health) waits for Triton: here the server starts late."""
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    backend = TritonDiffusionBackend(url=f"127.0.0.1:{ports['grpc_port']}", ready_timeout_s=300.0)
    loaded = threading.Event()
    thread = threading.Thread(target=lambda: (backend.load(), loaded.set()), daemon=True)
    thread.start()
    time.sleep(1.5)
    assert not loaded.is_set() and backend.ready is False
    with triton_for_tests(tmp_path / "triton", tiny_model_dir, models=["diffusion_sdxl"], **ports):
        assert loaded.wait(60), "load() did not return once the model was ready"
        assert backend.ready is True
        out = backend.enhance(np.full((64, 64, 3), 128, np.uint8), depth=None, alpha=None, reference=None,
                              prompt="", strength=0.5, steps=2, guidance=5.0, seed=1)
        assert out.shape == (64, 64, 3)
    thread.join(5)


def test_triton_stopping_mid_job_retries_or_fails_clearly_and_loses_nothing(tiny_model_dir, tmp_path):
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    with triton_for_tests(tmp_path / "triton", tiny_model_dir, models=["diffusion_sdxl"], **ports) as triton:
        options = {"url": triton.url, "model": "diffusion_sdxl", "retry_s": RETRY_S}
        service_env = {"diffusion": {"GLIMPSE3D_BACKEND": "triton", "GLIMPSE3D_BACKEND_OPTIONS": json.dumps(options)}}
        with start_stack(tmp_path / "stack", env={"GLIMPSE3D_DEVICE": "cpu"}, service_env=service_env,
                         timeout_s=180.0) as stack:
            addr = stack.gateway_addr
            gen = cli(addr, "--quiet", "generate", str(demo.SAMPLE), "--resolution", "64",
                      "--out", str(tmp_path / "v"))
            assert gen.returncode == 0, gen.stderr
            job = gen.stdout.splitlines()[0]

            # 1. Triton dies while a round is running and is back within the retry window: the round lands.
            enhance = start_cli(addr, "enhance", job, "--azimuth", "90")
            time.sleep(1.0)
            triton.kill()
            time.sleep(2.0)
            triton.start()
            out, err = enhance.communicate(timeout=600)
            assert enhance.returncode == 0, err
            assert f"{job}/versions/2" in out
            log = (tmp_path / "stack" / "diffusion.log").read_text(errors="replace")
            assert "Triton unavailable, retrying" in log

            # 2. Triton stays down: the round fails with UNAVAILABLE naming the model; the job keeps its versions.
            triton.kill()
            started = time.monotonic()
            failed = cli(addr, "enhance", job, "--azimuth", "180")
            assert failed.returncode != 0
            assert "the round failed" in failed.stderr and "diffusion_sdxl" in failed.stderr, failed.stderr
            assert "unavailable" in failed.stderr.lower(), failed.stderr
            assert time.monotonic() - started < 300
            assert job in cli(addr, "jobs").stdout
            exported = cli(addr, "export", f"{job}/versions/2", "--format", "ply", "--out", str(tmp_path / "v2.ply"))
            assert exported.returncode == 0, exported.stderr
            assert read_ply(tmp_path / "v2.ply").num_gaussians > 0

            # 3. Triton is back: the same job takes its next round.
            triton.start()
            again = cli(addr, "enhance", job, "--azimuth", "270")
            assert again.returncode == 0, again.stderr
            assert f"{job}/versions/3" in again.stdout
