"""TLS and mutual TLS (glimpse3d.core.tls) with certificates from a throwaway CA (trustme), on loopback:

* a service (depth, in process, set up by ``create_server_from_config`` as ``python -m`` does) with a
  client CA refuses callers without a certificate, with a certificate from another CA and in plaintext,
  and answers a caller holding a certificate of the internal CA; the health probe works over mTLS;
* TLS files that are missing, unreadable or not what they should be stop the start naming the setting;
* the gateway process (``python -m glimpse3d.gateway``) with TLS: its gRPC port answers TLS clients
  that trust the CA and refuses plaintext ones, the HTTP facade answers ``/healthz`` over HTTPS, and a
  PreviewMatte call drives the depth stage over mTLS with the gateway's client certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glimpse3d.core import convert, tls
from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.config import ConfigError, ServerConfig, load_config
from glimpse3d.core.images import encode_png
from glimpse3d.core.rpc import create_channel, create_server_from_config
from glimpse3d.core.service import ArtifactIO, ComputeLimiter, ServiceRuntime, ServiceSettings
from glimpse3d.core.synthetic import render_image, textured_object
from glimpse3d.gateway import cli
from glimpse3d.services.depth import server as depth_server
from glimpse3d.v1 import depth_pb2, depth_pb2_grpc, glimpse3d_pb2, glimpse3d_pb2_grpc

TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10.0


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TIMEOUT_S)

    asyncio.run(bounded())


class Pki:
    """PEM files of an internal CA: a server certificate (localhost, 127.0.0.1) and a client certificate,
    plus a client certificate from an unrelated CA."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert, self.server_key = self._issue(self.ca, root / "server", "localhost", "127.0.0.1")
        self.client_cert, self.client_key = self._issue(self.ca, root / "client", "glimpse3d-gateway")
        other = trustme.CA()
        self.other_cert, self.other_key = self._issue(other, root / "other", "glimpse3d-gateway")

    @staticmethod
    def _issue(ca: trustme.CA, stem: Path, *names: str) -> tuple[Path, Path]:
        leaf = ca.issue_cert(*names)
        cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def mtls_config(pki: Pki) -> ServerConfig:
    return ServerConfig(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                        tls_client_ca_file=pki.ca_file, metrics_port=-1)


@asynccontextmanager
async def depth_service(config: ServerConfig, store: FileArtifactStore) -> AsyncIterator[int]:
    """The depth service (weight-free backend) served with ``config``, as ``service.serve`` sets it up."""
    settings = ServiceSettings(backend="", max_concurrency=1, max_waiting=4)
    runtime = ServiceRuntime(settings=settings, io=ArtifactIO(store, settings.artifact_max_bytes),
                             limiter=ComputeLimiter(1, 4))
    registration, load = depth_server.build(runtime)
    await asyncio.to_thread(load)
    server, port = create_server_from_config(registration, [depth_server.SERVICE_NAME], config)
    await server.start()
    await server.set_serving()
    try:
        yield port
    finally:
        await server.stop(0)


def photo_png() -> bytes:
    camera = orbit_camera(0.0, 0.0, 2.7, width=64, height=64)
    return encode_png(render_image(textured_object(seed=0, n=800), camera, background=(0.9, 0.9, 0.9), rgba=True))


async def estimate(port: int, store: FileArtifactStore, credentials: grpc.ChannelCredentials | None
                   ) -> depth_pb2.EstimateDepthResponse:
    image = convert.artifact_to_proto(store.put(photo_png(), "image/png"))
    channel = create_channel(f"127.0.0.1:{port}", retry_attempts=1, credentials=credentials)
    async with channel:
        return await depth_pb2_grpc.DepthStub(channel).Estimate(
            depth_pb2.EstimateDepthRequest(image=image), timeout=CALL_TIMEOUT_S)


def test_service_with_mtls_answers_only_callers_with_a_certificate_of_its_ca(pki: Pki, tmp_path: Path):
    store = FileArtifactStore(tmp_path / "artifacts")

    async def scenario() -> None:
        async with depth_service(mtls_config(pki), store) as port:
            refused = {
                "no client certificate": tls.channel_credentials(pki.ca_file),
                "a certificate of another CA": tls.channel_credentials(pki.ca_file, pki.other_cert, pki.other_key),
                "plaintext": None,
            }
            for what, credentials in refused.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await estimate(port, store, credentials)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (what, err.value.details())
            # The internal CA's client certificate: the call goes through and the work is done.
            good = tls.channel_credentials(pki.ca_file, pki.client_cert, pki.client_key)
            response = await estimate(port, store, good)
            assert response.backend == "silhouette" and response.depth.uri and response.mask.uri
            # A client that does not trust the server's CA refuses the server in turn.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await estimate(port, store, tls.channel_credentials(None, pki.client_cert, pki.client_key))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario())


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glimpse3d.core.healthcheck", "--timeout", "5"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**env, "PATH": os.environ.get("PATH", "")})


