# syntax=docker/dockerfile:1
# The elastiserve operator: kopf + aiohttp + prometheus-client, no torch.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/operator.Dockerfile -t ghcr.io/elastiserve/operator:0.1.0 .
#
# Multi-arch comes from the base: python:*-slim is published for amd64 and arm64, and buildx
# runs each stage on the target platform, so pip picks the wheels (aiohttp, yarl, ...) of the
# architecture the image is for. Pin the base by digest in production (PYTHON_IMAGE=...@sha256:).
#
# No registry at all (the test machines): PYTHON_IMAGE may be any local image with python,
# python -m venv, groupadd/useradd and CA roots, e.g. the Debian 13 one hack/debian-base.sh
# makes; `python -m elastiserve.testing.images build` builds it and this file with podman.
# The venv does not see the base's site-packages: whatever the base carries, the entrypoint's
# interpreter has only what pip put in the venv, and the torch checks below test exactly it.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
WORKDIR /src
# setuptools finds packages in all five source folders (pyproject.toml); copying them costs
# a few hundred kB of Python and keeps the build identical to a checkout's.
COPY pyproject.toml README.md ./
COPY elastiserve/ elastiserve/
COPY operator/ operator/
COPY model_store/ model_store/
COPY handlers/ handlers/
COPY training/ training/
# The operator extra only: kopf, aiohttp, prometheus-client (and the base's pyyaml).
RUN pip install ".[operator]" \
 && cd / \
 && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
      echo "torch must not be in the operator image" >&2; exit 1; \
    fi \
 && /opt/venv/bin/python -c "import kopf, aiohttp, prometheus_client, elastiserve_operator"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="elastiserve-operator" \
      org.opencontainers.image.description="kopf operator that moves ElasticModels between nested widths" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 elastiserve \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin elastiserve
COPY --from=build /opt/venv /opt/venv
# No .pyc writes: the chart mounts the root filesystem read-only.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Once more in the image itself, with the `python` the entrypoint resolves through PATH.
RUN if python -c "import torch" 2>/dev/null; then \
      echo "torch must not be in the operator image" >&2; exit 1; \
    fi \
 && python -c "import elastiserve_operator"
USER 65532:65532
EXPOSE 8080 9100
ENTRYPOINT ["python", "-m", "elastiserve_operator"]
# Settings come from ELASTISERVE_* variables (the chart sets them); no flags needed.
