"""Locust users of the gateway's cheap gRPC calls: GetJob, ListJobs and the gRPC health check.

:mod:`bench.bench_load` runs this file with ``python -m locust -f bench/locust_grpc.py --headless`` in a
process of its own (locust monkey-patches the standard library for gevent at import). gRPC's core
runs its own threads, so it is switched to gevent's loop (``grpc.experimental.gevent.init_gevent``)
before any channel exists; without that, calls block the whole gevent hub.

Settings come from the environment: ``GLIMPSE3D_LOAD_ADDR`` (the gateway's ``host:port``),
``GLIMPSE3D_LOAD_JOBS`` (job names GetJob reads, comma separated) and ``GLIMPSE3D_LOAD_TENANT``.
Each user calls as fast as the gateway answers (no wait time); each call is one locust request of
type ``grpc`` named after the method, failed when it ends with any status other than OK.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from locust import User, constant, task  # noqa: E402

from glimpse3d.v1 import glimpse3d_pb2 as pb  # noqa: E402
from glimpse3d.v1 import glimpse3d_pb2_grpc  # noqa: E402

RPC_TIMEOUT_S = 10.0


class GatewayUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(os.environ["GLIMPSE3D_LOAD_ADDR"])
        self.stub = glimpse3d_pb2_grpc.Glimpse3DStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("x-glimpse3d-tenant", os.environ.get("GLIMPSE3D_LOAD_TENANT", "load")),)
        names = [n for n in os.environ.get("GLIMPSE3D_LOAD_JOBS", "").split(",") if n]
        if not names:
            raise RuntimeError("GLIMPSE3D_LOAD_JOBS names no job for GetJob to read")
        self.names = itertools.cycle(names)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        error: Exception | None = None
        try:
            fn()
        except grpc.RpcError as err:
            error = err
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=1000 * (time.perf_counter() - start), response_length=0,
            exception=error, context={},
        )

    @task
    def get_job(self) -> None:
        request = pb.GetJobRequest(name=next(self.names))
        self._call("GetJob", lambda: self.stub.GetJob(request, metadata=self.metadata, timeout=RPC_TIMEOUT_S))

    @task
    def list_jobs(self) -> None:
        request = pb.ListJobsRequest(page_size=10)
        self._call("ListJobs", lambda: self.stub.ListJobs(request, metadata=self.metadata, timeout=RPC_TIMEOUT_S))

    @task
    def health(self) -> None:
        request = health_pb2.HealthCheckRequest(service="")
        check = self.health_stub.Check  # pyright: ignore[reportAttributeAccessIssue]  (typeshed's HealthStub has no methods)
        self._call("Health", lambda: check(request, timeout=RPC_TIMEOUT_S))
