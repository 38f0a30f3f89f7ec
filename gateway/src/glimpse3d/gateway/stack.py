"""Starts the whole local stack: the five services and the gateway as separate processes on free
ports, each announcing readiness through a ready file (so port 0 is race free). Used by
``make demo``, ``make up`` and the end-to-end tests. The gateway also serves the HTTP/JSON facade
and the web workspace: on a free port by default, on ``--http-port`` (8080 unless
``GLIMPSE3D_HTTP_PORT`` says otherwise) for ``make up``.

``python -m glimpse3d.gateway.stack --state var/stack`` starts everything and waits for SIGINT/SIGTERM;
it prints the web URL and writes it to ``<state>/gateway.http`` (the gRPC address to ``gateway.addr``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from glimpse3d.core.backends import SERVICES_GROUP, plugins

log = logging.getLogger(__name__)

# The services the gateway calls; each is found through its ``glimpse3d.services`` entry point.
REQUIRED_SERVICES = ("depth", "reconstruction", "multiview", "diffusion", "backprojection")
DEFAULT_HTTP_PORT = 8080


class StackError(RuntimeError):
    """A process of the stack failed to start."""


def service_packages() -> dict[str, str]:
    """name -> the package ``python -m`` runs, for the services the gateway needs, from their
    ``glimpse3d.services`` entry points; a missing one is a :class:`StackError` naming it."""
    entries = plugins(SERVICES_GROUP)
    missing = [name for name in REQUIRED_SERVICES if name not in entries]
    if missing:
        raise StackError(f"service(s) {', '.join(missing)} not installed (no {SERVICES_GROUP} entry point); "
                         "run `make setup`")
    return {name: entries[name].module.rpartition(".")[0] for name in REQUIRED_SERVICES}


@dataclass
class Stack:
    """Running processes and their ports; use as a context manager to stop them all."""

    state_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Prometheus /metrics port of each process that serves one (services and the gateway).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway_addr(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def http_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` of the gateway's HTTP facade; None when it is switched off."""
        port = self.ports.get("gateway_http")
        return None if port is None else f"http://127.0.0.1:{port}"

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every process (gateway first, so it stops calling the services), then wait."""
        order = ["gateway", *REQUIRED_SERVICES]
        for name in order:
            proc = self.processes.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in order:
            proc = self.processes.get(name)
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        self.processes.clear()


# torch's intra-op threads for a service left on its weight-free backend (an explicit
# GLIMPSE3D_TORCH_THREADS wins; a learned backend keeps torch's default). Those backends run many small
# torch operations around the compiled rasterizer (MVCRM's fusion, the lift's fit), which are faster on
# one thread, while the rasterizer's kernels keep every core (glimpse3d.core.service.configure_torch).
# Measured: one MVCRM round's fusion 2.41-2.69 s -> 2.12-2.27 s in process; make demo's generate 6.4-7.0 s
# -> 5.6-5.7 s and its rounds 2.9-3.4 s -> 2.7-2.8 s (alternating runs, three each).
WEIGHT_FREE_TORCH_THREADS = "1"


def service_environment(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """A service's environment: the stack's, its own on top, and WEIGHT_FREE_TORCH_THREADS when it runs its
    weight-free backend and no thread count is set."""
    env = {**base, **extra}
    if not env.get("GLIMPSE3D_BACKEND"):
        env.setdefault("GLIMPSE3D_TORCH_THREADS", WEIGHT_FREE_TORCH_THREADS)
    return env


def _spawn(name: str, module: str, env: dict[str, str], state_dir: Path) -> tuple[subprocess.Popen, Path]:
    ready = state_dir / f"{name}.ready.json"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    env = {**env, "GLIMPSE3D_READY_FILE": str(ready), "GLIMPSE3D_PORT": "0", "GLIMPSE3D_METRICS_PORT": "0"}
    logfile = open(state_dir / f"{name}.log", "ab")  # the child process inherits it
    # No preexec_fn: Python code between fork and exec can crash in a multi-threaded launcher. The
    # child asks to die with its parent itself, after exec (glimpse3d.core.childproc).
    proc = subprocess.Popen(
        [sys.executable, "-m", "glimpse3d.core.childproc", str(os.getpid()), module], env=env, stdout=logfile,
        stderr=subprocess.STDOUT,
    )
    logfile.close()
    return proc, ready


def _wait_ready(name: str, proc: subprocess.Popen, ready: Path, state_dir: Path, timeout_s: float) -> dict:
    """The process's ready file ({"port", ...}) once it exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            return json.loads(ready.read_text())
        if proc.poll() is not None:
            tail = (state_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise StackError(f"{name} exited with code {proc.returncode} while starting:\n{tail}")
        time.sleep(0.05)
    raise StackError(f"{name} was not ready after {timeout_s:.0f} s (log: {state_dir / (name + '.log')})")


def start_stack(state_dir: Path, *, env: dict[str, str] | None = None, timeout_s: float = 120.0,
                service_env: dict[str, dict[str, str]] | None = None, http_port: int = 0) -> Stack:
    """Start the five services, then the gateway pointing at them; returns once all are SERVING.
    ``http_port``: the gateway's HTTP facade (0 = a free port, -1 = off)."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, **(env or {})}
    base.setdefault("GLIMPSE3D_ARTIFACTS_URL", (state_dir / "artifacts").as_uri())
    base.setdefault("GLIMPSE3D_LOG_JSON", "true")
    # torch's OpenMP threads spin-wait by default, which starves the other processes of the stack.
    base.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stack = Stack(state_dir)
    try:
        pending = {}
        for name, package in service_packages().items():
            extra = (service_env or {}).get(name, {})
            proc, ready = _spawn(name, package, service_environment(base, extra), state_dir)
            stack.processes[name], pending[name] = proc, ready
        for name, ready in pending.items():
            announced = _wait_ready(name, stack.processes[name], ready, state_dir, timeout_s)
            stack.ports[name] = int(announced["port"])
            if announced.get("metrics_port") is not None:
                stack.metrics_ports[name] = int(announced["metrics_port"])
        gw_env = {**base, **{f"GLIMPSE3D_{s.upper()}_ADDR": stack.addr(s) for s in REQUIRED_SERVICES}}
        gw_env.setdefault("GLIMPSE3D_DB_PATH", str(state_dir / "jobs.sqlite3"))
        gw_env["GLIMPSE3D_ARTIFACTS_URL"] = base["GLIMPSE3D_ARTIFACTS_URL"]
        gw_env["GLIMPSE3D_HTTP_PORT"] = str(http_port)
        proc, ready = _spawn("gateway", "glimpse3d.gateway", gw_env, state_dir)
        stack.processes["gateway"] = proc
        announced = _wait_ready("gateway", proc, ready, state_dir, timeout_s)
        stack.ports["gateway"] = int(announced["port"])
        if announced.get("metrics_port") is not None:
            stack.metrics_ports["gateway"] = int(announced["metrics_port"])
        if announced.get("http_port") is not None:
            stack.ports["gateway_http"] = int(announced["http_port"])
    except BaseException:
        stack.stop()
        raise
    return stack


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``with start_stack(...)`` blocks stop their processes."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, default=Path("var/stack"), help="folder for logs, db, artifacts")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("GLIMPSE3D_HTTP_PORT", DEFAULT_HTTP_PORT)),
                        help="port of the web workspace and HTTP API (0 = any free port, -1 = off)")
    ns = parser.parse_args(argv)
    stack = start_stack(ns.state, http_port=ns.http_port)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    log.info("Glimpse3D is up. Web workspace and HTTP API at %s; gRPC gateway at %s; services: %s; logs in %s. "
             "Ctrl-C stops it.", stack.http_url or "(HTTP off)", stack.gateway_addr,
             ", ".join(f"{s}={stack.addr(s)}" for s in REQUIRED_SERVICES), ns.state)
    (Path(ns.state) / "gateway.addr").write_text(stack.gateway_addr)
    http_file = Path(ns.state) / "gateway.http"
    if stack.http_url is not None:
        http_file.write_text(stack.http_url)
    else:
        http_file.unlink(missing_ok=True)
    try:
        while not stop and all(p.poll() is None for p in stack.processes.values()):
            time.sleep(0.2)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
