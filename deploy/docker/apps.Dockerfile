# syntax=docker/dockerfile:1
# looplab Voila apps: notebooks/apps/serving.ipynb (ask the champion) and monitoring.ipynb, on port 8866.
#   docker build -f deploy/docker/apps.Dockerfile -t looplab-apps:$(git describe --tags) .
#   docker run looplab-apps looplab apps monitoring --host 0.0.0.0

# --- build: the exact lock, installed with --no-deps; the kernel the apps run on -----------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-deps --progress-bar off -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-deps . && \
    python -m ipykernel install --prefix /opt/venv --name looplab --display-name "looplab (Python 3.11)" && \
    python -c "import voila, ipywidgets, looplab.serving"

# --- run ----------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS run
RUN groupadd --system --gid 10001 looplab && \
    useradd --system --uid 10001 --gid looplab --home-dir /app --shell /usr/sbin/nologin looplab
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root pyproject.toml kedro.yml ./
COPY --chown=root:root conf/base ./conf/base
COPY --chown=root:root conf/feature_repo ./conf/feature_repo
COPY --chown=root:root notebooks/apps ./notebooks/apps
RUN mkdir -p data conf/local && chown -R looplab:looplab data conf/local
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOOPLAB_PROJECT_ROOT=/app \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    KEDRO_DISABLE_TELEMETRY=true \
    HOME=/tmp \
    JUPYTER_RUNTIME_DIR=/tmp/jupyter-runtime
USER 10001:10001
EXPOSE 8866
# Voila renders a notebook per page view, so the check only opens the port
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8866), timeout=2).close()"]
CMD ["looplab", "apps", "serving", "--host", "0.0.0.0", "--port", "8866"]
