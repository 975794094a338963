# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build -t image-classifier-service .                 the slim serving image (default, last stage)
#   docker build --target train -t image-classifier-train .    TensorFlow + the training package, for retraining
ARG PYTHON_IMAGE=python:3.11-slim

# ---- dependencies, resolved from pyproject.toml (a layer that changes only when the dependencies do) ----
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml .
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
open('serve.txt', 'w').write('\n'.join(p['dependencies'])); \
open('train.txt', 'w').write('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))"

FROM deps AS serve-venv
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r serve.txt

FROM deps AS train-venv
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r train.txt

# ---- the retraining job: `python -m training schedule` ----
FROM ${PYTHON_IMAGE} AS train
RUN useradd --create-home --uid 10001 app && mkdir -p /app/models /cache && chown app:app /app/models /cache
COPY --from=train-venv /opt/venv /opt/venv
WORKDIR /app
# Training writes what contract/ describes and imports nothing of the service.
COPY contract ./contract
COPY training ./training
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MODELS_DIR=/app/models KERAS_HOME=/cache/keras MPLCONFIGDIR=/tmp/matplotlib
USER app
LABEL org.opencontainers.image.title="image-classifier-train" \
      org.opencontainers.image.description="Scheduled retraining with champion/challenger promotion" \
      org.opencontainers.image.licenses="MIT"
CMD ["python", "-m", "training", "schedule"]

# ---- the service: no TensorFlow, no compilers ----
FROM ${PYTHON_IMAGE} AS serve
RUN useradd --create-home --uid 10001 app
COPY --from=serve-venv /opt/venv /opt/venv
WORKDIR /app
COPY contract ./contract
COPY service ./service
COPY docs ./docs
COPY --chown=app:app models ./models
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 PORT=8000 MODELS_DIR=/app/models PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
USER app
# HTTP (every protocol) and KServe V2 over gRPC (GRPC_PORT; 0 turns it off).
EXPOSE 8000 8081
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"
LABEL org.opencontainers.image.title="image-classifier-service" \
      org.opencontainers.image.description="Image classification over HTTP: Flask, gunicorn, ONNX Runtime" \
      org.opencontainers.image.licenses="MIT"
CMD ["gunicorn", "-c", "service/front_door/gunicorn.conf.py"]
