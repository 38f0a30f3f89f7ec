"""`make gpu-check`: everything that needs an NVIDIA GPU, in one run with a hard time bound.

Meant for a machine with a GPU, once, from a checkout where ``make setup`` has run; on a machine without
CUDA every GPU step reports ``skipped: no CUDA device`` and the run exits 0 (``--require-gpu`` makes
that exit 2, for use where a GPU is expected). Steps, each in its own process group with its own
time limit, all within ``--budget`` seconds (default 480, 8 minutes):

1. ``environment``: torch, CUDA, the device, the driver (nvidia-smi), gsplat and nvcc versions.
2. ``gsplat_build``: loads gsplat's CUDA extension. gsplat ships its kernels as source and compiles
   them on first use with the CUDA toolkit (nvcc); this is done here, for the device's architecture
   only (``TORCH_CUDA_ARCH_LIST``), so that the later steps find it built (torch's extension cache).
3. ``pytest_gpu``: tests/gpu (gsplat against the torch rasterizer, every learned backend on CUDA in
   float32 against the CPU and in float16) and the CUDA tests of tests/unit.
4. ``bench``: ``python -m bench --device cuda`` with the GPU suites (bench/bench_gsplat.py by default).

Writes ``<out>/result.json`` (the schema is in ``result()`` below), one log per step and the bench
rows, and prints a summary table. Exit status: 0 when no step failed, 1 when one did, 2 with
``--require-gpu`` and no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 1
DEFAULT_BUDGET_S = 480.0
NO_CUDA = "no CUDA device"
# The CUDA tests outside tests/gpu (they skip, or check only the no-CUDA error, elsewhere).
UNIT_CUDA_TESTS = (
    "tests/unit/test_rasterizer.py::test_gsplat_cuda_matches_torch_path",
    "tests/unit/test_learned_depth.py::test_short_model_names_and_an_absent_device",
    "tests/unit/test_learned_diffusion.py::test_cuda_requested_without_cuda_fails_precondition",
)
BENCH_SUITES = ("bench.bench_gsplat",)
STEP_NAMES = ("environment", "gsplat_build", "pytest_gpu", "bench")
_KILL_GRACE_S = 5.0

# Runs in a child (CUDA initialisation can hang on a broken driver): one JSON line on stdout.
_PROBE = r"""
import json, os, shutil, subprocess
info = {}
import torch
info["torch"] = torch.__version__
info["torch_cuda"] = torch.version.cuda
info["cuda_available"] = torch.cuda.is_available()
info["device_count"] = torch.cuda.device_count() if info["cuda_available"] else 0
if info["cuda_available"]:
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = props.name
    info["capability"] = "%d.%d" % (props.major, props.minor)
    info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
try:
    import gsplat
    info["gsplat"] = gsplat.__version__
except Exception as exc:
    info["gsplat"] = None
    info["gsplat_error"] = "%s: %s" % (type(exc).__name__, exc)
def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [l.strip() for l in out.stdout.splitlines() if l.strip()]
    return lines if out.returncode == 0 and lines else None
