"""Renewed TLS files are taken without a restart (glimpse3d.core.tls), on loopback with throwaway CAs (trustme):

* a gRPC server made by ``create_server_from_config`` (mTLS) shows certificate B to a new connection once
  the files of certificate A were replaced by B's, still requires a client certificate of its client CA,
  and keeps serving B when the renewed file is garbage (logging an error naming the setting);
* the HTTPS facade (uvicorn) does the same for new connections;
* the gateway's stage channels (``ServiceClients``) present the renewed client certificate: a service
  refusing the old one answers once the files were renewed, without a new ``ServiceClients``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import urllib.request
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glimpse3d.core import tls
from glimpse3d.core.config import ServerConfig
from glimpse3d.core.rpc import create_server_from_config
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http.server import HttpServer, HttpTLS
from glimpse3d.gateway.pipeline import ServiceClients

TIMEOUT_S = 25.0
CALL_TIMEOUT_S = 5.0
GARBAGE = b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TIMEOUT_S)

    asyncio.run(bounded())


def replace(path: Path, data: bytes) -> None:
    """Write ``path`` as a renewal does: a new file moved over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Issued:
    """A CA (its PEM file) and a leaf certificate it signed for ``names``."""

    def __init__(self, root: Path, stem: str, *names: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = root / f"{stem}-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = self.ca.issue_cert(*names)
        self.chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        self.key = leaf.private_key_pem.bytes()
        self.der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)

    def install(self, cert_file: Path, key_file: Path) -> None:
        replace(key_file, self.key)
        replace(cert_file, self.chain)


