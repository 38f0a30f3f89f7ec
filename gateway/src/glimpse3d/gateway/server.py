"""Gateway process wiring: job store, artifact store, service clients, app, gRPC server and the
HTTP/JSON facade (uvicorn on the same event loop, calling the same app)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from glimpse3d.core.artifacts import ArtifactStore, store_from_env
from glimpse3d.core.config import ServerConfig, load_config
from glimpse3d.core.logs import configure_logging
from glimpse3d.core.rpc import create_server_from_config
from glimpse3d.core.tls import check_server_files as check_tls_files
from glimpse3d.core.tls import reloading_channel_credentials_from_config
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.auth import (
    Authenticator,
    AuthInterceptor,
    TicketSigner,
    authenticator_from_config,
    gateway_hosts,
    is_loopback,
)
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext, HttpServer, create_app
from glimpse3d.gateway.http.server import HttpTLS
from glimpse3d.gateway.pipeline import ServiceClients, ServicePipeline
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import open_job_store
from glimpse3d.v1 import glimpse3d_pb2_grpc

log = logging.getLogger(__name__)


def write_ready_file(path: Path, **fields: object) -> None:
    """Atomically write ``{**fields, "pid"}`` as JSON (what launchers wait for)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**fields, "pid": os.getpid()}))
    os.replace(tmp, path)


def public_http_url(config: GatewayConfig, http: HttpServer | None, tls: bool) -> str | None:
    """Where clients reach the facade: ``http_public_url``, else the loopback address it listens on, else
    None (links stay relative: behind an ingress only the operator knows the public address)."""
    if config.http_public_url:
        return config.http_public_url.rstrip("/")
    if http is None or http.port is None or not is_loopback(config.http_host):
        return None
    return f"{'https' if tls else 'http'}://127.0.0.1:{http.port}"


def http_tls(server_config: ServerConfig) -> HttpTLS | None:
    """HTTPS for the facade with the gRPC port's certificate, key and client CA; None without TLS."""
    if server_config.tls_cert_file is None or server_config.tls_key_file is None:
        return None
    return HttpTLS(server_config.tls_cert_file, server_config.tls_key_file, server_config.tls_client_ca_file)


def http_server(config: GatewayConfig, app: GatewayApp, artifacts: ArtifactStore, grace_s: float,
                auth: Authenticator | None = None, tls: HttpTLS | None = None,
                tickets: TicketSigner | None = None) -> HttpServer | None:
    """The HTTP facade over ``app`` (None when ``http_port`` is -1), checking callers with ``auth``,
    over HTTPS with ``tls``, signing tickets and links with ``tickets``."""
    if config.http_port < 0:
        return None
    context = HttpContext(app, artifacts, heartbeat_s=config.http_heartbeat_s, auth=auth,
                          tickets=tickets or TicketSigner(config.auth_ticket_secret))
    return HttpServer(create_app(context, web_dir=config.web_dir), config.http_host, config.http_port,
                      streams=context.streams, grace_s=grace_s, header_timeout_s=config.http_header_timeout_s,
                      body_timeout_s=config.http_body_timeout_s, max_connections=config.http_max_connections,
                      tls=tls)


async def serve(server_config: ServerConfig, config: GatewayConfig) -> None:
    """Serve until SIGTERM; jobs left QUEUED/RUNNING resume at the next start. An artifact store that
    cannot be used (S3 unreachable) stops the gateway at once with Unavailable. Without authentication
    configured it starts only on loopback (ConfigError otherwise; see docs/auth.md). With TLS configured
    (``GLIMPSE3D_TLS_*``, docs/deploy.md) the gRPC port and the HTTP facade serve TLS with the same
    certificate, and the stage channels verify the services against ``tls_ca_file`` and present
    ``tls_client_cert_file``; a TLS file that cannot be used stops the start with a ConfigError naming it.
    Renewed TLS files are taken without a restart (new connections and new stage channels use them)."""
    check_tls_files(server_config)
    auth = authenticator_from_config(config, gateway_hosts(server_config, config))
    artifacts = store_from_env(url=config.artifacts_url)
    await asyncio.to_thread(artifacts.ensure_ready)
    store = open_job_store(config)
    clients = ServiceClients(config, reloading_channel_credentials_from_config(server_config))
    app = GatewayApp(config, store, artifacts, ServicePipeline(config, clients, artifacts))
    tickets = TicketSigner(config.auth_ticket_secret)  # one signer: the facade accepts the links Export makes
    tls = http_tls(server_config)
    http = http_server(config, app, artifacts, server_config.grace_seconds, auth, tls, tickets)
    servicer = Glimpse3DServicer(app, tickets, http_base=lambda: public_http_url(config, http, tls is not None))
    server, port = create_server_from_config(
        [(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, servicer)], [SERVICE_NAME], server_config,
        interceptors=[AuthInterceptor(auth)] if auth is not None else [],
    )
    app.register_metrics(server.registry)
    server.on_drain(app.drain)  # SIGTERM: refuse new jobs and rounds, let running versions finish

    async def load() -> None:
        await app.start()
        http_port = await http.start() if http is not None else None
        if config.ready_file is not None:
            write_ready_file(config.ready_file, port=port, metrics_port=server.metrics_port, http_port=http_port)
        log.info("gateway ready", extra={"port": port, "http_port": http_port})

    try:
        await server.serve_forever(load)
    finally:
        if http is not None:
            await http.stop()
        await app.close()
        await clients.close()
        store.close()


def main() -> None:
    server_config = load_config(ServerConfig)
    configure_logging("gateway", server_config.log_level, server_config.log_json)
    asyncio.run(serve(server_config, load_config(GatewayConfig)))
