"""Build (or find, already built) the compiled CPU rasterizer kernel: ``python -m glimpse3d.core.render.build_ext``.

The kernel (``csrc/raster_cpu.cpp``, the composite stage, and ``csrc/screen_cpu.cpp``, the
screen-space stage) is a CPU-only torch C++ extension built with
``torch.utils.cpp_extension`` (ninja and a C++20 compiler with OpenMP). It is compiled into
``_cpu_ext/`` next to this file (git-ignored), under a name that hashes the source, the torch version
and the Python ABI, so a changed source or a new torch simply builds a new module and a stale one is
never loaded. ``make setup`` runs this; at run time :func:`load` only imports what is there (no
compiler needed) and :func:`glimpse3d.core.render.rasterize` falls back to the pure-torch path when
nothing is built.

Flags: ``-O3 -fno-math-errno -fopenmp`` (no fast-math: the numerics must match the torch path),
no ``-march=native``: the module must run on any x86-64/arm64 machine
the cache is copied to (CI, container images).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).with_name("csrc")
# The composite stage (and the module definition) and the fused screen-space stage.
SOURCES = (_CSRC / "raster_cpu.cpp", _CSRC / "screen_cpu.cpp")
CACHE_ENV = "GLIMPSE3D_RASTER_EXT_DIR"
_DEFAULT_CACHE = Path(__file__).with_name("_cpu_ext")
CFLAGS = ["-O3", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
_PREFIX = "glimpse3d_raster_cpu_"


class BuildError(RuntimeError):
    """The extension could not be built (no compiler, no ninja, a compile error)."""


def cache_dir() -> Path:
    """Where built modules live: ``$GLIMPSE3D_RASTER_EXT_DIR`` or ``_cpu_ext/`` beside this file."""
    return Path(os.environ.get(CACHE_ENV) or _DEFAULT_CACHE)


def module_name() -> str:
    """The module's name: hashes the sources, the torch version, the flags and the interpreter's ABI."""
    import torch

    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.read_bytes())
    key.update(f"{torch.__version__}|{' '.join(CFLAGS)}|{sysconfig.get_config_var('EXT_SUFFIX')}".encode())
    return f"{_PREFIX}{key.hexdigest()[:16]}"


def built_path() -> Path:
    name = module_name()
    return cache_dir() / name / f"{name}.so"  # torch.utils.cpp_extension's naming


def load() -> ModuleType | None:
    """Import the built module, or None when it has not been built for this source and torch."""
    path = built_path()
    if not path.is_file():
        return None
    import torch  # noqa: F401  (the module links against torch's libraries, loaded first)

    spec = importlib.util.spec_from_file_location(module_name(), path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_toolchain() -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BuildError(
            f"no C++ compiler ({compiler!r} is not on PATH): install one (Debian: apt-get install g++) "
            "or set CXX; until then the rasterizer uses its slower pure-torch CPU path"
        )
    if not cpp_extension.is_ninja_available():
        raise BuildError("ninja is not installed in this environment: pip install -c constraints.txt ninja")


def build(verbose: bool = False) -> Path:
    """Compile the module unless it is already built; returns the path of the shared library."""
    path = built_path()
    if path.is_file():
        return path
    _check_toolchain()
    from torch.utils import cpp_extension

    name = module_name()
    build_dir = path.parent
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create {build_dir} ({exc}); set {CACHE_ENV} to a writable folder") from exc
    try:
        cpp_extension.load(
            name=name,
            sources=[str(source) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(build_dir),
            with_cuda=False,
            verbose=verbose,
        )
    except Exception as exc:  # a compile or link error: report it whole
        raise BuildError(f"building {', '.join(s.name for s in SOURCES)} failed: {exc}") from exc
    if not path.is_file():
        raise BuildError(f"the build finished but {path} is missing")
    for stale in build_dir.parent.glob(f"{_PREFIX}*"):  # builds of older sources or another torch
        if stale != build_dir and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--optional", action="store_true",
                        help="exit 0 when the build fails (the torch path is the fallback); the error is still printed")
    parser.add_argument("--verbose", action="store_true", help="show the compiler command lines")
    ns = parser.parse_args(argv)
    try:
        path = build(verbose=ns.verbose)
    except BuildError as exc:
        print(f"glimpse3d: compiled CPU rasterizer not built: {exc}", file=sys.stderr)
        return 0 if ns.optional else 1
    print(f"glimpse3d: compiled CPU rasterizer at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
