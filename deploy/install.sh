#!/usr/bin/env bash
# Installs Glimpse3D's Python packages with every version pinned by constraints.txt. One script for
# `make setup` (editable, with the development tools) and for the container images (deploy/docker):
# the pip command lines are written here once.
#
#   deploy/install.sh [OPTIONS] COMPONENT... [-- PIP_ARGS...]
#
# COMPONENT: shared, gateway, research (the offline research harness) or a service (depth, reconstruction, multiview, diffusion,
# backprojection), each with optional extras in brackets: "shared[torch,models]". A service pulls in
# shared[torch] by itself, but shared must be named too when it is installed from source (it is not
# on any package index).
#
# OPTIONS
#   --python PY        interpreter whose pip installs (default: python3); pass a venv's python
#   --editable         editable installs (pip -e), for development
#   --dev              also install requirements-dev.txt (tests, lint)
#   --protos           generate the protobuf code into shared/src first, with grpcio-tools from a
#                      throwaway venv (a clean checkout has none: it is not committed)
#   --build-wheels DIR build wheels of the components and all their dependencies into DIR (pip wheel)
#                      instead of installing
#   --from-wheels DIR  install the components by project name from the wheels in DIR only (no index,
#                      no source tree needed besides this script and constraints.txt)
#   -q, --quiet        quieter pip
#   -n, --dry-run      print the commands (as always, on stderr) without running them
#   -h, --help         this text
# PIP_ARGS after "--" go to pip unchanged (--extra-index-url, --find-links, --no-cache-dir, ...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="deploy/install.sh"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "$PROG: $*" >&2; exit 2; }

python=python3
editable=0
dev=0
protos=0
build_wheels=""
from_wheels=""
quiet=()
dry_run=0
components=()
pip_args=()
while (($#)); do
    case "$1" in
        --python) [[ $# -ge 2 && -n "$2" ]] || die "--python needs an interpreter"; python="$2"; shift 2 ;;
        --editable) editable=1; shift ;;
        --dev) dev=1; shift ;;
        --protos) protos=1; shift ;;
        --build-wheels) [[ $# -ge 2 && -n "$2" ]] || die "--build-wheels needs a directory"; build_wheels="$2"; shift 2 ;;
        --from-wheels) [[ $# -ge 2 && -n "$2" ]] || die "--from-wheels needs a directory"; from_wheels="$2"; shift 2 ;;
        -q | --quiet) quiet=(-q); shift ;;
        -n | --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; pip_args=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) components+=("$1"); shift ;;
    esac
done

((${#components[@]})) || die "name at least one component (shared, gateway or a service; see --help)"
[[ -z "$build_wheels" || -z "$from_wheels" ]] || die "--build-wheels and --from-wheels exclude each other"
((!editable)) || [[ -z "$build_wheels$from_wheels" ]] || die "--editable installs from source, not from wheels"
((!protos)) || [[ -z "$from_wheels" ]] || die "--protos is for installs from source; --from-wheels installs built wheels"
((dry_run)) || command -v "$python" >/dev/null || die "no Python interpreter '$python' (set --python)"
# The script works from the repository root: a relative interpreter path is taken from where it was called.
[[ "$python" != */* || "$python" == /* ]] || python="$PWD/$python"

services=()
for dir in "$ROOT"/services/*/; do
    [[ -f "$dir/pyproject.toml" ]] && services+=("$(basename "$dir")")
done

# A component's source directory, relative to the repository root.
source_dir() {
    case "$1" in
        shared | gateway | research) echo "$1" ;;
        *) echo "services/$1" ;;
    esac
}

specs=()
for component in "${components[@]}"; do
    name="${component%%\[*}"
    extras="${component#"$name"}"
    [[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad component name in '$component' (want name or name[extra,...])"
    [[ -z "$extras" || "$extras" =~ ^\[[A-Za-z0-9_,-]+\]$ ]] || die "bad extras '$extras' in '$component' (want name[extra,...])"
    case " shared gateway research ${services[*]} " in
        *" $name "*) ;;
        *) die "unknown component '$name' (known: shared gateway research ${services[*]})" ;;
    esac
    if [[ -n "$from_wheels" ]]; then
        specs+=("glimpse3d-$name$extras")
    elif ((editable)); then
        specs+=(-e "$(source_dir "$name")$extras")
    else
        specs+=("./$(source_dir "$name")$extras")
    fi
done

run() { echo "+ $*" >&2; ((dry_run)) || "$@"; }

cd "$ROOT"

if ((protos)); then
    tools="${TMPDIR:-/tmp}/glimpse3d-protoc"
    if ((!dry_run)); then
        tools="$(mktemp -d)"
        trap 'rm -rf "$tools"' EXIT
    fi
    run "$python" -m venv "$tools"
    run "$tools/bin/python" -m pip install "${quiet[@]}" -c constraints.txt grpcio-tools googleapis-common-protos
    run env PYTHONPATH=shared/src "$tools/bin/python" -m glimpse3d.core.protogen --protos protos --out shared/src
fi

cmd=("$python" -m pip)
if [[ -n "$build_wheels" ]]; then
    cmd+=(wheel "${quiet[@]}" --wheel-dir "$build_wheels")
else
    cmd+=(install "${quiet[@]}")
fi
[[ -z "$from_wheels" ]] || cmd+=(--no-index --find-links "$from_wheels")
cmd+=(-c constraints.txt)
((!dev)) || cmd+=(-r requirements-dev.txt)
run "${cmd[@]}" "${specs[@]}" "${pip_args[@]}"
