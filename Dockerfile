# landmarks gRPC server.
#
# CPU (default):
#   docker build -t landmarks .
#   docker run -p 50051:50051 -v $PWD/adapters:/app/adapters landmarks
# CUDA (torch wheels from the cu130 index on an NVIDIA runtime base; run with --gpus all):
#   docker build -t landmarks:cuda \
#     --build-arg BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 \
#     --build-arg DEVICE=cuda .
#
# The adapters/ directory (core.safetensors + <category>.safetensors, and what is registered at
# run time) is the store; mount it as a volume to keep registrations across containers.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG DEVICE=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LANDMARKS_DEVICE=${DEVICE}

# CUDA bases come without Python: install it (python:3.11-slim already has it).
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update && \
        apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    python3 -m venv /opt/venv

# torch first, from the index matching the device, so the project's pin does not pull another build.
RUN pip install --index-url ${TORCH_INDEX} "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY landmarks ./landmarks
COPY serving ./serving
COPY training/__init__.py ./training/__init__.py
RUN pip install --extra-index-url ${TORCH_INDEX} . && \
    python -c "import serving.server, landmarks.v1.landmarks_pb2_grpc"
# adapters/ is in git (a .gitkeep at least); shipped core/adapters in it are baked into the image
COPY adapters ./adapters

RUN useradd --system --uid 10001 --home /app landmarks && chown -R landmarks /app/adapters
USER landmarks

# 50051: gRPC; 9464: Prometheus /metrics. Set LANDMARKS_ADMIN_TOKEN (and LANDMARKS_TOKEN) to
# protect the admin (and inference) planes; add --no-admin to the command to switch admin off.
EXPOSE 50051 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
import sys; s=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=4); \
sys.exit(0 if s.status == h.HealthCheckResponse.SERVING else 1)"

# Listen on all interfaces inside the container (the server's own default is localhost only).
CMD ["sh", "-c", "exec landmarks serve --host 0.0.0.0 --port 50051 --adapters /app/adapters --device ${LANDMARKS_DEVICE} --metrics-port 9464"]