def test_health_probe_over_mtls(pki: Pki, tmp_path: Path):
    store = FileArtifactStore(tmp_path / "artifacts")

    async def scenario() -> None:
        async with depth_service(mtls_config(pki), store) as port:
            env = {"GLIMPSE3D_HOST": "0.0.0.0", "GLIMPSE3D_PORT": str(port),
                   "GLIMPSE3D_TLS_CERT_FILE": str(pki.server_cert), "GLIMPSE3D_TLS_KEY_FILE": str(pki.server_key),
                   "GLIMPSE3D_TLS_CLIENT_CA_FILE": str(pki.ca_file), "GLIMPSE3D_TLS_CA_FILE": str(pki.ca_file)}
            # The probe as a pod runs it: the server's own settings, its certificate as the client one.
            ok = await asyncio.to_thread(probe, {**env, "GLIMPSE3D_TLS_CLIENT_CERT_FILE": str(pki.server_cert),
                                                 "GLIMPSE3D_TLS_CLIENT_KEY_FILE": str(pki.server_key)})
            assert ok.returncode == 0, ok.stderr
            refused = await asyncio.to_thread(probe, env)  # no client certificate
            assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused.stderr
            bad = await asyncio.to_thread(probe, {**env, "GLIMPSE3D_TLS_CA_FILE": str(tmp_path / "missing.pem")})
            assert bad.returncode == 2 and "GLIMPSE3D_TLS_CA_FILE" in bad.stderr, bad.stderr

    run(scenario())


