# Glimpse3D developer entry points. Every target sets itself up from a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
SERVICES := depth reconstruction multiview diffusion backprojection
PROTO_SRC := $(shell find protos -name '*.proto' 2>/dev/null)
STAMP := $(VENV)/.setup-stamp
# torch's OpenMP threads spin-wait by default, ~10x slower on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup protos protos-check test lint bench demo up clean

$(STAMP): constraints.txt shared/pyproject.toml gateway/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml) requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt \
	    -e "shared[torch,models]" -e gateway $(foreach s,$(SERVICES),-e services/$(s))
	touch $(STAMP)

GEN_STAMP := shared/src/glimpse3d/v1/.generated

setup: $(STAMP) $(GEN_STAMP)

# Generated code goes into the shared package (shared/src/glimpse3d/v1). It is not committed: this
# rule regenerates it whenever a .proto is newer, and tests/test_protos.py fails when the code on
# disk differs from a fresh generation (hand edits, or a generation older than its .proto files).
$(GEN_STAMP): $(PROTO_SRC) $(STAMP)
	$(BIN)/python -m glimpse3d.core.protogen --out shared/src
	touch $@

protos: $(STAMP)
	$(BIN)/python -m glimpse3d.core.protogen --out shared/src
	touch $(GEN_STAMP)

protos-check: $(STAMP)
	$(BIN)/python -m glimpse3d.core.protogen --check

test: setup
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m bench

# The main job on the bundled sample photo: starts the five services and the gateway, runs generate,
# two enhancement rounds and export, writes out/, stops everything.
demo: setup
	$(BIN)/python -m glimpse3d.gateway.demo --out out

# The same stack, left running until Ctrl-C (gateway address printed and written to var/stack/gateway.addr).
up: setup
	$(BIN)/python -m glimpse3d.gateway.stack --state var/stack

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out
