# syntax=docker/dockerfile:1.7
# Triton Inference Server with the Glimpse3D model repository (deploy/triton) and every service's
# package installed where the Python backend's stub imports from (Triton's own Python 3.12).
#
#   docker build -f deploy/docker/triton.Dockerfile -t glimpse3d-triton:0.1.0 .
#
# Stages: wheels-cuda compiles gsplat's CUDA kernels (the same stage as service.Dockerfile's, so
# the build cache serves both); builder builds wheels of the project and every dependency with
# deploy/install.sh in Ubuntu 24.04's Python 3.12 (the Python of Triton's image); the runtime stage
# installs them from a bind mount (no wheel files left in a layer) and runs as UID/GID 10001.
# The chart runs `tritonserver` with its own flags; the image's default command serves every model.
# The image also runs `python -m glimpse3d.core.modelfetch` for the chart's model-fetch Job.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.10-py3
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04

FROM ${CUDA_DEVEL_IMAGE} AS build-base-cuda
# Not pinned per package (DL3008): the tagged base image fixes the distribution release, and its
# archive keeps only the current security-patched version of each package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
    && rm -rf /var/lib/apt/lists/*

FROM build-base-cuda AS wheels-cuda
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX"
ARG MAX_JOBS=4
WORKDIR /src
COPY constraints.txt ./
COPY deploy/docker/gsplat-wheel.sh deploy/docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" MAX_JOBS="${MAX_JOBS}" \
    deploy/docker/gsplat-wheel.sh --python python3 /wheels

FROM build-base-cuda AS builder
WORKDIR /src
COPY constraints.txt ./
COPY deploy/install.sh deploy/
COPY protos protos/
COPY shared shared/
COPY services services/
COPY --from=wheels-cuda /wheels /wheels
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/build \
    && deploy/install.sh --python /opt/build/bin/python --protos --build-wheels /wheels \
        "shared[torch,models]" depth reconstruction multiview diffusion backprojection -- --find-links /wheels

FROM ${TRITON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="glimpse3d-triton" \
      org.opencontainers.image.description="Triton Inference Server with the Glimpse3D model repository"
# The context (read-only) gives install.sh, constraints.txt and deploy/triton; the builder's wheels
# are the only source: --from-wheels installs with no index. The model repository is prepared from
# deploy/triton (its one model.py copied into every <model>/1/, glimpse3d.core.triton.server).
RUN --mount=type=bind,target=/src \
    --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    /src/deploy/install.sh --python python3 --from-wheels /wheels \
        "shared[torch,models]" depth reconstruction multiview diffusion backprojection \
        -- --no-cache-dir --break-system-packages \
    && python3 -c "import glimpse3d.v1, glimpse3d.core.triton.python_model, torch, gsplat.csrc" \
    && if ! command -v python >/dev/null; then ln -s "$(command -v python3)" /usr/local/bin/python; fi \
    && groupadd --system --gid 10001 glimpse3d \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin glimpse3d \
    && install -d -o 10001 -g 10001 /cache /models \
    && python3 -m glimpse3d.core.triton.server --repository /src/deploy/triton --prepare /opt/glimpse3d/triton
# Model weights from /models (the chart's read-only mount), no hub access at run time, caches under
# /cache (an emptyDir in the chart).
ENV GLIMPSE3D_MODEL_DIR=/models \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=5)"]
CMD ["tritonserver", "--model-repository=/opt/glimpse3d/triton"]
