"""Jobs survive a model service being killed and restarted (a rolling update, an OOM kill, a
preempted node), against the real stack: the five services and the gateway as processes on loopback.

A service is killed with SIGKILL while one of its calls is in flight (seen on its own
``glimpse3d_rpc_in_flight`` gauge), or just before a job needs it, and started again about three
seconds later on the same port. The gateway retries the stage call within its retry budget, waiting
for the service's health to say SERVING, and the job or round succeeds. Small inputs (64 px) keep the
file to a couple of minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest

from glimpse3d.gateway.stack import REQUIRED_SERVICES, Stack, service_packages, start_stack
from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.png"
RES = 64
TENANT = (("x-glimpse3d-tenant", "restarts"),)
RPC_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 150.0
DOWN_S = 3.0  # how long a killed service stays away
BUDGET_S = 60.0  # the gateway's stage retry budget in these tests
RECONSTRUCT_STEPS = 40  # twice the default fitting: a few seconds, for the kill to land while Reconstruct runs


def start_service(stack: Stack, name: str, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start service ``name`` again on ``port`` (as the stack started it, with ``extra_env``: this file's
    :func:`service_env` when None), returning once it is SERVING."""
    ready = stack.state_dir / f"{name}.restart.ready.json"
    ready.unlink(missing_ok=True)
    env = {
        **os.environ,
        **(service_env(stack.state_dir).get(name, {}) if extra_env is None else extra_env),
        "GLIMPSE3D_ARTIFACTS_URL": (stack.state_dir / "artifacts").as_uri(),
        "GLIMPSE3D_LOG_JSON": "true",
        "OMP_WAIT_POLICY": "PASSIVE",
        "GLIMPSE3D_READY_FILE": str(ready),
        "GLIMPSE3D_PORT": str(port),
        "GLIMPSE3D_METRICS_PORT": "0",
    }
    with open(stack.state_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", service_packages()[name]], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 90
    while not ready.exists():
        assert proc.poll() is None, f"{name} exited with {proc.returncode} on restart"
        assert time.monotonic() < deadline, f"{name} not ready 90 s after restart"
        time.sleep(0.05)
    stack.processes[name] = proc  # the stack stops it with the rest
    stack.metrics_ports[name] = int(json.loads(ready.read_text())["metrics_port"])
    return proc


def gateway_env(stack: Stack, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment :func:`start_stack` gives the gateway (its services, database, artifacts), with ``env``."""
    out = {**os.environ, **(env or {})}
    out.setdefault("GLIMPSE3D_ARTIFACTS_URL", (stack.state_dir / "artifacts").as_uri())
    out.setdefault("GLIMPSE3D_LOG_JSON", "true")
    out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out.setdefault("GLIMPSE3D_DB_PATH", str(stack.state_dir / "jobs.sqlite3"))
    out.setdefault("GLIMPSE3D_HTTP_PORT", "-1")
    out.update({f"GLIMPSE3D_{s.upper()}_ADDR": stack.addr(s) for s in REQUIRED_SERVICES})
    return out


def start_gateway(stack: Stack, env: Mapping[str, str], port: int = 0, name: str = "gateway",
                  timeout_s: float = 90.0) -> tuple[subprocess.Popen, int]:
    """Start a gateway process with ``env`` (see :func:`gateway_env`) on ``port`` (0: a free one), as
    ``stack.processes[name]`` (the stack stops the one named "gateway" with the rest; the caller stops any
    other); returns it and its port once it serves."""
    ready = stack.state_dir / f"{name}.restart.ready.json"
    ready.unlink(missing_ok=True)
    full = {**env, "GLIMPSE3D_READY_FILE": str(ready), "GLIMPSE3D_PORT": str(port), "GLIMPSE3D_METRICS_PORT": "0"}
    with open(stack.state_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "glimpse3d.gateway"], env=full, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} while starting (log: {name}.log)")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} not ready {timeout_s:.0f} s after its start")
        time.sleep(0.05)
    announced = json.loads(ready.read_text())
    stack.processes[name] = proc
    stack.ports[name] = int(announced["port"])
    stack.metrics_ports[name] = int(announced["metrics_port"])
    return proc, int(announced["port"])


def service_env(_state: Path) -> dict[str, dict[str, str]]:
    return {"reconstruction": {"GLIMPSE3D_BACKEND_OPTIONS": json.dumps({"fit_steps": RECONSTRUCT_STEPS})}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("restarts")
    env = {"GLIMPSE3D_STAGE_RETRY_BUDGET_S": str(BUDGET_S), "GLIMPSE3D_STAGE_RETRY_MAX_BACKOFF_S": "1"}
    with start_stack(state, env=env, timeout_s=180.0, service_env=service_env(state), http_port=-1) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[glimpse3d_pb2_grpc.Glimpse3DStub]:
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        yield glimpse3d_pb2_grpc.Glimpse3DStub(channel)


def in_flight(stack: Stack, service: str, method: str) -> float:
    """The service's ``glimpse3d_rpc_in_flight`` gauge for ``method`` (0 when the service is gone)."""
    try:
        url = f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    match = re.search(r'glimpse3d_rpc_in_flight\{method="[^"]*/' + method + r'"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill(stack: Stack, service: str) -> int:
    """SIGKILL the service (no drain, no goodbye); returns the port it served on."""
    proc = stack.processes[service]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return stack.ports[service]


def wait_done(client: glimpse3d_pb2_grpc.Glimpse3DStub, name: str, versions: int) -> pb.Job:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = client.GetJob(pb.GetJobRequest(name=name), metadata=TENANT, timeout=RPC_TIMEOUT_S)
        if job.done and (len(job.versions) >= versions or job.HasField("error") or job.state != pb.Job.SUCCEEDED):
            return job
        assert time.monotonic() < deadline, f"job {name} not done after {JOB_TIMEOUT_S} s: {job}"
        time.sleep(0.1)


def create(client: glimpse3d_pb2_grpc.Glimpse3DStub) -> pb.Job:
    request = pb.CreateJobRequest(image_data=SAMPLE.read_bytes(), options=pb.JobOptions(resolution=RES))
    return client.CreateJob(request, metadata=TENANT, timeout=RPC_TIMEOUT_S)


def retries_logged(stack: Stack, service: str) -> int:
    """How many "stage call failed, retrying" lines the gateway logged for ``service``."""
    lines = (stack.state_dir / "gateway.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "stage call failed, retrying" in line and f'"service": "{service}"' in line)


def test_a_job_survives_reconstruction_killed_mid_stage(stack: Stack, client) -> None:
    before = retries_logged(stack, "reconstruction")
    job = create(client)
    wait_until(lambda: in_flight(stack, "reconstruction", "Reconstruct") >= 1, 60, "Reconstruct in flight")
    port = kill(stack, "reconstruction")
    time.sleep(DOWN_S)
    assert (
        client.GetJob(pb.GetJobRequest(name=job.name), metadata=TENANT, timeout=RPC_TIMEOUT_S).state == pb.Job.RUNNING
    )  # still waiting for the service, not failed
    start_service(stack, "reconstruction", port)
    done = wait_done(client, job.name, 1)
    assert done.state == pb.Job.SUCCEEDED and not done.HasField("error"), done.error
    assert len(done.versions) == 1 and done.versions[0].metrics["num_gaussians"] > 0
    assert retries_logged(stack, "reconstruction") > before  # the cut call was retried, not lucky timing


def test_a_round_survives_backprojection_killed_mid_refine(stack: Stack, client) -> None:
    job = wait_done(client, create(client).name, 1)
    assert job.state == pb.Job.SUCCEEDED and len(job.versions) == 1
    before = retries_logged(stack, "backprojection")
    client.Enhance(pb.EnhanceRequest(name=job.name, auto=True), metadata=TENANT, timeout=RPC_TIMEOUT_S)
    wait_until(lambda: in_flight(stack, "backprojection", "Refine") >= 1, 60, "Refine in flight")
    port = kill(stack, "backprojection")
    time.sleep(DOWN_S)
    start_service(stack, "backprojection", port)
    done = wait_done(client, job.name, 2)
    assert done.state == pb.Job.SUCCEEDED and not done.HasField("error"), done.error
    assert len(done.versions) == 2  # the round added its version; version 1 is kept
    assert done.versions[0].splat.sha256 == job.versions[0].splat.sha256
    assert retries_logged(stack, "backprojection") > before


def test_a_job_submitted_while_a_service_is_down_succeeds_once_it_is_back(stack: Stack, client) -> None:
    before = retries_logged(stack, "depth")
    port = kill(stack, "depth")  # the first service every job calls
    job = create(client)  # accepted: the gateway itself is up
    assert job.state in (pb.Job.QUEUED, pb.Job.RUNNING)
    time.sleep(DOWN_S)
    assert (
        client.GetJob(pb.GetJobRequest(name=job.name), metadata=TENANT, timeout=RPC_TIMEOUT_S).state == pb.Job.RUNNING
    )
    start_service(stack, "depth", port)
    done = wait_done(client, job.name, 1)
    assert done.state == pb.Job.SUCCEEDED and not done.HasField("error"), done.error
    assert retries_logged(stack, "depth") > before


def test_a_round_that_fails_after_the_retry_budget_can_be_retried(stack: Stack) -> None:
    """A service away for longer than the retry budget (2 s on a gateway of its own here) fails the round
    with UNAVAILABLE naming it; the job keeps its versions, the same request_id answers without running
    again, and a new Enhance, once the service is back, adds the version."""
    env = gateway_env(stack, {"GLIMPSE3D_STAGE_RETRY_BUDGET_S": "2", "GLIMPSE3D_STAGE_RETRY_MAX_BACKOFF_S": "0.5",
                              "GLIMPSE3D_DB_PATH": str(stack.state_dir / "short-budget.sqlite3")})
    gateway, port = start_gateway(stack, env, name="gateway-short-budget")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = glimpse3d_pb2_grpc.Glimpse3DStub(channel)
            job = wait_done(client, create(client).name, 1)
            assert job.state == pb.Job.SUCCEEDED and len(job.versions) == 1
            down = kill(stack, "diffusion")
            try:
                started = time.monotonic()
                client.Enhance(pb.EnhanceRequest(name=job.name, auto=True, request_id="round-1"), metadata=TENANT,
                               timeout=RPC_TIMEOUT_S)
                failed = wait_done(client, job.name, 2)
                assert time.monotonic() - started >= 2.0  # retried for the budget, not failed at once
            finally:
                start_service(stack, "diffusion", down)
            assert failed.state == pb.Job.SUCCEEDED  # the job keeps what it has
            assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "diffusion" in failed.error.message, failed.error.message
            assert [v.splat.sha256 for v in failed.versions] == [job.versions[0].splat.sha256]

            same = client.Enhance(pb.EnhanceRequest(name=job.name, auto=True, request_id="round-1"), metadata=TENANT,
                                  timeout=RPC_TIMEOUT_S)
            assert same.state == pb.Job.SUCCEEDED and same.error.code == failed.error.code  # answered, not rerun

            client.Enhance(pb.EnhanceRequest(name=job.name, auto=True, request_id="round-1-again"), metadata=TENANT,
                           timeout=RPC_TIMEOUT_S)
            done = wait_done(client, job.name, 2)
            assert done.state == pb.Job.SUCCEEDED and not done.HasField("error"), done.error
            assert len(done.versions) == 2 and done.versions[0].splat.sha256 == job.versions[0].splat.sha256
            exported = client.Export(pb.ExportRequest(name=done.versions[0].name, format=pb.ExportRequest.PLY),
                                     metadata=TENANT,
                                     timeout=RPC_TIMEOUT_S)
            assert exported.artifact.sha256 == job.versions[0].splat.sha256  # version 1 is still there to download
    finally:
        gateway.terminate()
        gateway.wait(30)
