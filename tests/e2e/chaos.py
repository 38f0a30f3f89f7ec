"""``make chaos`` and tests/e2e/test_chaos.py: jobs keep going while every model service, and then
the gateway, is stopped and restarted under them.

Starts the stack (five services and the gateway as processes on loopback, jobs in SQLite), submits
``--jobs`` jobs of ``--rounds`` automatic enhancement rounds each, and meanwhile stops each service
once (``--signal KILL``: SIGKILL, a crash or an OOM kill; ``TERM``: SIGTERM, a rolling restart, the
process drains first), preferably while one of its calls is in flight (its ``glimpse3d_rpc_in_flight``
gauge), and starts it again on the same port ``--down`` seconds later. Once every service has been
restarted, the gateway is stopped the same way while it works on jobs, and started again on the
same port and database: it resumes the jobs it had (SQLite: the new process voids the dead one's
leases and adopts every QUEUED and RUNNING job, rounds queued in the database included).

Exits 0 when nothing was lost: every job SUCCEEDED with its first version and one version or one
rejection (a round the photo check refused, which is the pipeline's answer, not a failure) per
round, and no other error; prints the time taken, the stops (and which landed mid-call) and the
stage calls the gateway retried; 1 otherwise.

    python tests/e2e/chaos.py --jobs 10 --rounds 2 --signal KILL
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from glimpse3d.gateway.stack import REQUIRED_SERVICES, Stack, start_stack
from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the restart tests' helpers, also when this file is run as a script
from test_restarts import SAMPLE, gateway_env, start_gateway, start_service  # noqa: E402

TENANT = (("x-glimpse3d-tenant", "chaos"),)
RES = 64  # the smallest working resolution a job accepts
BUDGET_S = 90.0  # stage retry budget: longer than any stop below
DOWN_S = 5.0  # a stopped process stays away this long
RPC_TIMEOUT_S = 30.0
TARGETS = (*REQUIRED_SERVICES, "gateway")  # the order of the stops: services first, the gateway last
# The cheapest settings that keep the rounds meaningful: a small coarse splat, fitted briefly, and short
# fusions (each round still renders, enhances, estimates depth and fuses through every service).
SERVICE_ENV = {"reconstruction": {"GLIMPSE3D_BACKEND_OPTIONS": json.dumps({"fit_steps": 5, "max_gaussians": 300})},
               "backprojection": {"GLIMPSE3D_BACKEND_OPTIONS": json.dumps({"steps": 10})}}
GATEWAY_ENV = {"GLIMPSE3D_STAGE_RETRY_BUDGET_S": str(BUDGET_S), "GLIMPSE3D_STAGE_RETRY_MAX_BACKOFF_S": "1"}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
_IN_FLIGHT = re.compile(r'^glimpse3d_rpc_in_flight\{method="([^"]*)"\} ([0-9.e+]+)$', re.M)
_JOBS_ACTIVE = re.compile(r"^glimpse3d_gateway_jobs_active ([0-9.e+]+)$", re.M)


def reason_of(job: pb.Job) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in job.error.details:
        if detail.Unpack(info):  # False for the other detail types
            return info.reason
    return ""


# ---- what a process is doing ----------------------------------------------------------------------


def scrape(stack: Stack, name: str) -> str:
    """The process's /metrics text ("" when it is not there)."""
    try:
        url = f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except (OSError, KeyError):
        return ""


def busy(stack: Stack, name: str) -> bool:
    """A service with a call of its API in flight; the gateway working on a job."""
    text = scrape(stack, name)
    if name == "gateway":
        match = _JOBS_ACTIVE.search(text)
        return match is not None and float(match.group(1)) >= 1
    return any(float(n) >= 1 for method, n in _IN_FLIGHT.findall(text) if method.startswith("/glimpse3d.v1."))


def stop_process(stack: Stack, name: str, sig: signal.Signals, timeout_s: float = 60.0) -> int:
    """Send ``sig`` to the process and wait for it to exit (SIGTERM: after its drain); returns its port."""
    proc = stack.processes[name]
    proc.send_signal(sig)
    proc.wait(timeout_s)
    return stack.ports[name]


@dataclass
class Stop:
    target: str
    signal: str
    mid_call: bool  # the target was busy (a call in flight, a job running) when it was stopped
    seconds_away: float


@dataclass
class Chaos:
    """Stops every target in turn while the jobs run (see the module docstring). Each target is stopped
    as soon as it is seen busy, services in whatever order their calls come, the gateway after them;
    one not seen busy within ``busy_wait_s`` is stopped anyway (``mid_call`` False)."""

    stack: Stack
    gateway_env: dict[str, str]
    sig: signal.Signals
    down_s: float = DOWN_S
    busy_wait_s: float = 60.0
    poll_s: float = 0.01
    stops: list[Stop] = field(default_factory=list)
    error: BaseException | None = None

    def _cycle(self, name: str, caught: bool) -> None:
        start = time.monotonic()
        port = stop_process(self.stack, name, self.sig)
        time.sleep(max(0.0, start + self.down_s - time.monotonic()))
        if name == "gateway":
            start_gateway(self.stack, self.gateway_env, port)
        else:
            start_service(self.stack, name, port, SERVICE_ENV.get(name, {}))
        self.stops.append(Stop(name, self.sig.name, caught, time.monotonic() - start))

    def run(self, halt: threading.Event) -> None:
        try:
            services: list[str] = list(REQUIRED_SERVICES)
            deadline = time.monotonic() + self.busy_wait_s
            while services and not halt.is_set():
                found = next((s for s in services if busy(self.stack, s)), None)
                if found is None and time.monotonic() < deadline:
                    time.sleep(self.poll_s)
                    continue
                name = found or services[0]
                services.remove(name)
                self._cycle(name, found is not None)
                deadline = time.monotonic() + self.busy_wait_s
            while not halt.is_set():
                caught = busy(self.stack, "gateway")
                if caught or time.monotonic() > deadline:
                    self._cycle("gateway", caught)
                    return
                time.sleep(0.05)
        except BaseException as err:  # reported by the caller
            self.error = err