smi = shutil.which("nvidia-smi")
rows = first_line([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]) if smi else None
info["driver"] = rows[0].split(",")[1].strip() if rows else None
nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)
lines = first_line([nvcc, "--version"]) if nvcc else None
info["nvcc"] = next((l for l in lines if "release" in l), lines[-1]) if lines else None
print(json.dumps(info))
"""

_GSPLAT_BUILD = (
    "import time; t = time.perf_counter()\n"
    "from gsplat.cuda import _backend\n"
    "assert _backend._C is not None, \"gsplat's CUDA extension is not built and could not be compiled: "
    "it needs the CUDA toolkit (nvcc on PATH or CUDA_HOME)\"\n"
    "print(f'gsplat CUDA extension ready in {time.perf_counter() - t:.1f} s')\n"
)


@dataclass
class Step:
    name: str
    timeout_s: float
    needs_cuda: bool = True
    # (context) -> argv; context holds "out" (Path), "env" (the probe's dict)
    argv: Callable[[dict[str, Any]], list[str]] = field(default=lambda ctx: [])


def steps(bench_suites: tuple[str, ...] = BENCH_SUITES) -> list[Step]:
    """The run's plan, in order (the timeouts are each step's own cap; the budget caps them all)."""
    py = sys.executable
    return [
        Step("environment", 60.0, needs_cuda=False, argv=lambda ctx: [py, "-c", _PROBE]),
        Step("gsplat_build", 330.0, argv=lambda ctx: [py, "-c", _GSPLAT_BUILD]),
        Step("pytest_gpu", 300.0, argv=lambda ctx: [
            py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/gpu", *UNIT_CUDA_TESTS,
            f"--junitxml={ctx['out'] / 'pytest.xml'}"]),
        Step("bench", 180.0, argv=lambda ctx: [
            py, "-m", "bench", "--device", "cuda", "--json", str(ctx["out"] / "bench.json"), "--only", *bench_suites]),
    ]


def step_limit(step_timeout_s: float, remaining_s: float) -> float:
    """The time a step may take: its own cap, within what is left of the budget."""
    return max(0.0, min(step_timeout_s, remaining_s))


def run_command(argv: list[str], timeout_s: float, log_path: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``argv`` in its own process group from the repository root, stdout and stderr into
    ``log_path``; on timeout the whole group gets SIGTERM, then SIGKILL. Returns {"rc", "seconds",
    "timed_out", "stdout"}."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=_KILL_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
            stdout, _ = proc.communicate()
        log.write("\n--- stdout ---\n" + (stdout or ""))
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - start, 2), "timed_out": timed_out,
            "stdout": stdout or ""}


def parse_junit(path: Path) -> dict:
    """pytest's JUnit XML -> counts, the failed test ids and the skip reasons with their counts."""
    root = ET.parse(path).getroot()
    summary: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skip_reasons": {}}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            summary["failed"] += 1
            summary["failures"].append({"test": test_id, "message": (failed.get("message") or "")[:500]})
        elif skipped is not None:
            summary["skipped"] += 1
            reason = (skipped.get("message") or "").removeprefix("Skipped: ")
            summary["skip_reasons"][reason] = summary["skip_reasons"].get(reason, 0) + 1
        else:
            summary["passed"] += 1
    return summary


