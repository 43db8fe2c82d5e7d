# Two entry points: `make demo` and `make test`. Everything either needs is installed from here,
# so a fresh machine needs nothing but this checkout, Python 3.10+, Go and network access to the
# package registries.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What is slow to fetch or build lives outside the checkout, so that a fresh clone (CI) reuses it:
# uv's wheel cache (torch alone is gigabytes: uv links it from the cache in seconds where pip
# unpacks it again), mypy's cache (valid across clones: mypy compares source hashes), and the
# Go-built assets and images (see their scripts).
CACHE ?= $(HOME)/.cache/elastiserve
UV_VERSION := 0.13.9
UV_HOME := $(CACHE)/tools/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
export UV_CACHE_DIR ?= $(CACHE)/uv
MYPY_CACHE ?= $(CACHE)/mypy
EXTRAS := train,serve,operator,dev
DEBIAN_PACKAGES := prometheus dataset-fashion-mnist openssl containerd runc containernetworking-plugins iptables conntrack podman mmdebstrap iproute2 curl
PYTEST_ARGS ?=

.PHONY: test demo venv system-deps assets images lint typecheck pytest pytest-cluster pytest-rest clean

test: venv system-deps assets images lint typecheck pytest

venv: $(STAMP)

# uv itself, pinned, in a virtualenv of its own under the cache (PyPI is the only source).
$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --seed puts pip in the virtualenv too, for users who install into it by hand.
$(STAMP): pyproject.toml | $(UV)
	@test -x $(PY) || $(UV) venv --quiet --seed --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# The whole loop on this machine (see elastiserve/local/demo.py): writes runs/demo/timeline.png.
demo: venv system-deps
	$(PY) -m elastiserve.local.demo $(DEMO_ARGS)

system-deps:
	@bash hack/install-system-deps.sh $(DEBIAN_PACKAGES)

assets:
	@bash hack/build-k8s-assets.sh

# The product's images from docker/ (Debian bases, podman), cached by content hash in
# $ELASTISERVE_IMAGE_CACHE (default ~/.cache/elastiserve/images): a no-op when current. The
# real-node tests would build them too, but here the build's minutes are not charged to a test.
images: venv system-deps
	$(PY) -m elastiserve.testing.images build

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy --cache-dir $(MYPY_CACHE)

# The suite as two pytest sessions at once: the tests that drive a real cluster with real pods
# (the real node's quick start and HPA tests, the e2e loop) spend most of their minutes waiting
# on pods, probes and policy windows, which the rest of the suite can use. Each session has its
# own network namespace and control plane (see elastiserve/testing/pytest_plugin.py); make
# prints each session's output whole when it ends. With PYTEST_ARGS (one test, a -k filter) it
# is one ordinary session.
CLUSTER_TESTS := tests/realnode tests/e2e
PYTEST_FLAGS := --durations=15

pytest: venv
ifeq ($(strip $(PYTEST_ARGS)),)
	@$(MAKE) --no-print-directory -j2 --output-sync=target pytest-cluster pytest-rest
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

pytest-cluster:
	@echo "== pytest session 1 of 2: $(CLUSTER_TESTS)"
	$(PY) -m pytest $(PYTEST_FLAGS) $(CLUSTER_TESTS)

pytest-rest:
	@echo "== pytest session 2 of 2: everything else"
	$(PY) -m pytest $(PYTEST_FLAGS) $(addprefix --ignore=,$(CLUSTER_TESTS))

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
