"""``make chaos``: jobs keep going while every model service is killed and restarted under them.

Starts the stack (five services and the gateway as processes on loopback), submits ``--jobs`` jobs of
``--rounds`` automatic enhancement rounds each, and meanwhile, every ``--every`` seconds, kills one
service with SIGKILL (each service in turn) and starts it again on the same port ``--down`` seconds
later. Exits 0 when every job SUCCEEDED with no error other than a rejected round (a round the photo
check refused, which is the pipeline's answer and not a failure), printing how long it took, how many
kills there were and how many stage calls the gateway retried; 1 otherwise.

    python tests/e2e/chaos.py --jobs 10 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

# Run as a script, this folder is on sys.path: the helpers are the restart tests' own.
from test_restarts import BUDGET_S, RES, SAMPLE, TENANT, kill, retries_logged, service_env, start_service

from glimpse3d.gateway.stack import REQUIRED_SERVICES, start_stack
from glimpse3d.v1 import glimpse3d_pb2 as pb
from glimpse3d.v1 import glimpse3d_pb2_grpc


def reason_of(job: pb.Job) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in job.error.details:
        if detail.Unpack(info):  # False for the other detail types
            return info.reason
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=float, default=8.0, help="seconds between two kills")
    parser.add_argument("--down", type=float, default=3.0, help="seconds a killed service stays away")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glimpse3d-chaos-") as tmp:
        state = Path(tmp)
        env = {"GLIMPSE3D_STAGE_RETRY_BUDGET_S": str(BUDGET_S), "GLIMPSE3D_STAGE_RETRY_MAX_BACKOFF_S": "1"}
        with start_stack(state, env=env, timeout_s=180.0, service_env=service_env(state), http_port=-1) as stack:
            channel = grpc.insecure_channel(stack.gateway_addr)
            client = glimpse3d_pb2_grpc.Glimpse3DStub(channel)
            start = time.monotonic()
            names = [
                client.CreateJob(
                    pb.CreateJobRequest(
                        image_data=SAMPLE.read_bytes(),
                        options=pb.JobOptions(resolution=RES, enhance_rounds=ns.rounds, seed=i),
                    ),
                    metadata=TENANT,
                    timeout=30,
                ).name
                for i in range(ns.jobs)
            ]
            stop = threading.Event()
            kills: list[str] = []

            def killer() -> None:
                for service in itertools.cycle(REQUIRED_SERVICES):
                    if stop.wait(ns.every):
                        return
                    port = kill(stack, service)
                    kills.append(service)
                    time.sleep(ns.down)
                    start_service(stack, service, port)

            thread = threading.Thread(target=killer, daemon=True)
            thread.start()
            done: dict[str, pb.Job] = {}
            try:
                while len(done) < len(names) and time.monotonic() - start < ns.timeout:
                    for name in names:
                        if name not in done:
                            job = client.GetJob(pb.GetJobRequest(name=name), metadata=TENANT, timeout=30)
                            if job.done:
                                done[name] = job
                    time.sleep(0.5)
            finally:
                stop.set()
                thread.join(120)
            elapsed = time.monotonic() - start
            retried = {s: retries_logged(stack, s) for s in REQUIRED_SERVICES}
            channel.close()
    failed = [
        (name, job.error.message)
        for name, job in done.items()
        if job.state != pb.Job.SUCCEEDED or (job.HasField("error") and reason_of(job) != "ROUND_REJECTED")
    ]
    versions = sum(len(job.versions) for job in done.values())
    print(
        f"{len(done)}/{len(names)} jobs done in {elapsed:.0f} s, {versions} versions; {len(kills)} kills "
        f"({', '.join(kills)}); stage calls retried: {retried}"
    )
    for name, message in failed:
        print(f"FAILED {name}: {message}")
    return 0 if len(done) == len(names) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
