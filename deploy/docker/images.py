"""The Glimpse3D container images: each one's name, Dockerfile and build arguments (docs/docker.md).

``python deploy/docker/images.py`` (``make images``) prints one ``docker build`` command per image,
named as the Helm chart pulls them (``<image.registry>/<repository>[-<variant>]:<tag>``);
``--build`` runs them in turn. ``--only NAME`` (repeatable) picks images, ``--registry`` and
``--tag`` (default: the chart's appVersion) name them. Standard library only: it runs before
``make setup``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = Path("deploy/docker")
# Every folder under services/ with a pyproject is a service image.
SERVICES = tuple(sorted(p.parent.name for p in (REPO_ROOT / "services").glob("*/pyproject.toml")))
VARIANTS = ("cpu", "cuda")


@dataclass(frozen=True)
class Image:
    name: str  # the repository name the chart uses, variant suffix included
    dockerfile: Path  # relative to the repository root (the build context)
    build_args: tuple[tuple[str, str], ...] = ()


def images() -> list[Image]:
    """Every image the chart can pull: the gateway, each service in each variant, Triton."""
    found = [Image("glimpse3d-gateway", DOCKER_DIR / "gateway.Dockerfile")]
    found += [Image(f"glimpse3d-{service}-{variant}", DOCKER_DIR / "service.Dockerfile",
                    (("SERVICE", service), ("VARIANT", variant)))
              for service in SERVICES for variant in VARIANTS]
    found.append(Image("glimpse3d-triton", DOCKER_DIR / "triton.Dockerfile"))
    return found


def chart_app_version(root: Path = REPO_ROOT) -> str:
    """``appVersion`` of charts/glimpse3d/Chart.yaml: the image tag the chart pulls by default."""
    text = (root / "charts" / "glimpse3d" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', text, re.M)
    if match is None:
        raise SystemExit("charts/glimpse3d/Chart.yaml has no appVersion")
    return match.group(1)


def reference(image: Image, registry: str, tag: str) -> str:
    """``[registry/]name:tag``, as the chart's ``glimpse3d.image`` helper spells it."""
    name = f"{registry.rstrip('/')}/{image.name}" if registry else image.name
    return f"{name}:{tag}"


def build_command(image: Image, registry: str, tag: str) -> list[str]:
    """The ``docker build`` command for ``image``, run from the repository root."""
    command = ["docker", "build", "-f", str(image.dockerfile)]
    for key, value in image.build_args:
        command += ["--build-arg", f"{key}={value}"]
    return [*command, "-t", reference(image, registry, tag), "."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/docker/images.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default="", help="prefix of every image (the chart's image.registry)")
    parser.add_argument("--tag", default=None, help="tag of every image (default: the chart's appVersion)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="build only this image")
    parser.add_argument("--build", action="store_true", help="run the commands instead of printing them")
    ns = parser.parse_args(argv)
    selected = images()
    known = [image.name for image in selected]
    unknown = sorted(set(ns.only) - set(known))
    if unknown:
        parser.error(f"unknown image {', '.join(unknown)} (known: {' '.join(known)})")
    if ns.only:
        selected = [image for image in selected if image.name in ns.only]
    tag = ns.tag or chart_app_version()
    commands = [build_command(image, ns.registry, tag) for image in selected]
    if not ns.build:
        print("\n".join(shlex.join(command) for command in commands))
        return 0
    if shutil.which("docker") is None:
        print("images.py: docker is not on PATH; without --build the commands are printed", file=sys.stderr)
        return 1
    # The Dockerfiles use BuildKit features (RUN --mount); the legacy builder cannot build them.
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    for image, command in zip(selected, commands, strict=True):
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        code = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False).returncode
        if code != 0:
            print(f"images.py: building {image.name} failed (docker exit status {code})", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
