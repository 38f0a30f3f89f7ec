"""A real S3 endpoint for tests: moto's threaded server on 127.0.0.1 and a free port.

Use the ``s3_server`` fixture (session scoped): import ``s3_server_fixture`` into a test module or a
conftest, then request ``s3_server``.
Moto keeps its state in-process and does not check credentials; give each test its own bucket.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from moto.server import ThreadedMotoServer

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server listens and the (arbitrary) credentials to use with it."""

    host: str
    port: int
    access_key: str = "testing-access-key"
    secret_key: str = "testing-secret-key"
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        """``host:port``, the form the minio SDK takes."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(host: str, port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _start_bounded(server: ThreadedMotoServer, host: str, port: int, timeout: float) -> None:
    """``ThreadedMotoServer.start`` waits forever if binding fails; bound it."""
    deadline = time.monotonic() + timeout
    starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
    starter.start()
    starter.join(timeout)
    if starter.is_alive():
        raise TimeoutError(f"moto S3 server on {host}:{port} did not start within {timeout}s")
    _wait_until_listening(host, port, deadline)


@contextmanager
def run_moto_server(host: str = "127.0.0.1", timeout: float = START_TIMEOUT_S) -> Iterator[S3Server]:
    """Start moto's S3 server on a free port, yield where it is, stop it afterwards."""
    port = free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    _start_bounded(server, host, port, timeout)
    logger.info("moto S3 server listening on %s:%d", host, port)
    try:
        yield S3Server(host=host, port=port)
    finally:
        server.stop()


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    """Session-scoped moto S3 server; request it as ``s3_server``."""
    with run_moto_server() as server:
        yield server
