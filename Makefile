# Two entry points: `make demo` and `make test`. Everything either needs is installed from here,
# so a fresh machine needs nothing but this checkout, Python 3.10+, Go and network access to the
# package registries.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
EXTRAS := train,serve,operator,dev
DEBIAN_PACKAGES := prometheus dataset-fashion-mnist openssl containerd runc containernetworking-plugins iptables conntrack podman mmdebstrap iproute2 curl
PYTEST_ARGS ?=

.PHONY: test demo venv system-deps assets images lint typecheck pytest clean

test: venv system-deps assets images lint typecheck pytest

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet --progress-bar off -e '.[$(EXTRAS)]'
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
	$(VENV)/bin/mypy

pytest: venv
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
