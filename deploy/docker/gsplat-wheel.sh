#!/usr/bin/env bash
# Builds gsplat's wheel with its CUDA kernels compiled ahead of time, for the CUDA images.
#
#   deploy/docker/gsplat-wheel.sh [--python PY] OUT_DIR
#
# The gsplat wheel on the package index is pure Python and compiles its kernels the first time a CUDA
# tensor is rendered, which needs nvcc and a C++ compiler in the running container (and minutes per
# pod start). This script builds the same version (constraints.txt) from its source distribution
# against the pinned torch instead, so the runtime images carry the compiled `gsplat.csrc` module
# and no toolchain. It runs in a CUDA devel image whose nvcc matches torch's CUDA (13.0) and whose
# Python is the one the runtime image runs: the wheel is tagged for that Python.
#
# Environment: TORCH_CUDA_ARCH_LIST (GPU architectures; default: T4, A100, A10G, L4/L40S, H100 and
# PTX for newer GPUs), MAX_JOBS (parallel compiler jobs, default 4).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROG="deploy/docker/gsplat-wheel.sh"
die() { echo "$PROG: $*" >&2; exit 2; }

python=python3
if [[ "${1:-}" == --python ]]; then
    [[ $# -ge 2 && -n "$2" ]] || die "--python needs an interpreter"
    python="$2"
    shift 2
fi
[[ $# -eq 1 && -n "$1" && "$1" != -* ]] || die "usage: $PROG [--python PY] OUT_DIR"
out="$1"
command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die "nvcc not found: run this in a CUDA devel image"

pin() {  # the exact requirement constraints.txt pins for a package
    local line
    line="$(grep -E "^$1==" "$ROOT/constraints.txt")" || die "constraints.txt pins no $1"
    echo "$line"
}

spec="$(pin gsplat)"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-7.5;8.0;8.6;8.9;9.0+PTX}"
export MAX_JOBS="${MAX_JOBS:-4}"
export PATH="/usr/local/cuda/bin:$PATH"
# gsplat 1.5.3's setup.py hands nvcc -std=c++17, but torch 2.14's headers need C++20 (torch adds
# -std=c++20 itself only when no standard is given). nvcc keeps the last -std it is given.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-std=c++20"

tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
set -x
"$python" -m venv "$tools"
# setuptools is not in constraints.txt: like the project's own builds, any version from 69 on.
"$tools/bin/python" -m pip install -q -c "$ROOT/constraints.txt" torch numpy ninja "setuptools>=69" wheel
mkdir -p "$out"
"$tools/bin/python" -m pip wheel -q --no-build-isolation --no-deps --no-binary gsplat \
    --wheel-dir "$out" "$spec"
