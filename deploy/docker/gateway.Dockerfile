# syntax=docker/dockerfile:1.7
# The gateway: the public gRPC API, the HTTP/JSON facade and the browser workspace. No torch.
#
#   docker build -f deploy/docker/gateway.Dockerfile -t glimpse3d-gateway:0.1.0 .
#
# Stages: web builds the workspace (web/dist) with Node; builder installs shared + gateway into
# /opt/venv with deploy/install.sh (the script `make setup` runs) and fails if torch got in; the
# runtime stage gets the venv and the built workspace and runs as UID/GID 10001.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22.21.1-bookworm-slim

FROM ${NODE_IMAGE} AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY constraints.txt ./
COPY deploy/install.sh deploy/
COPY protos protos/
COPY shared shared/
COPY gateway gateway/
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && deploy/install.sh --python /opt/venv/bin/python --protos shared gateway
# The gateway image carries no torch (nor anything that pulls it in): a dependency change that
# brings it back fails here.
RUN if /opt/venv/bin/python -m pip show --quiet torch 2>/dev/null; then \
        echo "torch was installed into the gateway image; the gateway must not depend on it" >&2; exit 1; \
    fi \
    && /opt/venv/bin/python -c "import glimpse3d.v1, glimpse3d.gateway.server, glimpse3d.gateway.app"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="glimpse3d-gateway" \
      org.opencontainers.image.description="Glimpse3D gateway: gRPC API, HTTP/JSON facade, web workspace"
RUN groupadd --system --gid 10001 glimpse3d \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin glimpse3d \
    && install -d -o 10001 -g 10001 /data /cache
COPY --from=builder /opt/venv /opt/venv
COPY --from=web /src/web/dist /opt/glimpse3d/web
# The chart's ports on every interface; SQLite (when no PostgreSQL is configured) in /data, which the
# chart mounts; the workspace served at / from the image.
# On every interface the gateway starts only with authentication (docs/auth.md), which the image
# leaves to run time: no key, secret or switch is baked in. Mount a keys file and name it, e.g.
#   docker run -v "$PWD/api-keys.json:/etc/glimpse3d/api-keys/api-keys.json:ro" \
#     -e GLIMPSE3D_AUTH_API_KEYS_FILE=/etc/glimpse3d/api-keys/api-keys.json glimpse3d-gateway:0.1.0
# or set GLIMPSE3D_AUTH_JWKS, GLIMPSE3D_AUTH_ISSUER and GLIMPSE3D_AUTH_AUDIENCE; the Helm chart does
# this from gateway.auth. Without either it refuses to start and says which settings are missing.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    GLIMPSE3D_HOST=0.0.0.0 \
    GLIMPSE3D_PORT=50051 \
    GLIMPSE3D_METRICS_HOST=0.0.0.0 \
    GLIMPSE3D_METRICS_PORT=9090 \
    GLIMPSE3D_HTTP_HOST=0.0.0.0 \
    GLIMPSE3D_HTTP_PORT=8080 \
    GLIMPSE3D_DB_PATH=/data/jobs.sqlite3 \
    GLIMPSE3D_WEB_DIR=/opt/glimpse3d/web
WORKDIR /data
USER 10001:10001
EXPOSE 50051 8080 9090
HEALTHCHECK --interval=30s --timeout=10s --start-period=1m --retries=3 \
    CMD ["python", "-m", "glimpse3d.core.healthcheck"]
ENTRYPOINT ["python", "-m", "glimpse3d.gateway"]
