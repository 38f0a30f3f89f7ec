"""Gateway process wiring: job store, artifact store, service clients, app and gRPC server."""

from __future__ import annotations

import asyncio
import logging

from glimpse3d.core.artifacts import open_store
from glimpse3d.core.config import ServerConfig, load_config
from glimpse3d.core.logs import configure_logging
from glimpse3d.core.rpc import create_server_from_config
from glimpse3d.core.service import write_ready_file
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.pipeline import ServiceClients, ServicePipeline
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.v1 import glimpse3d_pb2_grpc

log = logging.getLogger(__name__)


async def serve(server_config: ServerConfig, config: GatewayConfig) -> None:
    """Serve until SIGTERM; jobs left QUEUED/RUNNING resume at the next start."""
    artifacts = open_store(config.artifacts_url)
    store = JobStore(config.db_path)
    clients = ServiceClients(config)
    app = GatewayApp(config, store, artifacts, ServicePipeline(config, clients, artifacts))
    server, port = create_server_from_config(
        [(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, Glimpse3DServicer(app))], [SERVICE_NAME], server_config
    )

    async def load() -> None:
        await app.start()
        if config.ready_file is not None:
            write_ready_file(config.ready_file, port, server.metrics_port)
        log.info("gateway ready", extra={"port": port})

    try:
        await server.serve_forever(load)
    finally:
        await app.close()
        await clients.close()
        store.close()


def main() -> None:
    server_config = load_config(ServerConfig)
    configure_logging("gateway", server_config.log_level, server_config.log_json)
    asyncio.run(serve(server_config, load_config(GatewayConfig)))
