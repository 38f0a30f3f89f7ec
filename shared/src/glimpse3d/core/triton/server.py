"""A local ``tritonserver`` on a copy of the model repository (tests, ``make triton-up``, development).

Production runs NVIDIA's Triton image (``deploy/docker/triton.Dockerfile``). Everywhere else the
server comes from the ``nvidia-pytriton`` wheel (``make triton`` installs it with ``--no-deps``: its
dependencies would downgrade numpy and protobuf), which bundles a real ``tritonserver`` with the
Python backend and runs on the CPU:

1. :func:`find_install` locates the binary and assembles one backend directory from the wheel's
   Python backend and the stub built for this interpreter's Python version;
2. :func:`prepare_repository` copies ``deploy/triton`` (all models or some), puts the one bootstrap
   ``deploy/triton/model.py`` into each model's version directory (git keeps no copy per model; the
   Triton image's build prepares its repository the same way, ``--prepare``), optionally turning GPU
   instance groups into CPU ones and replacing a model's ``backend_options``;
3. :class:`LocalTriton` starts the server on loopback ports with ``GLIMPSE3D_MODEL_DIR`` and
   :data:`~.python_model.SITE_PACKAGES_ENV` set, waits (bounded) until every model is ready, and
   stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glimpse3d.core.errors import FailedPrecondition, InvalidInput, Unavailable
from glimpse3d.core.models import MODEL_DIR_ENV
from glimpse3d.core.triton.python_model import SITE_PACKAGES_ENV

REPOSITORY = Path("deploy/triton")
BOOTSTRAP = "model.py"  # the repository's one Python-backend bootstrap, copied into every <model>/<version>/
DEFAULT_VERSION = "1"
_OPTIONS_RE = re.compile(r'(key:\s*"backend_options"\s*value:\s*\{\s*string_value:\s*)("(?:[^"\\]|\\.)*")', re.S)


@dataclass(frozen=True)
class TritonInstall:
    server: Path  # the tritonserver binary
    backend_dir: Path  # holds python/ (the Python backend with its stub)
    library_path: str  # LD_LIBRARY_PATH for the server and the stub


def find_install(work_dir: Path) -> TritonInstall:
    """The wheel's ``tritonserver``, with a backend directory assembled under ``work_dir``.
    :class:`FailedPrecondition` (naming ``make triton``) when the wheel is not installed."""
    spec = importlib.util.find_spec("pytriton")  # not imported: its client needs packages we leave out
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "tritonserver is not installed: run `make triton` (pip install --no-deps nvidia-pytriton)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    server = root / "bin" / "tritonserver"
    python_backend = root / "backends" / "python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    for need in (server, python_backend, stub):
        if not need.exists():
            raise FailedPrecondition(f"the nvidia-pytriton wheel has no {need.relative_to(root.parent)} "
                                     f"(Python {version}); reinstall it with `make triton`")
    backend_dir = work_dir / "backends"
    target = backend_dir / "python"
    if not (target / "triton_python_backend_stub").exists():
        target.mkdir(parents=True, exist_ok=True)
        for item in python_backend.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target / item.name)
        shutil.copy2(stub, target / stub.name)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent.parent / "nvidia_pytriton.libs")]
    return TritonInstall(server, backend_dir, os.pathsep.join(p for p in libs if p and Path(p).is_dir()))


def set_backend_options(config: str, options: Mapping[str, Any]) -> str:
    """``config.pbtxt`` text with its ``backend_options`` parameter replaced by ``options``."""
    if not _OPTIONS_RE.search(config):
        raise InvalidInput("config.pbtxt has no backend_options parameter to replace", field="backend_options")
    value = json.dumps(json.dumps(dict(options), sort_keys=True))
    return _OPTIONS_RE.sub(lambda m: m.group(1) + value, config, count=1)


def prepare_repository(
    dst: Path,
    *,
    src: Path = REPOSITORY,
    models: Sequence[str] | None = None,
    cpu: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Copy the model repository ``src`` (the ``models`` named, or all) to ``dst``, with ``src``'s
    :data:`BOOTSTRAP` as the ``model.py`` of each model's version directories (``1`` when it has none).
    ``cpu`` turns every ``KIND_GPU`` instance group into ``KIND_CPU``; ``options`` replaces models'
    backend options."""
    bootstrap = src / BOOTSTRAP
    if not bootstrap.is_file():
        raise FailedPrecondition(f"{src} has no {BOOTSTRAP}: the Python-backend bootstrap every model runs")
    names = sorted(p.name for p in src.iterdir() if (p / "config.pbtxt").is_file())
    chosen = list(models) if models is not None else names
    unknown = sorted(set(chosen) - set(names)) + sorted(set(options or {}) - set(chosen))
    if unknown:
        raise InvalidInput(f"not a model of {src}: {', '.join(unknown)}; models: {', '.join(names)}", field="models")
    dst.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        shutil.copytree(src / name, dst / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        versions = [p for p in (dst / name).iterdir() if p.is_dir() and p.name.isdigit()]
        for version in versions or [dst / name / DEFAULT_VERSION]:
            version.mkdir(exist_ok=True)
            shutil.copy2(bootstrap, version / BOOTSTRAP)
        config_path = dst / name / "config.pbtxt"
        text = config_path.read_text()
        if cpu:
            text = text.replace("KIND_GPU", "KIND_CPU")
        if options and name in options:
            text = set_backend_options(text, options[name])
        config_path.write_text(text)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalTriton:
    """``tritonserver`` on 127.0.0.1 serving ``repository`` (see the module docstring)."""

    repository: Path
    work_dir: Path
    model_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The gRPC endpoint the services' ``triton`` backends use."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 300.0) -> LocalTriton:
        install = find_install(self.work_dir)
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        site_packages = sysconfig.get_paths()["purelib"]
        # Passive OpenMP waits: each model's stub is a process with its own torch thread pool, and
        # spinning pools starve each other on a small CPU machine (3x slower calls, measured).
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **self.env,
               MODEL_DIR_ENV: str(self.model_dir), SITE_PACKAGES_ENV: site_packages,
               "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [install.library_path,
                                                                os.environ.get("LD_LIBRARY_PATH", "")]))}
        self.log_path = self.log_path or self.work_dir / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(install.server), "--model-repository", str(self.repository),
               "--backend-directory", str(install.backend_dir), "--grpc-address", "127.0.0.1",
               "--grpc-port", str(self.grpc_port), "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
               "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
               "--allow-gpu-metrics", "false", "--log-verbose", "0"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self.wait_ready(timeout_s)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise Unavailable(f"tritonserver exited ({code}) before its models were ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"tritonserver was not ready within {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def metrics(self) -> str:
        """Triton's Prometheus metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server (and its Python stubs), SIGKILL after ``timeout_s``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Kill the server at once (a crash, for fault tests)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> LocalTriton:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the Triton model repository locally until Ctrl-C.")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--prepare", type=Path, metavar="DIR",
                        help="only write the prepared repository to DIR (the Triton image's build) and exit")
    parser.add_argument("--work-dir", type=Path, default=Path("var/triton"))
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get(MODEL_DIR_ENV, "models")))
    parser.add_argument("--models", nargs="*", default=None, help="serve only these models")
    parser.add_argument("--cpu", action="store_true", help="run GPU instance groups on the CPU")
    parser.add_argument("--grpc-port", type=int, default=8001)
    args = parser.parse_args(argv)
    if args.prepare is not None:
        prepare_repository(args.prepare, src=args.repository, models=args.models, cpu=args.cpu)
        print(f"model repository prepared in {args.prepare}", flush=True)
        return 0
    repo = prepare_repository(args.work_dir / "repository", src=args.repository, models=args.models, cpu=args.cpu)
    server = LocalTriton(repo, args.work_dir, args.model_dir.resolve(), grpc_port=args.grpc_port)
    with server:
        print(f"tritonserver ready: gRPC {server.url}, metrics http://127.0.0.1:{server.metrics_port}/metrics",
              flush=True)
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
