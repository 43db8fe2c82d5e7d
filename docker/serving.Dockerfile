# syntax=docker/dockerfile:1
# The elastiserve serving image: TorchServe 0.12 (Java 17, or the base's own Java) with the
# elastiserve_serve handler and the level-agent sidecar (same image, another command). No kopf.
#
#   amd64 (CPU torch from PyTorch's CPU index):
#     docker buildx build --platform linux/amd64 -f docker/serving.Dockerfile \
#       -t ghcr.io/elastiserve/serving:0.1.0 .
#   arm64 = NVIDIA Jetson (JetPack 6 / L4T r36); torch comes from the base image, which has
#   the CUDA build for the Orin iGPU (PyPI's aarch64 torch has no CUDA):
#     docker buildx build --platform linux/arm64 -f docker/serving.Dockerfile \
#       --build-arg L4T_PYTORCH_IMAGE=nvcr.io/nvidia/pytorch:24.08-py3-igpu \
#       -t ghcr.io/elastiserve/serving:0.1.0-l4t-r36 .
#   No registry at all (the test machines): a base built from Debian packages that already has
#   torch, torchvision and Java (Debian 13's python3-torch 2.6 CPU, its python3-torchvision
#   built against it, openjdk-21; hack/debian-base.sh) and no torch index; `python -m elastiserve.testing.images build` does this with podman:
#     podman build -f docker/serving.Dockerfile --build-arg PYTHON_IMAGE=<local base> \
#       --build-arg TORCH_INDEX_URL= .
#
# The last stage picks serving-${TARGETARCH}, so --platform chooses the recipe. The venv sees
# the base's site-packages, so a base that has torch and torchvision (Debian's, L4T's)
# satisfies torch>=2.4 and torchvision>=0.19 and pip takes nothing for them; on python:*-slim
# there are none and pip installs both from the torch index (a matching pair). torchvision
# (bundles naming a torchvision model) must come from where torch comes from: a PyPI wheel
# beside a base's torch would pull its own torch; the build checks both share a directory.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# Any L4T PyTorch image with Python >= 3.10 and CUDA torch >= 2.4 (pyproject's floor) works:
# NGC's iGPU builds (nvcr.io/nvidia/pytorch:<yy.mm>-py3-igpu) or jetson-containers'
# l4t-pytorch:r36.x. nvcr.io/nvidia/l4t-pytorch:r35.* (JetPack 5) ships Python 3.8 and
# torch <= 2.0, too old for this package.
ARG L4T_PYTORCH_IMAGE=nvcr.io/nvidia/pytorch:24.08-py3-igpu
# Set by BuildKit from --platform; declared here because buildah/podman (Debian 12's 1.28)
# substitute it in FROM only when it is declared (and need --build-arg TARGETARCH=amd64).
ARG TARGETARCH
# May be empty: then pip reads PyPI only (a base with torch needs no torch index).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ------------------------------------------------------------------ amd64: slim Python + Java
FROM ${PYTHON_IMAGE} AS serving-amd64
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Java only when the base has none (the Debian base brings openjdk-21).
RUN command -v java >/dev/null \
 || { apt-get update \
      && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
      && rm -rf /var/lib/apt/lists/*; }
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY elastiserve/ elastiserve/
COPY operator/ operator/
COPY model_store/ model_store/
COPY handlers/ handlers/
COPY training/ training/
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[serve]" \
 && rm -rf /src \
 && cd / \
 && python -c "import torch, ts, elastiserve_serve; print('torch', torch.__version__)" \
 && python -c "import os, torch, torchvision; where = [os.path.dirname(os.path.dirname(m.__file__)) for m in (torch, torchvision)]; assert where[0] == where[1], where; print('torchvision', torchvision.__version__, 'beside torch in', where[0])" \
 && java -version

# ------------------------------------------------------------------ arm64: Jetson, torch from base
FROM ${L4T_PYTORCH_IMAGE} AS serving-arm64
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN command -v java >/dev/null \
 || { apt-get update \
      && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
      && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
COPY pyproject.toml README.md ./
COPY elastiserve/ elastiserve/
COPY operator/ operator/
COPY model_store/ model_store/
COPY handlers/ handlers/
COPY training/ training/
# The serve extra minus torch and torchvision (kept in step with pyproject.toml by
# tests/chart/test_docker.py), then the package itself with --no-deps, so pip never replaces
# the base's CUDA torch with PyPI's CPU-only aarch64 wheel. The NVIDIA base ships torchvision
# built against its torch; a PyPI torchvision would pin and pull PyPI's torch.
RUN python3 -m pip install \
      "pyyaml>=6" "safetensors>=0.4" "numpy>=1.26" "pillow>=10" \
      "torchserve==0.12.0" "torch-model-archiver==0.12.0" "prometheus-client>=0.20" \
      "httpx>=0.27" "aiohttp>=3.9" "kubernetes>=30" "pydantic>=2.6" \
 && python3 -m pip install --no-deps . \
 && rm -rf /src \
 && python3 -c "import torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda)" \
 && python3 -c "import torchvision; print('torchvision', torchvision.__version__)"

# ------------------------------------------------------------------ common tail
FROM serving-${TARGETARCH}
LABEL org.opencontainers.image.title="elastiserve-serving" \
      org.opencontainers.image.description="TorchServe with the nested elastic CNN handler" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 elastiserve \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/elastiserve \
      --shell /usr/sbin/nologin elastiserve
# TorchServe writes logs, its model store and temp files; serving pods mount emptyDirs here.
ENV HOME=/home/elastiserve \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TEMP=/tmp
WORKDIR /home/elastiserve
USER 65532:65532
# TorchServe inference, management, metrics.
EXPOSE 8080 8081 8082
ENTRYPOINT ["elastiserve"]
CMD ["serve", "--help"]
