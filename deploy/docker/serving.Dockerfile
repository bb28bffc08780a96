# syntax=docker/dockerfile:1
# looplab serving: `looplab serve` (FastAPI on uvicorn, micro-batching, prediction log) on port 8000.
#   docker build -f deploy/docker/serving.Dockerfile -t looplab-serving:$(git describe --tags) .
# Configuration comes from conf/ (mounted from ConfigMaps in Kubernetes); credentials only from the
# environment at run time (Secrets), never from the image.

# --- build: the exact lock, installed with --no-deps into a virtual environment ---------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-deps --progress-bar off -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-deps . && python -c "import looplab.serving"

# --- run: no compilers, no pip cache, an unprivileged user ------------------------------------------
FROM python:3.11.11-slim-bookworm AS run
RUN groupadd --system --gid 10001 looplab && \
    useradd --system --uid 10001 --gid looplab --home-dir /app --shell /usr/sbin/nologin looplab
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# the project root: pyproject.toml ([tool.kedro]) and conf/; data/ is a volume
COPY --chown=root:root pyproject.toml kedro.yml ./
COPY --chown=root:root conf/base ./conf/base
COPY --chown=root:root conf/feature_repo ./conf/feature_repo
RUN mkdir -p data/06_models data/07_model_output conf/local && chown -R looplab:looplab data conf/local
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOOPLAB_PROJECT_ROOT=/app \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    KEDRO_DISABLE_TELEMETRY=true \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["looplab", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]
