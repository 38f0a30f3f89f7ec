"""Every installed backend has a contract class; the docs' worked example is covered by its entry
point alone; choosing a weight-free backend never imports torch."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from contracts import CONTRACTS

from glimpse3d.core.backends import BackendRegistry, service_names

TESTS = Path(__file__).resolve().parents[1]
DOC = TESTS.parent / "docs" / "adding-a-backend.md"


def _import_contract_modules() -> None:
    for path in sorted(TESTS.rglob("test_contract_*.py")):
        name = f"_contracts_{path.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def test_every_registered_backend_has_a_contract_class() -> None:
    _import_contract_modules()
    registered = {(service, name) for service in service_names() for name in BackendRegistry(service).names()}
    assert len(service_names()) == 5 and len(registered) >= 15, registered
    missing = sorted(registered - set(CONTRACTS))
    assert not missing, f"backends without a contract class (tests/contracts, tests/test_contract_*.py): {missing}"


def test_choosing_a_weight_free_backend_never_imports_torch() -> None:
    code = (
        "import sys, json\n"
        "from glimpse3d.core.backends import BackendRegistry, service_names\n"
        "names = {s: BackendRegistry(s).names() for s in service_names()}\n"
        "for service, name in (('depth', 'silhouette'), ('diffusion', 'classical')):\n"
        "    b = BackendRegistry(service).create(name); b.load(); assert b.ready\n"
        "print(json.dumps([names, sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    names, heavy = json.loads(out.stdout)
    assert heavy == [], f"listing backends or loading a weight-free one imported {heavy}"
    assert "silhouette" in names["depth"] and "classical" in names["diffusion"]


def _doc_block(marker: str) -> str:
    text = DOC.read_text()
    found = re.search(rf"<!-- example: {re.escape(marker)} -->\n```\w+\n(.*?)```", text, re.S)
    assert found, f"{DOC.name} has no example block {marker!r}"
    return found.group(1)


@pytest.mark.service
def test_the_documented_backend_is_covered_by_its_entry_point_alone(tmp_path: Path) -> None:
    """The page's backend, installed as a plugin package (one folder plus the page's entry-point
    line), is found by the registry, and the depth contract runs on it with no test code added."""
    entry = _doc_block("entry point")
    group, name, target = re.search(r'\[project\.entry-points\."([^"]+)"\]\n(\w+) = "([^"]+)"', entry).groups()
    assert target.endswith(":CardDepthBackend")
    site = tmp_path / "site"
    package = site / "glimpse3d_card_example" / "card"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "backend.py").write_text(_doc_block("backend.py"))
    dist = site / "glimpse3d_card_example-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: glimpse3d-card-example\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{group}]\n{name} = glimpse3d_card_example.card.backend:CardDepthBackend\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(TESTS / "unit" / "test_contract_depth.py"), "-k", "TestCard"],
        check=False, capture_output=True, text=True, timeout=600, env=env, cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", run.stdout).group(1))
    assert passed >= 8 and "failed" not in run.stdout, run.stdout[-2000:]
