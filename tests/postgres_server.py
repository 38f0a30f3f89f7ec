"""A real PostgreSQL server for tests: a throwaway cluster on 127.0.0.1, a free port and a temp dir.

``initdb`` refuses to run as root, so under root the cluster belongs to the ``postgres`` system user
(Debian's package creates it) and every server command runs through ``runuser -u postgres --``; as
an ordinary user it simply belongs to that user. The unix socket lives in the temp dir, fsync is
off (a test cluster need not survive a power cut), start and stop are bounded in time, and the whole
directory is removed afterwards.

Authentication: the superuser ``postgres`` connects over the unix socket without a password (admin
work: creating databases and roles); TCP connections need a password (scram-sha-256), as in a
deployment. :data:`ROLE` / :data:`PASSWORD` is the role the gateway tests connect as.

Use the ``postgres`` fixture (session scoped, in tests/conftest.py); where no PostgreSQL is installed
it skips, or fails when ``CI=true`` (``make postgres`` installs Debian's package).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
ROLE = "glimpse"
PASSWORD = "test-only-s3cret"
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "deadlock_timeout": "100ms",  # the deadlock-retry test waits this long for PostgreSQL to notice
    "shared_buffers": "16MB",
}


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) were found."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl (Debian's layout),
    else the directory of an ``initdb`` on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(re.sub(r"\D", "", Path(p).parent.parent.name) or 0))
    if not candidates and (on_path := shutil.which("initdb")):
        candidates = [on_path]
    for initdb in reversed(candidates):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresMissing("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
                          "or on PATH; run `make postgres` (installs Debian's postgresql package)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    """A running test cluster: where it listens and how to reach it."""

    host: str
    port: int
    socket_dir: Path
    bindir: Path

    def url(self, dbname: str, *, password: bool = True, user: str = ROLE) -> str:
        """``postgresql://`` URL of ``dbname`` over TCP (with the role's password unless told not to)."""
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{user}{secret}@{self.host}:{self.port}/{dbname}"

    def admin(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the unix socket; returns psql's unaligned output."""
        out = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-p", str(self.port), "-U", "postgres", "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if out.returncode:
            raise RuntimeError(f"psql failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database owned by :data:`ROLE`; returns its name."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.admin(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return name


def _as_owner(owner: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


def _run(argv: list[str], timeout: float) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode:
        raise RuntimeError(f"{Path(argv[argv.index('--') + 1] if '--' in argv else argv[0]).name} failed "
                           f"({out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")


def _cluster_owner() -> str | None:
    """``postgres`` when running as root (initdb refuses root), else None (the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing("running as root but there is no `postgres` system user to own the test cluster; "
                              "Debian's postgresql package creates it (`make postgres`)") from None
    return "postgres"


@contextmanager
def run_postgres(host: str = "127.0.0.1") -> Iterator[PostgresServer]:
    """initdb a cluster in a temp dir, start it on a free port, yield it, stop it and delete it."""
    bindir = find_bindir()
    owner = _cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="glimpse3d-pg-"))
    data, pwfile = root / "data", root / "pwfile"
    try:
        pwfile.write_text("unused-superuser-password\n")
        if owner:
            info = pwd.getpwnam(owner)
            for path in (root, pwfile):
                os.chown(path, info.pw_uid, info.pw_gid)
        _run(_as_owner(owner, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                               "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                               f"--pwfile={pwfile}"]), timeout=120)
        port = free_port(host)
        options = " ".join([f"-p {port}", f"-k {root}", *(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())])
        _run(_as_owner(owner, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options,
                               "-w", "-t", str(START_TIMEOUT_S), "start"]), timeout=START_TIMEOUT_S + 10)
        try:
            server = PostgresServer(host, port, root, bindir)
            server.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            logger.info("test PostgreSQL listening on %s:%d", host, port)
            yield server
        finally:
            _run(_as_owner(owner, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                                   "-t", str(STOP_TIMEOUT_S), "stop"]), timeout=STOP_TIMEOUT_S + 10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@contextmanager
def postgres_for_tests() -> Iterator[PostgresServer]:
    """:func:`run_postgres` for a pytest fixture: skips when PostgreSQL is not installed, except in CI
    (``CI=true``), where that fails the tests instead."""
    import pytest

    try:
        find_bindir()
        _cluster_owner()
    except PostgresMissing as err:
        if _in_ci():
            pytest.fail(f"CI=true and {err}", pytrace=False)
        pytest.skip(str(err))
    with run_postgres() as server:
        yield server
