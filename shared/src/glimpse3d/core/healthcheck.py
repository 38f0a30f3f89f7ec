"""``python -m glimpse3d.core.healthcheck``: exit 0 when the local gRPC server reports SERVING.

The container images run it as their ``HEALTHCHECK`` (deploy/docker). It asks ``grpc.health.v1``
``Check`` for the overall status (``""``, or ``--service NAME``) of the server this container runs:
``--address``, else ``GLIMPSE3D_HOST``/``GLIMPSE3D_PORT`` as the server reads them, a wildcard bind
host (``0.0.0.0``, ``::``) being probed on loopback. Kubernetes does not need it: the chart probes
the same service with native gRPC probes.

A server that serves TLS (``GLIMPSE3D_TLS_CERT_FILE`` set) is probed over TLS: its certificate is
verified against ``GLIMPSE3D_TLS_CA_FILE`` (else the system roots) for the first host name it names
(or ``--server-name``), and under mutual TLS the probe presents ``GLIMPSE3D_TLS_CLIENT_CERT_FILE`` /
``GLIMPSE3D_TLS_CLIENT_KEY_FILE``, the same settings the server's own outgoing calls use.

Exit status: 0 SERVING; 1 anything else (NOT_SERVING, unreachable, too slow, TLS handshake refused),
with one line on stderr saying what was seen; 2 a bad setting (``GLIMPSE3D_PORT=0`` cannot be probed,
a TLS file missing or not a certificate/key).
Only grpcio and grpcio-health-checking are imported (and, with TLS, ``cryptography``), so a probe
stays cheap.
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


def check(address: str, service: str = "", timeout: float = 3.0, *,
          credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None) -> tuple[bool, str]:
    """(serving, what was seen) for ``service`` at ``address``, waiting at most ``timeout`` seconds;
    over TLS with ``credentials``, expecting the certificate of ``server_name`` (default: the address's host)."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
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


def probe_tls(config: ServerConfig,
              server_name: str | None = None) -> tuple[grpc.ChannelCredentials | None, str | None]:
    """(credentials, expected server name) to probe a server started with ``config``; (None, None) when it
    serves plaintext. ConfigError naming the setting for a TLS file that cannot be used."""
    if config.tls_cert_file is None:
        return None, None
    from glimpse3d.core import tls  # cryptography only when TLS is on

    credentials = tls.channel_credentials(
        config.tls_ca_file, config.tls_client_cert_file, config.tls_client_key_file,
        settings=(tls.setting_name("tls_ca_file"), tls.setting_name("tls_client_cert_file"),
                  tls.setting_name("tls_client_key_file")))
    return credentials, server_name or tls.certificate_host_name(config.tls_cert_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse3d.core.healthcheck",
                                     description="Exit 0 when the local gRPC server reports SERVING (grpc.health.v1).")
    parser.add_argument("--address", help="host:port to probe (default: from GLIMPSE3D_HOST/GLIMPSE3D_PORT)")
    parser.add_argument("--service", default="", help='full service name (default "": the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--server-name", help="with TLS, the host name the server's certificate must carry "
                        "(default: the first one in GLIMPSE3D_TLS_CERT_FILE)")
    ns = parser.parse_args(argv)
    if not ns.timeout > 0:
        parser.error(f"--timeout must be positive, got {ns.timeout}")
    try:
        config = load_config(ServerConfig)
        credentials, server_name = probe_tls(config, ns.server_name)
        address = ns.address or probe_address(config)
    except ConfigError as err:
        print(f"healthcheck: {err}", file=sys.stderr)
        return 2
    serving, seen = check(address, ns.service, ns.timeout, credentials=credentials, server_name=server_name)
    if not serving:
        print(f"healthcheck: not serving: {seen}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