def _child_env(probe: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if probe.get("capability"):  # compile gsplat for this GPU only (every arch would take far longer)
        env.setdefault("TORCH_CUDA_ARCH_LIST", probe["capability"])
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    return env


def _finish_step(step: Step, outcome: dict, ctx: dict) -> dict:
    """pass/fail and the step's own figures from a finished command."""
    entry: dict[str, Any] = {"status": "pass" if outcome["rc"] == 0 else "fail", "reason": None}
    if outcome["timed_out"]:
        entry.update(status="fail", reason=f"timed out after {outcome['seconds']:.0f} s")
    elif outcome["rc"] != 0:
        entry["reason"] = f"exit status {outcome['rc']} (see {step.name}.log)"
    if step.name == "environment" and outcome["rc"] == 0:
        try:
            ctx["env"] = json.loads(outcome["stdout"].strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            entry.update(status="fail", reason="the environment probe printed no JSON (see environment.log)")
    elif step.name == "gsplat_build" and outcome["rc"] == 0:
        entry["detail"] = outcome["stdout"].strip().splitlines()[-1] if outcome["stdout"].strip() else ""
    elif step.name == "pytest_gpu":
        junit = ctx["out"] / "pytest.xml"
        if junit.exists():
            tests = parse_junit(junit)
            entry["tests"] = tests
            # CUDA was seen by the probe: a test skipping for want of it means the check did not run.
            if ctx["env"].get("cuda_available") and tests["skip_reasons"].get(NO_CUDA):
                entry.update(status="fail", reason=f"{tests['skip_reasons'][NO_CUDA]} tests skipped with "
                                                   f"'{NO_CUDA}' although the probe saw one")
            elif tests["failed"] and not outcome["timed_out"]:
                entry["reason"] = f"{tests['failed']} failed: " + ", ".join(f["test"] for f in tests["failures"][:5])
    elif step.name == "bench":
        bench_json = ctx["out"] / "bench.json"
        if bench_json.exists():
            entry["rows"] = json.loads(bench_json.read_text())
            if outcome["rc"] == 0 and not entry["rows"]:
                entry.update(status="fail", reason="the GPU suites reported no figures")
    return entry


def run(out: Path, budget_s: float = DEFAULT_BUDGET_S, only: tuple[str, ...] = STEP_NAMES,
        bench_suites: tuple[str, ...] = BENCH_SUITES, require_gpu: bool = False) -> dict:
    """Run the plan within ``budget_s``; returns the result (also written to ``out/result.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    started = datetime.now(UTC)
    ctx: dict[str, Any] = {"out": out, "env": {}}
    results: list[dict] = []
    for step in steps(bench_suites):
        entry: dict[str, Any] = {"name": step.name, "status": "skipped", "reason": None, "seconds": 0.0,
                                 "timeout_s": step.timeout_s}
        results.append(entry)
        limit = step_limit(step.timeout_s, budget_s - (time.perf_counter() - begin))
        if step.name not in only:
            entry["reason"] = "not selected (--only)"
            continue
        if step.needs_cuda and not ctx["env"].get("cuda_available"):
            entry["reason"] = NO_CUDA if "torch" in ctx["env"] else "environment probe did not run or failed"
            continue
        if limit < 1.0:
            entry["reason"] = f"time budget of {budget_s:.0f} s spent"
            continue
        argv = step.argv(ctx)
        entry["command"] = ["python" if a == sys.executable else "<probe>" if a == _PROBE else a for a in argv]
        entry["log"] = f"{step.name}.log"
        outcome = run_command(argv, limit, out / entry["log"], _child_env(ctx["env"]))
        entry["seconds"] = outcome["seconds"]
        entry.update(_finish_step(step, outcome, ctx))
    env = ctx["env"]
    failed = [s["name"] for s in results if s["status"] == "fail"]
    no_gpu = not env.get("cuda_available")
    result = {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - begin, 2),
        "budget_s": budget_s,
        "require_gpu": require_gpu,
        "cuda": bool(env.get("cuda_available")),
        "gpu": env.get("gpu"),
        "environment": env,
        "steps": results,
        "bench": next((s.get("rows", []) for s in results if s["name"] == "bench"), []),
        "ok": not failed and not (require_gpu and no_gpu),
        "summary": (f"failed: {', '.join(failed)}" if failed else
                    f"{NO_CUDA}: GPU steps skipped" if no_gpu else "all GPU steps passed"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_table(result: dict) -> str:
    env = result["environment"]
    head = (f"GPU: {env.get('gpu') or 'none'} (capability {env.get('capability', '-')}, "
            f"{env.get('gpu_memory_gib', '-')} GiB), driver {env.get('driver') or '-'}, "
            f"torch {env.get('torch', '-')} (CUDA {env.get('torch_cuda') or '-'}), gsplat {env.get('gsplat') or '-'}, "
            f"nvcc {env.get('nvcc') or '-'}")
    lines = [head, f"{'step':<14} {'status':<8} {'seconds':>8}  detail"]
    for s in result["steps"]:
        detail = s.get("reason") or s.get("detail") or ""
        if "tests" in s:
            t = s["tests"]
            detail = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped" + (
                f"; {detail}" if detail else "")
        lines.append(f"{s['name']:<14} {s['status']:<8} {s['seconds']:>8.1f}  {detail}")
    if result["bench"]:
        width = max(len(r["name"]) for r in result["bench"])
        lines += [""] + [f"{r['name']:<{width}}  {r['value']:>10.4g} {r['unit']}" for r in result["bench"]]
    lines.append(f"{'ok' if result['ok'] else 'NOT OK'}: {result['summary']} "
                 f"({result['wall_s']:.0f} s of {result['budget_s']:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "gpu-check",
                        help="folder for result.json and the logs")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for the whole run (default 480)")
    parser.add_argument("--only", nargs="+", choices=STEP_NAMES, default=list(STEP_NAMES), help="steps to run")
    parser.add_argument("--bench-suites", nargs="+", default=list(BENCH_SUITES), help="bench suites of the bench step")
    parser.add_argument("--require-gpu", action="store_true", help="exit 2 when there is no CUDA device")
    ns = parser.parse_args(argv)
    if ns.budget <= 0:
        parser.error(f"--budget must be positive, got {ns.budget}")
    result = run(ns.out, ns.budget, tuple(ns.only), tuple(ns.bench_suites), ns.require_gpu)
    print(summary_table(result))
    print(f"result: {ns.out / 'result.json'}")
    if any(s["status"] == "fail" for s in result["steps"]):
        return 1
    return 2 if ns.require_gpu and not result["cuda"] else 0


if __name__ == "__main__":
    sys.exit(main())
