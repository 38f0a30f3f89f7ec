"""Generates the Python protobuf/gRPC code for protos/ into the shared package.

``python -m glimpse3d.core.protogen --out shared/src`` (what ``make protos`` runs) regenerates the
committed code; ``--check`` regenerates into a temporary folder and exits non-zero when the
committed copy differs, so a stale generation cannot pass unnoticed (tests/test_protos.py runs it).
Needs grpcio-tools, a development dependency only.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import logging
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("glimpse3d.protogen")

PACKAGE_DIR = Path("glimpse3d") / "v1"
INIT_TEXT = '"""Generated protobuf and gRPC code for glimpse3d.v1. Run `make protos`; never edit."""\n'


def _common_protos_root() -> Path:
    """Folder that holds google/rpc/status.proto (shipped by googleapis-common-protos)."""
    import google.rpc

    return Path(next(iter(google.rpc.__path__))).parent.parent


def generate(protos_root: Path, out_root: Path) -> list[Path]:
    """Runs protoc on every .proto under ``protos_root``; returns the generated files."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(protos_root)) for p in protos_root.rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {protos_root}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{protos_root}",
        f"-I{_common_protos_root()}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    return sorted(p for p in (out_root / PACKAGE_DIR).iterdir() if p.is_file())


def _generated_names(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.suffix in (".py", ".pyi")}


def check(protos_root: Path, committed_root: Path) -> list[str]:
    """Returns a list of problems; empty when the committed code matches a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(protos_root, Path(tmp))
        fresh_dir, committed_dir = Path(tmp) / PACKAGE_DIR, committed_root / PACKAGE_DIR
        fresh, committed = _generated_names(fresh_dir), _generated_names(committed_dir)
        problems = [f"missing generated file {n}" for n in sorted(fresh - committed)]
        problems += [f"stale generated file {n} (no .proto produces it)" for n in sorted(committed - fresh)]
        problems += [
            f"{n} differs from a fresh generation"
            for n in sorted(fresh & committed)
            if not filecmp.cmp(fresh_dir / n, committed_dir / n, shallow=False)
        ]
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protos", type=Path, default=Path("protos"), help="root of the .proto tree")
    parser.add_argument("--out", type=Path, default=Path("shared/src"), help="package source root")
    parser.add_argument("--check", action="store_true", help="only verify the committed code is fresh")
    ns = parser.parse_args(argv)
    if ns.check:
        problems = check(ns.protos, ns.out)
        for p in problems:
            log.error("%s", p)
        if problems:
            log.error("generated code is stale: run `make protos` and commit the result")
            return 1
        log.info("generated code is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(ns.protos, Path(tmp))
        target = ns.out / PACKAGE_DIR
        for old in _generated_names(target):
            (target / old).unlink()
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, target / f.name)
    log.info("generated %d files into %s", len(files), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