# ---- jobs -----------------------------------------------------------------------------------------


def call(fn: Callable[[], pb.Job], timeout_s: float = 120.0) -> pb.Job:
    """``fn()`` retried while the gateway is away (UNAVAILABLE), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def submit(client: glimpse3d_pb2_grpc.Glimpse3DStub, jobs: int, rounds: int) -> list[str]:
    """``jobs`` jobs of ``rounds`` automatic rounds; every third one asks for a novel view as well (the
    multiview service's part of the pipeline)."""
    image = SAMPLE.read_bytes()
    batch = uuid.uuid4().hex[:8]  # request ids of this run (a retried CreateJob returns the job it made)
    names = []
    for i in range(jobs):
        options = pb.JobOptions(resolution=RES, enhance_rounds=rounds, seed=i, num_views=1 if i % 3 == 0 else 0)
        request = pb.CreateJobRequest(image_data=image, options=options, request_id=f"chaos-{batch}-{i}")
        names.append(call(lambda r=request: client.CreateJob(r, metadata=TENANT, timeout=RPC_TIMEOUT_S)).name)
    return names


def rejections_logged(stack: Stack, job_name: str) -> int:
    """How many of the job's rounds the gateway logged as rejected by the photo check (after storing it)."""
    lines = (stack.state_dir / "gateway.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if '"msg": "round rejected:' in line and f'"job": "{job_name}"' in line)


def retries_logged(stack: Stack) -> dict[str, int]:
    """Stage calls the gateway logged as failed and retried, by service."""
    lines = (stack.state_dir / "gateway.log").read_text(errors="replace").splitlines()
    return {s: sum(1 for line in lines if "stage call failed, retrying" in line and f'"service": "{s}"' in line)
            for s in REQUIRED_SERVICES}


@dataclass
class Outcome:
    jobs: dict[str, pb.Job]
    submitted: int
    rounds: int
    stops: list[Stop]
    seconds: float
    retried: dict[str, int]
    problems: list[str]

    def summary(self) -> str:
        versions = sum(len(job.versions) for job in self.jobs.values())
        stops = ", ".join(f"{s.target}{'' if s.mid_call else ' (idle)'}" for s in self.stops)
        return (f"{len(self.jobs)}/{self.submitted} jobs done in {self.seconds:.0f} s, {versions} versions; "
                f"{len(self.stops)} stops by {self.stops[0].signal if self.stops else '-'} ({stops}); "
                f"stage calls retried: {self.retried}")


def run(stack: Stack, env: Mapping[str, str], *, jobs: int, rounds: int, sig: signal.Signals,
        down_s: float = DOWN_S, timeout_s: float = 900.0) -> Outcome:
    """Submit the jobs, stop every target once meanwhile, wait for all jobs; see :class:`Outcome`."""
    chaos = Chaos(stack, gateway_env(stack, env), sig, down_s)
    start = time.monotonic()
    problems: list[str] = []
    done: dict[str, pb.Job] = {}
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        client = glimpse3d_pb2_grpc.Glimpse3DStub(channel)
        names = submit(client, jobs, rounds)
        halt = threading.Event()
        thread = threading.Thread(target=chaos.run, args=(halt,), daemon=True)
        thread.start()
        try:
            while (len(done) < len(names) or thread.is_alive()) and time.monotonic() - start < timeout_s:
                for name in names:
                    if name not in done:
                        job = call(lambda n=name: client.GetJob(pb.GetJobRequest(name=n), metadata=TENANT,
                                                                timeout=RPC_TIMEOUT_S))
                        if job.done:
                            done[name] = job
                time.sleep(0.5)
        finally:
            halt.set()
            thread.join(180)
    if chaos.error is not None:
        problems.append(f"the chaos thread failed: {chaos.error!r}")
    if thread.is_alive():
        problems.append("the chaos thread did not finish")
    problems += [f"{name} not done after {timeout_s:.0f} s" for name in names if name not in done]
    for name, job in done.items():
        rejected = rejections_logged(stack, name)
        if job.state != pb.Job.SUCCEEDED:
            problems.append(f"{name} is {pb.Job.State.Name(job.state)}: {job.error.message}")
        elif job.HasField("error") and reason_of(job) != "ROUND_REJECTED":
            problems.append(f"{name} has an error: {job.error.message}")
        elif len(job.versions) - 1 + rejected != rounds:
            problems.append(f"{name}: {len(job.versions)} versions and {rejected} rejected rounds for {rounds} rounds")
    return Outcome(done, len(names), rounds, chaos.stops, time.monotonic() - start, retries_logged(stack), problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--signal", choices=sorted(SIGNALS), default="KILL", help="how processes are stopped")
    parser.add_argument("--down", type=float, default=DOWN_S, help="seconds a stopped process stays away")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glimpse3d-chaos-") as tmp:
        with start_stack(Path(tmp), env=GATEWAY_ENV, timeout_s=180.0, service_env=SERVICE_ENV, http_port=-1) as stack:
            outcome = run(stack, GATEWAY_ENV, jobs=ns.jobs, rounds=ns.rounds, sig=SIGNALS[ns.signal],
                          down_s=ns.down, timeout_s=ns.timeout)
    print(outcome.summary())
    for problem in outcome.problems:
        print(f"LOST: {problem}")
    return 0 if not outcome.problems else 1


if __name__ == "__main__":
    sys.exit(main())
