"""gRPC plumbing shared by the gateway and every service: error mapping, server, channels."""

from glimpse3d.core.rpc.client import create_channel, default_timeout_interceptors, retry_service_config
from glimpse3d.core.rpc.errors import (
    DOMAIN,
    STATUS_CODES,
    error_from_rpc,
    rich_status_of,
    status_code_for,
    to_rpc_status,
)
from glimpse3d.core.rpc.interceptors import ObservingInterceptor, RpcMetrics
from glimpse3d.core.rpc.server import Registration, Server, create_server, create_server_from_config

__all__ = [
    "DOMAIN",
    "STATUS_CODES",
    "ObservingInterceptor",
    "Registration",
    "RpcMetrics",
    "Server",
    "create_channel",
    "create_server",
    "create_server_from_config",
    "default_timeout_interceptors",
    "error_from_rpc",
    "retry_service_config",
    "rich_status_of",
    "status_code_for",
    "to_rpc_status",
]
