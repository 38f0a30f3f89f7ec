"""``python -m glimpse3d.core.healthcheck``: exit 0 when the local gRPC server reports SERVING.

The container images run it as their ``HEALTHCHECK`` (deploy/docker). It asks ``grpc.health.v1``
``Check`` for the overall status (``""``, or ``--service NAME``) of the server this container runs:
``--address``, else ``GLIMPSE3D_HOST``/``GLIMPSE3D_PORT`` as the server reads them, a wildcard bind
host (``0.0.0.0``, ``::``) being probed on loopback. Kubernetes does not need it: the chart probes
the same service with native gRPC probes.

Exit status: 0 SERVING; 1 anything else (NOT_SERVING, unreachable, too slow), with one line on
stderr saying what was seen; 2 a bad setting (``GLIMPSE3D_PORT=0`` cannot be probed).
Only grpcio and grpcio-health-checking are imported, so a probe stays cheap.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glimpse3d.core.config import ConfigError, ServerConfig, load_config

_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}


def probe_address(config: ServerConfig) -> str:
    """``host:port`` to probe for a server started with ``config``; :class:`ConfigError` for port 0."""
    if config.port == 0:
        raise ConfigError("GLIMPSE3D_PORT is 0 (a free port chosen at start-up): pass --address HOST:PORT",
                          field="GLIMPSE3D_PORT")
    host = config.host.strip()
    host = _LOOPBACK.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{config.port}"


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving, what was seen) for ``service`` at ``address``, waiting at most ``timeout`` seconds."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # typeshed's HealthStub declares no methods (the generated __init__ assigns them).
            response = stub.Check(  # pyright: ignore[reportAttributeAccessIssue]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            return False, f"{address}: {code.name if code else 'error'}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse3d.core.healthcheck",
                                     description="Exit 0 when the local gRPC server reports SERVING (grpc.health.v1).")
    parser.add_argument("--address", help="host:port to probe (default: from GLIMPSE3D_HOST/GLIMPSE3D_PORT)")
    parser.add_argument("--service", default="", help='full service name (default "": the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    ns = parser.parse_args(argv)
    if not ns.timeout > 0:
        parser.error(f"--timeout must be positive, got {ns.timeout}")
    try:
        address = ns.address or probe_address(load_config(ServerConfig))
    except ConfigError as err:
        print(f"healthcheck: {err}", file=sys.stderr)
        return 2
    serving, seen = check(address, ns.service, ns.timeout)
    if not serving:
        print(f"healthcheck: not serving: {seen}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
