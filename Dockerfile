# landmarks server: gRPC on 50051, HTTP/JSON and the demo page on 8080, Prometheus metrics on 9464.
# Built from the lock (requirements/serve.txt, hashes checked): the same packages as CI, no torch.
#
# CPU (default):
#   docker build -t landmarks .
#   docker run -p 50051:50051 -p 8080:8080 -v $PWD/adapters:/app/adapters landmarks
#   then open http://localhost:8080/ or: curl --data-binary @examples/cat.jpg 'localhost:8080/v1/detect?category=cats'
# CUDA (ONNX Runtime's CUDA provider, onnxruntime-gpu from requirements/gpu.txt; run with --gpus all):
#   docker build -t landmarks:cuda \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg DEVICE=cuda .
# A base image other than python:3.11-slim (e.g. a local Debian 12 made with debootstrap and
# `docker import`): --build-arg BASE=<image>; Python is installed from its packages when missing.
#
# The adapters/ directory (core.safetensors + <category>.safetensors, and what is registered at
# run time) is the store; mount it as a volume to keep registrations across containers.
ARG BASE=python:3.11-slim
FROM ${BASE}

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

WORKDIR /app
# the locked dependencies first (their own layer: a code change does not reinstall them)
COPY requirements ./requirements
RUN pip install --require-hashes -r requirements/serve.txt && \
    if [ "${DEVICE}" != "cpu" ]; then \
        pip uninstall -y onnxruntime && pip install --require-hashes --no-deps -r requirements/gpu.txt; \
    fi
COPY pyproject.toml README.md ./
COPY landmarks ./landmarks
COPY serving ./serving
COPY training/__init__.py ./training/__init__.py
RUN pip install --no-deps . && \
    python -c "import serving.server, serving.http_api, landmarks.v1.landmarks_pb2_grpc" && \
    if [ "${DEVICE}" != "cpu" ]; then \
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
