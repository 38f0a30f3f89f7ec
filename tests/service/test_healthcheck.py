"""The images' HEALTHCHECK (python -m glimpse3d.core.healthcheck) against a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Awaitable

import pytest

from glimpse3d.core import healthcheck
from glimpse3d.core.config import ConfigError, ServerConfig
from glimpse3d.core.rpc import create_server

SERVICE = "glimpse3d.test.Probe"


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout=60)

    asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command the Dockerfiles' HEALTHCHECK runs, as a separate process."""
    return subprocess.run([sys.executable, "-m", "glimpse3d.core.healthcheck", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def test_serving_only_once_the_server_says_so():
    async def scenario() -> None:
        server, port = create_server([], [SERVICE], address="127.0.0.1:0", metrics_port=None)
        await server.start()
        try:
            address = f"127.0.0.1:{port}"
            serving, seen = await asyncio.to_thread(healthcheck.check, address)
            assert not serving and seen == f"{address}: NOT_SERVING"  # models still loading
            await server.set_serving()
            assert await asyncio.to_thread(healthcheck.check, address) == (True, f"{address}: SERVING")
            assert (await asyncio.to_thread(healthcheck.check, address, SERVICE))[0]
            unknown = await asyncio.to_thread(healthcheck.check, address, "glimpse3d.test.Missing")
            assert unknown[0] is False and "NOT_FOUND" in unknown[1]
            # The probe as the image runs it: address from GLIMPSE3D_HOST (a wildcard) and GLIMPSE3D_PORT.
            env = {"GLIMPSE3D_HOST": "0.0.0.0", "GLIMPSE3D_PORT": str(port), "PATH": ""}
            result = await asyncio.to_thread(probe, env=env)
            assert result.returncode == 0, result.stderr
            await server.set_not_serving()
            result = await asyncio.to_thread(probe, "--address", address)
            assert result.returncode == 1 and "not serving" in result.stderr and "NOT_SERVING" in result.stderr
        finally:
            await server.stop(0)

    run(scenario())


def test_nothing_listening_is_unhealthy_with_the_reason():
    port = free_port()
    result = probe("--address", f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"127.0.0.1:{port}: UNAVAILABLE" in result.stderr


def test_bad_settings_exit_2_naming_them():
    result = probe(env={"GLIMPSE3D_PORT": "0", "PATH": ""})
    assert result.returncode == 2 and "GLIMPSE3D_PORT is 0" in result.stderr
    result = probe(env={"GLIMPSE3D_PORT": "http", "PATH": ""})
    assert result.returncode == 2 and "GLIMPSE3D_PORT='http' is invalid" in result.stderr
    result = probe("--timeout", "0")
    assert result.returncode == 2 and "--timeout must be positive" in result.stderr


@pytest.mark.parametrize("host, expected", [
    ("0.0.0.0", "127.0.0.1:50051"),
    ("::", "[::1]:50051"),
    ("127.0.0.1", "127.0.0.1:50051"),
    ("10.1.2.3", "10.1.2.3:50051"),
    ("fd00::5", "[fd00::5]:50051"),
])
def test_probe_address(host, expected):
    assert healthcheck.probe_address(ServerConfig(host=host, port=50051)) == expected


def test_probe_address_refuses_port_zero():
    with pytest.raises(ConfigError, match="GLIMPSE3D_PORT is 0"):
        healthcheck.probe_address(ServerConfig(port=0))
