# syntax=docker/dockerfile:1.7
# One model service (depth, reconstruction, multiview, diffusion, backprojection) in one variant:
#
#   docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=depth --build-arg VARIANT=cpu \
#       -t glimpse3d-depth-cpu:0.1.0 .
#
# VARIANT cpu: the official Python 3.11 image (what CI tests). VARIANT cuda: NVIDIA's CUDA 13.0 image
# with Ubuntu 24.04's Python 3.12 (the Python of Triton's image) and gsplat's CUDA kernels compiled
# ahead of time. Both install torch as pinned by constraints.txt (the CUDA 13 build); set
# TORCH_INDEX_URL to an index of CPU-only torch wheels for smaller CPU images (docs/docker.md).
# The builder installs into /opt/venv with deploy/install.sh (the script `make setup` runs); the
# runtime stage gets that venv and nothing else, and runs as UID/GID 10001 (the chart's podSecurity).
ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---- bases per variant: where the venv is built and where it runs (same Python at the same path)
FROM ${PYTHON_IMAGE} AS build-base-cpu
# g++ compiles the CPU rasterizer kernel in the builder (glimpse3d.core.render.build_ext). Not pinned per
# package (DL3008): the tagged base image fixes the distribution release, and its archive keeps only the
# current security-patched version of each package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

FROM ${PYTHON_IMAGE} AS runtime-base-cpu
# libgomp1: the OpenMP runtime the compiled CPU rasterizer kernel links. Not pinned per package (DL3008): the
# tagged base image fixes the distribution release, and its archive keeps only the current security-patched
# version of each package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_DEVEL_IMAGE} AS build-base-cuda
# Not pinned per package (DL3008): the tagged base image fixes the distribution release, and its
# archive keeps only the current security-patched version of each package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_RUNTIME_IMAGE} AS runtime-base-cuda
# Not pinned per package (DL3008): the tagged base image fixes the distribution release, and its
# archive keeps only the current security-patched version of each package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# ---- extra wheels per variant: none on CPU; on CUDA, gsplat with compiled kernels. This stage reads
# constraints.txt and its script only, so one build serves every service (and the Triton image).
FROM build-base-cpu AS wheels-cpu
RUN mkdir /wheels

FROM build-base-cuda AS wheels-cuda
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX"
ARG MAX_JOBS=4
WORKDIR /src
COPY constraints.txt ./
COPY deploy/docker/gsplat-wheel.sh deploy/docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" MAX_JOBS="${MAX_JOBS}" \
    deploy/docker/gsplat-wheel.sh --python python3 /wheels

# A stage of this file chosen by VARIANT, not a registry image (DL3006 cannot resolve the name).
# hadolint ignore=DL3006
FROM wheels-${VARIANT} AS wheels

# ---- builder: the service's venv (the triton extra: the chart's `backend: triton` calls Triton)
# A stage of this file chosen by VARIANT, not a registry image (DL3006 cannot resolve the name).
# hadolint ignore=DL3006
FROM build-base-${VARIANT} AS builder
ARG SERVICE
ARG VARIANT
ARG TORCH_INDEX_URL=""
RUN case "${SERVICE}" in \
        depth | reconstruction | multiview | diffusion | backprojection) ;; \
        *) echo "set --build-arg SERVICE= to depth, reconstruction, multiview, diffusion or backprojection (got '${SERVICE}')" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY constraints.txt ./
COPY deploy/install.sh deploy/
COPY protos protos/
COPY shared shared/
COPY services/${SERVICE} services/${SERVICE}/
COPY --from=wheels /wheels /wheels
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && deploy/install.sh --python /opt/venv/bin/python --protos "shared[torch,triton]" "${SERVICE}" \
        -- --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"}
# The compiled CPU rasterizer kernel, into the installed package (its _cpu_ext/ travels with /opt/venv); the
# CPU services would otherwise render on the several times slower pure-torch path (docs/rasterizer.md).
RUN /opt/venv/bin/python -m glimpse3d.core.render.build_ext
# Fail the build, not the pod: the service imports, on CUDA gsplat's compiled kernels load, and the
# reconstruction service has the mesh libraries of its ExportMesh (its dependencies pull shared[mesh]).
RUN /opt/venv/bin/python -c "import glimpse3d.v1, glimpse3d.services.${SERVICE}.server" \
    && if [ "${VARIANT}" = cuda ]; then /opt/venv/bin/python -c "import torch, gsplat.csrc"; fi \
    && if [ "${SERVICE}" = reconstruction ]; then \
        /opt/venv/bin/python -c "import manifold3d, skimage, scipy, trimesh, xatlas"; fi \
    && printf '#!/bin/sh\nexec /opt/venv/bin/python -m glimpse3d.services.%s "$@"\n' "${SERVICE}" \
        > /opt/venv/bin/glimpse3d-service \
    && chmod 0755 /opt/venv/bin/glimpse3d-service

# ---- runtime: the venv, a non-root user, and the settings the chart expects
# A stage of this file chosen by VARIANT, not a registry image (DL3006 cannot resolve the name).
# hadolint ignore=DL3006
FROM runtime-base-${VARIANT} AS runtime
ARG SERVICE
ARG VARIANT
LABEL org.opencontainers.image.title="glimpse3d-${SERVICE}-${VARIANT}" \
      org.opencontainers.image.description="Glimpse3D ${SERVICE} service (gRPC), ${VARIANT} variant"
RUN groupadd --system --gid 10001 glimpse3d \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin glimpse3d \
    && install -d -o 10001 -g 10001 /data /cache /models
COPY --from=builder /opt/venv /opt/venv
# Bound on every interface with the chart's ports; model weights read from /models (the chart's
# mount); no hub access at run time; library caches under /cache (an emptyDir in the chart).
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    GLIMPSE3D_HOST=0.0.0.0 \
    GLIMPSE3D_PORT=50051 \
    GLIMPSE3D_METRICS_HOST=0.0.0.0 \
    GLIMPSE3D_METRICS_PORT=9090 \
    GLIMPSE3D_MODEL_DIR=/models
WORKDIR /data
USER 10001:10001
EXPOSE 50051 9090
# SERVING only once the backend has loaded its models, which may take minutes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["python", "-m", "glimpse3d.core.healthcheck"]
ENTRYPOINT ["glimpse3d-service"]