def peer_certificate(port: int, ca_file: Path, client: Issued | None = None, alpn: str | None = None) -> bytes:
    """DER of the certificate the server on 127.0.0.1:``port`` shows a new connection trusting ``ca_file``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    if client is not None:
        cert, key = ca_file.with_name("client.crt"), ca_file.with_name("client.key")
        cert.write_bytes(client.chain)
        key.write_bytes(client.key)
        context.load_cert_chain(cert, key)
    if alpn is not None:
        context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as raw:
        with context.wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


async def health(port: int, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials,
                                       options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        return reply.status


def test_grpc_server_takes_a_renewed_certificate_and_keeps_the_old_one_over_garbage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    a, b = Issued(tmp_path, "a", "localhost", "127.0.0.1"), Issued(tmp_path, "b", "localhost", "127.0.0.1")
    client = Issued(tmp_path, "client", "glimpse3d-gateway")  # its CA is the server's client CA
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    a.install(cert_file, key_file)
    config = ServerConfig(tls_cert_file=cert_file, tls_key_file=key_file, tls_client_ca_file=client.ca_file,
                          metrics_port=-1, host="127.0.0.1", port=0)
    (tmp_path / "client.crt").write_bytes(client.chain)
    (tmp_path / "client.key").write_bytes(client.key)
    with_client = {ca: tls.channel_credentials(ca, tmp_path / "client.crt", tmp_path / "client.key")
                   for ca in (a.ca_file, b.ca_file)}
    serving = health_pb2.HealthCheckResponse.SERVING

    async def scenario() -> None:
        server, port = create_server_from_config([], ["glimpse3d.test.Reload"], config)
        await server.start()
        await server.set_serving()
        try:
            assert await asyncio.to_thread(peer_certificate, port, a.ca_file, client, "h2") == a.der
            assert await health(port, with_client[a.ca_file]) == serving
            b.install(cert_file, key_file)  # the renewal: a new connection sees B, no restart
            assert await asyncio.to_thread(peer_certificate, port, b.ca_file, client, "h2") == b.der
            assert await health(port, with_client[b.ca_file]) == serving
            with pytest.raises(grpc.aio.AioRpcError) as err:  # A's CA no longer vouches for the server
                await health(port, with_client[a.ca_file])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the client certificate is still required
                await health(port, tls.channel_credentials(b.ca_file))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with caplog.at_level(logging.ERROR, logger="glimpse3d.core.tls"):
                replace(cert_file, GARBAGE)  # a broken renewal: B is still served
                assert await health(port, with_client[b.ca_file]) == serving
                assert await asyncio.to_thread(peer_certificate, port, b.ca_file, client, "h2") == b.der
            assert any("GLIMPSE3D_TLS_CERT_FILE" in r.getMessage() for r in caplog.records), caplog.text
        finally:
            await server.stop(0)

    run(scenario())


def test_https_facade_takes_a_renewed_certificate_and_keeps_the_old_one_over_garbage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    a, b = Issued(tmp_path, "a", "localhost", "127.0.0.1"), Issued(tmp_path, "b", "localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    a.install(cert_file, key_file)
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    def get(port: int, ca_file: Path) -> bytes:
        context = ssl.create_default_context(cafile=str(ca_file))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/ping", timeout=CALL_TIMEOUT_S,
                                    context=context) as response:
            return response.read()

    async def scenario() -> None:
        http = HttpServer(app, "127.0.0.1", 0, grace_s=1, tls=HttpTLS(cert_file, key_file))
        port = await http.start()
        try:
            assert await asyncio.to_thread(peer_certificate, port, a.ca_file) == a.der
            assert b"yes" in await asyncio.to_thread(get, port, a.ca_file)
            b.install(cert_file, key_file)
            assert await asyncio.to_thread(peer_certificate, port, b.ca_file) == b.der
            assert b"yes" in await asyncio.to_thread(get, port, b.ca_file)
            with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
                await asyncio.to_thread(get, port, a.ca_file)
            with caplog.at_level(logging.ERROR, logger="glimpse3d.core.tls"):
                replace(key_file, b"not a key")
                assert await asyncio.to_thread(peer_certificate, port, b.ca_file) == b.der
                assert b"yes" in await asyncio.to_thread(get, port, b.ca_file)
            assert any("GLIMPSE3D_TLS_KEY_FILE" in r.getMessage() for r in caplog.records), caplog.text
        finally:
            await http.stop()

    run(scenario())


def test_stage_channels_present_a_renewed_client_certificate(tmp_path: Path):
    server_pki = Issued(tmp_path, "server", "localhost", "127.0.0.1")
    trusted = Issued(tmp_path, "trusted", "glimpse3d-gateway")  # the service's client CA signed this one
    stranger = Issued(tmp_path, "stranger", "glimpse3d-gateway")
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    server_pki.install(cert_file, key_file)
    client_cert, client_key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    stranger.install(client_cert, client_key)
    service = ServerConfig(tls_cert_file=cert_file, tls_key_file=key_file, tls_client_ca_file=trusted.ca_file,
                           metrics_port=-1, host="127.0.0.1", port=0)
    gateway = ServerConfig(tls_ca_file=server_pki.ca_file, tls_client_cert_file=client_cert,
                           tls_client_key_file=client_key, metrics_port=-1)
    credentials = tls.reloading_channel_credentials_from_config(gateway)
    assert credentials is not None

    async def scenario() -> None:
        server, port = create_server_from_config([], ["glimpse3d.test.Reload"], service)
        await server.start()
        await server.set_serving()
        addr = f"localhost:{port}"
        config = GatewayConfig(depth_addr=addr, reconstruction_addr=addr, multiview_addr=addr, diffusion_addr=addr,
                               backprojection_addr=addr)
        clients = ServiceClients(config, credentials)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:  # a certificate the service does not trust
                await clients.health["depth"](health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            trusted.install(client_cert, client_key)  # renewed by the right CA: the next call uses it
            reply = await clients.health["depth"](health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING and credentials.generation == 1
            replace(client_cert, GARBAGE)  # a broken renewal: the channels stay as they are
            reply = await clients.health["depth"](health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING and credentials.generation == 1
        finally:
            await clients.close()
            await server.stop(0)

    run(scenario())
