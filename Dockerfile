# landmarks server: gRPC on 50051, HTTP/JSON and the demo page on 8080, Prometheus metrics on 9464.
#
# CPU (default):
#   docker build -t landmarks .
#   docker run -p 50051:50051 -p 8080:8080 -v $PWD/adapters:/app/adapters landmarks
#   then open http://localhost:8080/ or: curl --data-binary @examples/cat.jpg 'localhost:8080/v1/detect?category=cats'
# Where download.pytorch.org cannot be reached, take torch from PyPI instead (its Linux wheel bundles
# CUDA libraries: a larger image, the same CPU behaviour): --build-arg TORCH_INDEX=https://pypi.org/simple
# A base image other than python:3.11-slim (e.g. a local Debian 12 made with debootstrap and
# `docker import`): --build-arg BASE=<image>; Python is installed from its packages when missing.
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
    LANDMARKS_DEVICE=${DEVICE} \
    LANDMARKS_ADAPTERS=/app/adapters

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
# the serve extra: the HTTP/JSON plane (FastAPI, uvicorn); LANDMARKS_ADAPTERS tells `from landmarks
# import Detector` where the store is (the package is installed, not next to adapters/)
RUN pip install --extra-index-url ${TORCH_INDEX} ".[serve]" && \
    python -c "import serving.server, serving.http_api, landmarks.v1.landmarks_pb2_grpc"
# on a GPU the default backend (ONNX Runtime) needs onnxruntime-gpu, which provides the same module as
# the CPU package the project depends on: one replaces the other (the `gpu` extra's note)
RUN if [ "${DEVICE}" != "cpu" ]; then \
        pip uninstall -y onnxruntime && pip install "onnxruntime-gpu>=1.18" && \
        python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"; \
    fi
# adapters/ is in git (a .gitkeep at least); shipped core/adapters in it are baked into the image
COPY adapters ./adapters
COPY examples ./examples

RUN useradd --system --uid 10001 --home /app landmarks && chown -R landmarks /app/adapters
USER landmarks

# 50051: gRPC; 8080: HTTP/JSON and the demo page; 9464: Prometheus /metrics. Set
# LANDMARKS_ADMIN_TOKEN (and LANDMARKS_TOKEN) to protect the admin (and inference, both protocols)
# planes; add --no-admin to the command to switch admin off.
EXPOSE 50051 8080 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
import sys; s=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=4); \
sys.exit(0 if s.status == h.HealthCheckResponse.SERVING else 1)"

# Listen on all interfaces inside the container (the server's own default is localhost only).
CMD ["sh", "-c", "exec landmarks serve --host 0.0.0.0 --port 50051 --adapters /app/adapters --device ${LANDMARKS_DEVICE} --http-port 8080 --metrics-port 9464"]
