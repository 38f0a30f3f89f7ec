"""Gateway load: latency of the cheap calls (GetJob, ListJobs, gRPC health) while jobs run, and job throughput.

Starts the stack (five services and the gateway on loopback; jobs at the smallest working resolution,
they are the load, not the subject) and measures, side by side in the same run:

- ``idle``: ``USERS`` locust users (bench/locust_grpc.py, in a process of their own) calling GetJob,
  ListJobs and Health.Check as fast as they are answered, for ``IDLE_S`` seconds with no job running;
- ``loaded``: the same users while ``JOBS`` jobs of ``ROUNDS`` automatic rounds, submitted at once,
  run to the end; locust is stopped when the last job is done.

Reported: p50 and p99 of each call in both phases (locust's percentiles: whole milliseconds), the
ratio loaded p99 / idle p99, calls per second, failed calls, and the job throughput (jobs and versions
per minute, first submission to last job done). Nothing may be lost: every job must end SUCCEEDED with
one version per round plus one (a round the photo check rejected counts as done), or the run raises.
``python -m bench.bench_load`` prints the table; ``make bench`` runs it with the other suites.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from glimpse3d.gateway.demo import SAMPLE
from glimpse3d.gateway.stack import start_stack
from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc

USERS = 8
JOBS = 6
ROUNDS = 1
IDLE_S = 10.0
RESOLUTION = 64
TENANT = "load"
RPC_TIMEOUT_S = 30.0
SERVICE_ENV = {"reconstruction": {"GLIMPSE3D_BACKEND_OPTIONS": json.dumps({"fit_steps": 5, "max_gaussians": 300})}}
CALLS = ("GetJob", "ListJobs", "Health")
LOCUSTFILE = Path(__file__).with_name("locust_grpc.py")


@dataclass(frozen=True)
class CallStats:
    """One call's figures from locust's stats CSV (times in milliseconds)."""

    count: int
    failures: int
    p50: float
    p99: float
    per_s: float


@dataclass
class LoadResult:
    calls: dict[str, CallStats]
    seconds: float
    submitted: int = 0
    jobs: list[pb.Job] = field(default_factory=list)

    def lost(self) -> list[str]:
        """Why jobs count as lost (did not end, not SUCCEEDED, a round missing); empty when none is."""
        problems = [] if len(self.jobs) == self.submitted else [
            f"{self.submitted - len(self.jobs)} of {self.submitted} jobs did not end"]
        for job in self.jobs:
            wanted = 1 + job.options.enhance_rounds
            if job.state != pb.Job.SUCCEEDED or (len(job.versions) < wanted and _reason(job) != "ROUND_REJECTED"):
                problems.append(f"{job.name}: {pb.Job.State.Name(job.state)}, {len(job.versions)} of {wanted} "
                                f"versions: {job.error.message}")
        return problems


def _reason(job: pb.Job) -> str:
    """The ErrorInfo reason of the job's error ("" when none); ROUND_REJECTED is a round's answer, not a loss."""
    info = error_details_pb2.ErrorInfo()
    return next((info.reason for detail in job.error.details if detail.Unpack(info)), "")


def _read_stats(path: Path) -> dict[str, CallStats]:
    stats = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["Type"] == "grpc":
                stats[row["Name"]] = CallStats(int(row["Request Count"]), int(row["Failure Count"]),
                                               float(row["50%"]), float(row["99%"]), float(row["Requests/s"]))
    return stats


class Locust:
    """``users`` locust users of the cheap calls against ``addr`` in a child process, until :meth:`stop`
    (or ``run_time_s``); :meth:`stop` returns the stats by call name."""

    def __init__(self, addr: str, job_names: list[str], users: int, workdir: Path, run_time_s: float) -> None:
        self._prefix = workdir / f"locust-{time.monotonic_ns()}"
        env = {**os.environ, "GLIMPSE3D_LOAD_ADDR": addr, "GLIMPSE3D_LOAD_JOBS": ",".join(job_names),
               "GLIMPSE3D_LOAD_TENANT": TENANT}
        self._log = open(f"{self._prefix}.log", "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users),
             "--spawn-rate", str(users), "--run-time", f"{max(1, round(run_time_s))}s", "--stop-timeout", "5",
             "--csv", str(self._prefix), "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self, timeout_s: float = 60.0, *, at_run_time: bool = False) -> dict[str, CallStats]:
        """Stop now (``at_run_time``: when its run time is over) and return the stats by call name."""
        if not at_run_time:
            running = Path(f"{self._prefix}_stats_history.csv")  # written once the users run
            deadline = time.monotonic() + timeout_s
            while self._proc.poll() is None and not running.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)  # locust quits and writes its CSV files
        try:
            code = self._proc.wait(timeout_s)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._log.close()
        stats = Path(f"{self._prefix}_stats.csv")
        if code != 0 or not stats.exists():
            tail = Path(f"{self._prefix}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"locust exited with {code}:\n{tail}")
        return _read_stats(stats)


def _submit(stub: glimpse3d_pb2_grpc.Glimpse3DStub, jobs: int, rounds: int) -> list[str]:
    metadata = (("x-glimpse3d-tenant", TENANT),)
    image = SAMPLE.read_bytes()
    return [stub.CreateJob(pb.CreateJobRequest(image_data=image, options=pb.JobOptions(
        resolution=RESOLUTION, enhance_rounds=rounds, seed=i)), metadata=metadata, timeout=RPC_TIMEOUT_S).name
        for i in range(jobs)]


def _wait(stub: glimpse3d_pb2_grpc.Glimpse3DStub, names: list[str], timeout_s: float) -> list[pb.Job]:
    metadata = (("x-glimpse3d-tenant", TENANT),)
    done: dict[str, pb.Job] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(names) and time.monotonic() < deadline:
        for name in names:
            if name not in done:
                job = stub.GetJob(pb.GetJobRequest(name=name), metadata=metadata, timeout=RPC_TIMEOUT_S)
                if job.done:
                    done[name] = job
        time.sleep(0.25)
    return list(done.values())


def measure(addr: str, workdir: Path, *, users: int = USERS, jobs: int = JOBS, rounds: int = ROUNDS,
            idle_s: float = IDLE_S, timeout_s: float = 900.0) -> tuple[LoadResult, LoadResult]:
    """(idle, loaded) against the gateway at ``addr`` (see the module docstring)."""
    with grpc.insecure_channel(addr) as channel:
        stub = glimpse3d_pb2_grpc.Glimpse3DStub(channel)
        first = _submit(stub, 1, 0)  # a finished job for GetJob to read while idle
        if not all(job.state == pb.Job.SUCCEEDED for job in _wait(stub, first, timeout_s)):
            raise RuntimeError("the first job did not succeed")
        start = time.monotonic()
        idle_calls = Locust(addr, first, users, workdir, idle_s).stop(idle_s + 60, at_run_time=True)
        idle = LoadResult(idle_calls, time.monotonic() - start)
        start = time.monotonic()
        names = _submit(stub, jobs, rounds)
        swarm = Locust(addr, names, users, workdir, timeout_s)
        try:
            ended = _wait(stub, names, timeout_s)
        finally:
            calls = swarm.stop()
        loaded = LoadResult(calls, time.monotonic() - start, len(names), ended)
    return idle, loaded


def _rows(label: str, result: LoadResult) -> list[dict]:
    rows = []
    for call in CALLS:
        s = result.calls.get(call, CallStats(0, 0, float("nan"), float("nan"), 0.0))
        rows += [{"name": f"load_{label}_{call}_p50", "value": s.p50, "unit": "ms",
                  "note": f"{s.count} calls, {s.failures} failed, {s.per_s:.0f}/s"},
                 {"name": f"load_{label}_{call}_p99", "value": s.p99, "unit": "ms", "note": ""}]
    return rows


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp, \
            start_stack(Path(tmp), service_env=SERVICE_ENV, http_port=-1, timeout_s=180.0) as stack:
        idle, loaded = measure(stack.gateway_addr, Path(tmp))
    lost = loaded.lost()
    if lost:
        raise RuntimeError("jobs lost under load: " + "; ".join(lost))
    versions = sum(len(job.versions) for job in loaded.jobs)
    rows = _rows("idle", idle) + _rows("loaded", loaded)
    for call in CALLS:
        rows.append({"name": f"load_{call}_p99_loaded/idle", "unit": "x", "note": f"{USERS} locust users",
                     "value": loaded.calls[call].p99 / max(idle.calls[call].p99, 1.0)})
    rows += [
        {"name": "load_jobs_per_min", "value": 60 * len(loaded.jobs) / loaded.seconds, "unit": "1/min",
         "note": f"{len(loaded.jobs)}/{loaded.submitted} jobs SUCCEEDED, {ROUNDS} round(s) each, {RESOLUTION} px"},
        {"name": "load_versions_per_min", "value": 60 * versions / loaded.seconds, "unit": "1/min",
         "note": f"{versions} versions in {loaded.seconds:.0f} s"},
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<34} {row['value']:10.3f} {row['unit']:<5} {row['note']}")
