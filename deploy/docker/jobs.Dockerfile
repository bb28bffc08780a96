# syntax=docker/dockerfile:1
# looplab jobs: Kedro pipelines (`kedro run -p monitoring|training|data`), papermill runs
# (notebooks/runs/*.ipynb), `looplab replay`, the MLflow tracking server and `looplab ops serve`.
#   docker build -f deploy/docker/jobs.Dockerfile -t looplab-jobs:$(git describe --tags) .

# --- build: the exact lock, installed with --no-deps; the Jupyter kernel papermill runs ----------------
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
    python -c "import looplab.ops, looplab.training, kedro, papermill"

# --- run ----------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS run
RUN groupadd --system --gid 10001 looplab && \
    useradd --system --uid 10001 --gid looplab --home-dir /app --shell /usr/sbin/nologin looplab
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root pyproject.toml kedro.yml ./
COPY --chown=root:root conf/base ./conf/base
COPY --chown=root:root conf/feature_repo ./conf/feature_repo
COPY --chown=root:root notebooks/runs ./notebooks/runs
COPY --chown=root:root src ./src
RUN mkdir -p data conf/local && chown -R looplab:looplab data conf/local
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOOPLAB_PROJECT_ROOT=/app \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    KEDRO_DISABLE_TELEMETRY=true \
    HOME=/tmp
USER 10001:10001
# a job has no port: healthy when the project and its configuration load
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
    CMD ["looplab", "info", "--json"]
CMD ["kedro", "run", "-p", "monitoring"]
