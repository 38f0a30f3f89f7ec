"""Two gateway replicas on one PostgreSQL job database: one dies (SIGKILL) in the middle of its jobs and
the other finishes them, against the real stack (five services and two gateway processes on loopback).

Replica A takes three jobs (two running on its workers, one waiting in its queue) and, through replica
B, one more round is asked for one of them while A runs it. A is killed mid-stage; its leases
(``job_lease_s`` 3 s here) expire and B adopts every job A held, resumes the running ones from what
the database has (versions, queued rounds) and finishes them all, the round asked through B included.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from chaos import RES, SAMPLE, SERVICE_ENV, busy, gateway_env, start_gateway, stop_process

from glimpse3d.gateway.stack import Stack, start_stack
from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc

TENANT = (("x-glimpse3d-tenant", "replicas"),)
LEASE_S = 3.0
RPC_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory) -> Iterator[Stack]:
    """The stack with replica A as its gateway and replica B beside it, both on one PostgreSQL database."""
    state = tmp_path_factory.mktemp("replicas")
    env = {"GLIMPSE3D_DB_URL": postgres.url(postgres.create_database("replicas")),
           "GLIMPSE3D_JOB_LEASE_S": str(LEASE_S), "GLIMPSE3D_STAGE_RETRY_BUDGET_S": "60",
           "GLIMPSE3D_STAGE_RETRY_MAX_BACKOFF_S": "1"}
    with start_stack(state, env={**env, "GLIMPSE3D_REPLICA_ID": "replica-a"}, timeout_s=180.0,
                     service_env=SERVICE_ENV, http_port=-1) as stack:
        second, _ = start_gateway(stack, gateway_env(stack, {**env, "GLIMPSE3D_REPLICA_ID": "replica-b"}),
                                  name="gateway-b")
        try:
            yield stack
        finally:  # the stack stops only the processes it started
            second.terminate()
            try:
                second.wait(30)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait()


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def logged(stack: Stack, name: str, text: str) -> int:
    return (stack.state_dir / f"{name}.log").read_text(errors="replace").count(text)


def test_a_replica_killed_mid_job_leaves_its_jobs_to_the_other(replicas: Stack) -> None:
    stack = replicas
    with grpc.insecure_channel(stack.addr("gateway")) as chan_a, \
            grpc.insecure_channel(stack.addr("gateway-b")) as chan_b:
        a, b = glimpse3d_pb2_grpc.Glimpse3DStub(chan_a), glimpse3d_pb2_grpc.Glimpse3DStub(chan_b)
        image = SAMPLE.read_bytes()
        names = [a.CreateJob(pb.CreateJobRequest(image_data=image, options=pb.JobOptions(
            resolution=RES, enhance_rounds=1, seed=i)), metadata=TENANT, timeout=RPC_TIMEOUT_S).name for i in range(3)]

        def get(name: str) -> pb.Job:
            return b.GetJob(pb.GetJobRequest(name=name), metadata=TENANT, timeout=RPC_TIMEOUT_S)

        # The first job's version 1 is stored and its automatic round runs on A: ask B for one more round.
        wait_until(lambda: len(get(names[0]).versions) >= 1, 120, "version 1 of the first job")
        extra = b.Enhance(pb.EnhanceRequest(name=names[0], auto=True, seed=7, request_id="extra-round"),
                          metadata=TENANT, timeout=RPC_TIMEOUT_S)
        assert extra.state == pb.Job.RUNNING and len(extra.versions) == 1  # appended to A's run, not started on B
        wait_until(lambda: busy(stack, "gateway") and any(get(n).state == pb.Job.RUNNING for n in names), 60,
                   "replica A working")
        before = {n: get(n) for n in names}
        assert not all(j.done for j in before.values()), "A finished before it could be killed"
        stop_process(stack, "gateway", signal.SIGKILL)
        killed_at = time.monotonic()

        done: dict[str, pb.Job] = {}
        deadline = killed_at + JOB_TIMEOUT_S
        while len(done) < len(names):
            assert time.monotonic() < deadline, f"jobs not finished by replica B: {set(names) - set(done)}"
            for name in names:
                if name not in done and (job := get(name)).done:
                    done[name] = job
            time.sleep(0.3)

    for name, job in done.items():
        assert job.state == pb.Job.SUCCEEDED and not job.HasField("error"), (name, job.error.message)
        expected = 3 if name == names[0] else 2  # version 1, the automatic round, and the round asked through B
        assert len(job.versions) == expected, (name, len(job.versions))
        if before[name].versions:  # what A stored is kept
            assert job.versions[0].splat.sha256 == before[name].versions[0].splat.sha256
    unfinished = [n for n in names if not before[n].done]
    assert logged(stack, "gateway-b", '"msg": "resuming job"') >= len(unfinished)
    assert all(logged(stack, "gateway-b", f'"job": "{n}"') for n in unfinished)  # B ran each of them
