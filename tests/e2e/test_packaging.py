"""Packaging: separate installable packages under one namespace, and a gateway without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib

PACKAGES = ["shared", "gateway", *(f"services/{s}" for s in
                                   ("depth", "reconstruction", "multiview", "diffusion", "backprojection"))]


def test_every_package_is_installable_with_its_own_pyproject(repo_root):
    names = set()
    for pkg in PACKAGES:
        meta = tomllib.loads((repo_root / pkg / "pyproject.toml").read_text())
        names.add(meta["project"]["name"])
        assert (repo_root / pkg / "src" / "glimpse3d").is_dir()
        assert not (repo_root / pkg / "src" / "glimpse3d" / "__init__.py").exists()  # a namespace package
    assert len(names) == len(PACKAGES)


def test_gateway_does_not_depend_on_or_import_torch(repo_root):
    deps = tomllib.loads((repo_root / "gateway" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any("torch" in d or "[torch]" in d for d in deps)
    code = (
        "import sys, glimpse3d.gateway.server, glimpse3d.gateway.cli, glimpse3d.gateway.stack, "
        "glimpse3d.gateway.demo; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_torch_is_pinned_exactly(repo_root):
    text = (repo_root / "constraints.txt").read_text()
    assert "torch==2.14.1" in text.splitlines() and "torchvision==0.29.1" in text.splitlines()
    extra = tomllib.loads((repo_root / "shared" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "torch==2.14.1" in extra["torch"]
