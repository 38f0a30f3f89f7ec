"""`make gpu-check` (bench/gpu_check.py) on a machine without CUDA: every GPU step reports
"no CUDA device", the result JSON has its declared structure, time limits hold, and tests/gpu is
collected and skipped with that reason."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from bench import gpu_check

without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
LEARNED = {"backprojection-mvcrm", "depth-dpt", "diffusion-sdxl", "multiview-zero123", "reconstruction-lgm",
           "reconstruction-triposr"}


@without_cuda
def test_cpu_run_skips_every_gpu_step_and_writes_the_result(tmp_path: Path, capsys):
    rc = gpu_check.main(["--out", str(tmp_path), "--budget", "120"])
    assert rc == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result) >= {"schema", "started", "wall_s", "budget_s", "require_gpu", "cuda", "gpu", "environment",
                           "steps", "bench", "ok", "summary"}
    assert result["ok"] is True and result["cuda"] is False and result["gpu"] is None and result["bench"] == []
    assert result["environment"]["cuda_available"] is False and result["environment"]["torch"] == torch.__version__
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == list(gpu_check.STEP_NAMES)
    assert steps["environment"]["status"] == "pass" and (tmp_path / "environment.log").exists()
    for name in ("gsplat_build", "pytest_gpu", "bench"):
        assert (steps[name]["status"], steps[name]["reason"]) == ("skipped", "no CUDA device"), name
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "ok: no CUDA device: GPU steps skipped" in out


@without_cuda
def test_require_gpu_exits_2_and_a_spent_budget_skips(tmp_path: Path):
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "0.5", "--require-gpu"]) == 2
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False and result["require_gpu"] is True
    env_step = result["steps"][0]
    assert env_step["status"] == "skipped" and "budget" in env_step["reason"]
    assert all(s["status"] == "skipped" for s in result["steps"])


def test_a_command_past_its_limit_is_killed_with_its_children(tmp_path: Path):
    start = time.perf_counter()
    grandchild = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    child = f"import subprocess, sys, time; subprocess.Popen({grandchild}); time.sleep(60)"
    outcome = gpu_check.run_command([sys.executable, "-c", child], 1.5, tmp_path / "slow.log")
    assert outcome["timed_out"] and outcome["rc"] != 0
    assert time.perf_counter() - start < 15
    assert gpu_check.step_limit(300.0, 42.0) == 42.0 and gpu_check.step_limit(300.0, -3.0) == 0.0


@without_cuda
def test_gpu_tests_are_collected_and_skipped_without_cuda(tmp_path: Path):
    """The check's own pytest command line: tests/gpu skip with the reason the check looks for, the CUDA
    tests of tests/unit exist (a renamed one would fail the step on a GPU machine)."""
    step = next(s for s in gpu_check.steps() if s.name == "pytest_gpu")
    ctx = {"out": tmp_path, "env": {"cuda_available": False}}
    proc = subprocess.run(step.argv(ctx), cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    junit = tmp_path / "pytest.xml"
    tests = gpu_check.parse_junit(junit)
    cases = {f"{c.get('classname')}::{c.get('name')}": c for c in ET.parse(junit).getroot().iter("testcase")}
    ids = list(cases)
    for node in gpu_check.UNIT_CUDA_TESTS:
        path, name = node.split("::")
        assert f"{path.removesuffix('.py').replace('/', '.')}::{name}" in cases, node
    gpu = [i for i in ids if i.startswith("tests.gpu.") or i.startswith("gpu.")]
    assert len(gpu) >= 20 and tests["failed"] == 0
    skips = {i: cases[i].find("skipped") for i in gpu}
    assert all(s is not None and (s.get("message") or "").endswith("no CUDA device") for s in skips.values())
    assert tests["skip_reasons"]["no CUDA device"] == len(gpu)
    for backend in LEARNED:  # every learned backend on CUDA, in float32 and in float16
        assert any(f"test_float32_on_cuda_matches_cpu[{backend}]" in i for i in ids), backend
        assert any(f"test_float16_on_cuda_runs[{backend}]" in i for i in ids), backend
        assert any(f"test_same_seed_same_output_on_cuda[{backend}]" in i for i in ids), backend
    assert sum("test_gsplat_matches_the_torch_path" in i for i in ids) >= 2
    # With CUDA seen by the probe, such skips would make the step fail rather than pass.
    ctx["env"] = {"cuda_available": True}
    entry = gpu_check._finish_step(step, {"rc": 0, "timed_out": False, "seconds": 1.0, "stdout": ""}, ctx)
    assert entry["status"] == "fail" and "no CUDA device" in entry["reason"]