@pytest.mark.parametrize("setting", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
@pytest.mark.parametrize("fault", ["missing", "a directory", "not PEM", "a key for a certificate"])
def test_a_bad_tls_file_stops_the_start_naming_the_setting(pki: Pki, tmp_path: Path, setting: str, fault: str):
    if fault == "missing":
        bad = tmp_path / "missing.pem"
    elif fault == "a directory":
        bad = tmp_path
    elif fault == "not PEM":
        bad = tmp_path / "garbage.pem"
        bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    else:  # a private key where a certificate is expected, a certificate where a key is expected
        bad = pki.server_cert if setting == "tls_key_file" else pki.server_key
    env = {"GLIMPSE3D_TLS_CERT_FILE": str(pki.server_cert), "GLIMPSE3D_TLS_KEY_FILE": str(pki.server_key),
           "GLIMPSE3D_TLS_CLIENT_CA_FILE": str(pki.ca_file), tls.setting_name(setting): str(bad)}
    config = load_config(ServerConfig, env)

    async def scenario() -> None:
        with pytest.raises(ConfigError) as err:
            create_server_from_config([], ["glimpse3d.test.Tls"], config)
        assert err.value.field == tls.setting_name(setting)
        assert tls.setting_name(setting) in str(err.value) and str(bad) in str(err.value)

    run(scenario())


def test_tls_settings_come_in_pairs_and_a_key_must_match_its_certificate(pki: Pki):
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        ServerConfig(tls_cert_file=pki.server_cert)
    with pytest.raises(ConfigError, match="tls_client_cert_file and tls_client_key_file"):
        ServerConfig(tls_client_key_file=pki.client_key)
    with pytest.raises(ConfigError, match="needs tls_cert_file"):
        ServerConfig(tls_client_ca_file=pki.ca_file)
    with pytest.raises(ConfigError, match="does not match") as err:
        tls.server_credentials(pki.server_cert, pki.client_key)
    assert err.value.field == "tls_key_file"
    assert ServerConfig().tls_cert_file is None and tls.server_credentials_from_config(ServerConfig()) is None
    assert tls.certificate_host_name(pki.server_cert) == "localhost"


# --- the gateway process ---------------------------------------------------------------------------


def start_gateway(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ready = tmp_path / "gateway-ready.json"
    full_env = {
        **os.environ, "GLIMPSE3D_PORT": "0", "GLIMPSE3D_HTTP_PORT": "0", "GLIMPSE3D_METRICS_PORT": "-1",
        "GLIMPSE3D_DB_PATH": str(tmp_path / "jobs.sqlite3"), "GLIMPSE3D_ARTIFACTS_URL": str(tmp_path / "artifacts"),
        "GLIMPSE3D_READY_FILE": str(ready), "GLIMPSE3D_WEB_DIR": str(tmp_path / "no-web"),
        "GLIMPSE3D_STAGE_RETRY_BUDGET_S": "0", "GLIMPSE3D_GRACE_SECONDS": "1", **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", "glimpse3d.gateway"], env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 45
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_gateway(proc)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"the gateway did not start (exit {proc.returncode}): {stderr[-3000:]}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def gateway_tls_env(pki: Pki, depth_port: int) -> dict[str, str]:
    return {
        "GLIMPSE3D_TLS_CERT_FILE": str(pki.server_cert), "GLIMPSE3D_TLS_KEY_FILE": str(pki.server_key),
        "GLIMPSE3D_TLS_CA_FILE": str(pki.ca_file),
        "GLIMPSE3D_TLS_CLIENT_CERT_FILE": str(pki.client_cert), "GLIMPSE3D_TLS_CLIENT_KEY_FILE": str(pki.client_key),
        "GLIMPSE3D_DEPTH_ADDR": f"127.0.0.1:{depth_port}",
    }


def https_get(url: str, ca_file: Path | None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S, context=context) as response:
        return response.status, response.read()


def test_gateway_serves_tls_and_calls_stages_over_mtls(pki: Pki, tmp_path: Path):
    store = FileArtifactStore(tmp_path / "artifacts")

    async def scenario() -> None:
        async with depth_service(mtls_config(pki), store) as depth_port:
            proc, ready = await asyncio.to_thread(start_gateway, tmp_path, gateway_tls_env(pki, depth_port))
            try:
                address = f"127.0.0.1:{ready['port']}"
                # gRPC: a TLS client trusting the CA is answered...
                async with grpc.aio.secure_channel(address, tls.channel_credentials(pki.ca_file)) as channel:
                    health = await health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                    assert health.status == health_pb2.HealthCheckResponse.SERVING
                    # ...and a stage call goes to the depth service over mTLS with the gateway's certificate.
                    matte = await glimpse3d_pb2_grpc.Glimpse3DStub(channel).PreviewMatte(
                        glimpse3d_pb2.PreviewMatteRequest(image_data=photo_png(), resolution=64),
                        timeout=CALL_TIMEOUT_S)
                    assert matte.mask_png.startswith(b"\x89PNG") and 0 < matte.coverage < 1
                # A plaintext client gets no answer.
                async with grpc.aio.insecure_channel(address) as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                # The command-line client with --ca.
                assert await asyncio.to_thread(cli.main, ["--addr", address, "--ca", str(pki.ca_file), "jobs"]) == 0
                # HTTP: the facade answers over HTTPS for a client trusting the CA, not one that does not.
                url = f"https://127.0.0.1:{ready['http_port']}/api/v1/healthz"
                status, body = await asyncio.to_thread(https_get, url, pki.ca_file)
                assert status == 200 and json.loads(body)
                with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                    await asyncio.to_thread(https_get, url, None)
            finally:
                await asyncio.to_thread(stop_gateway, proc)

    run(scenario())


def test_gateway_without_its_client_certificate_cannot_reach_an_mtls_service(pki: Pki, tmp_path: Path):
    store = FileArtifactStore(tmp_path / "artifacts")

    async def scenario() -> None:
        async with depth_service(mtls_config(pki), store) as depth_port:
            env = gateway_tls_env(pki, depth_port)
            del env["GLIMPSE3D_TLS_CLIENT_CERT_FILE"], env["GLIMPSE3D_TLS_CLIENT_KEY_FILE"]
            proc, ready = await asyncio.to_thread(start_gateway, tmp_path, env)
            try:
                credentials = tls.channel_credentials(pki.ca_file)
                async with grpc.aio.secure_channel(f"127.0.0.1:{ready['port']}", credentials) as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await glimpse3d_pb2_grpc.Glimpse3DStub(channel).PreviewMatte(
                            glimpse3d_pb2.PreviewMatteRequest(image_data=photo_png(), resolution=64),
                            timeout=CALL_TIMEOUT_S)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            finally:
                await asyncio.to_thread(stop_gateway, proc)

    run(scenario())


def test_gateway_with_a_bad_certificate_does_not_start(pki: Pki, tmp_path: Path):
    env = gateway_tls_env(pki, 1)
    env["GLIMPSE3D_TLS_CLIENT_CERT_FILE"] = str(tmp_path / "nowhere.crt")
    with pytest.raises(AssertionError, match="GLIMPSE3D_TLS_CLIENT_CERT_FILE"):
        start_gateway(tmp_path, env)


def test_cli_names_a_bad_ca_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["--ca", str(tmp_path / "missing.pem"), "jobs"]) == 2
    assert "--ca" in capsys.readouterr().err
