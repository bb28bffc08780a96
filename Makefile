# looplab: `make run` sets up and runs the whole loop, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := $(VENV)/share/jupyter/kernels/looplab/kernel.json
HOST ?= 127.0.0.1
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

# looplab makes no network calls at run time: Kedro's and MLflow's telemetry stay off (MLflow honours
# only the words: DO_NOT_TRACK=true or MLFLOW_DISABLE_TELEMETRY=true, not 1).
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export KEDRO_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: help setup system-packages run reset replay test lint sync-check nbtest pytest lab viz viz-build lock clean-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; looplab needs Python 3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name looplab --display-name "looplab (Python 3.11)" >/dev/null
	@echo "registered Jupyter kernel 'looplab'"

setup: $(STAMP) $(KERNEL)  ## create .venv from the lock and register the looplab kernel

# `make run`: the loop once (data → training → deployment → monitoring), then a short replay of the
# following weeks in which drift is detected, the trigger retrains and serving moves to the new champion.
# Run again, it repeats nothing: the Kedro run is skipped once a champion exists and the replay continues
# after the data's last day (or says the loop is up to date); `make reset` starts over.
RUN_REPLAY_START ?= 2011-03-15
RUN_REPLAY_END ?= 2011-04-30

run: setup  ## run the whole loop on embedded defaults, then close it with a short replay (about 2 min; again: continues)
	$(BIN)/looplab loop --start $(RUN_REPLAY_START) --end $(RUN_REPLAY_END)

reset: setup  ## remove what runs left (derived data, the demo's sources, the MLflow store); asks first (YES=1: does not)
	$(BIN)/looplab reset $(if $(YES),--yes)

# `make replay` continues where `make run` stopped: the rest of the year, to replay.end (conf).
REPLAY_START ?= 2011-05-01

replay: setup  ## after `make run`: replay the rest of the year (REPLAY_START … replay.end, about 5 min; VIA=stream feeds the days through the stream)
	$(BIN)/looplab replay --start $(REPLAY_START) $(if $(VIA),--via $(VIA))

# Debian packages some targets need: the gateway's nginx, Chromium for browser tests, wrk for load
# tests, Prometheus + Alertmanager (promtool, amtool) for the monitoring stack, PostgreSQL and Redis
# for the scale-out engines. Installed with apt-get when missing and running as root; otherwise the
# target stops and names them.
system-packages:  ## install the Debian packages the servers and tests need, when missing (as root)
	@missing=""; \
	test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -x /usr/bin/chromedriver || missing="$$missing chromium-driver"; \
	test -x /usr/bin/wrk || missing="$$missing wrk"; \
	test -x /usr/bin/promtool || missing="$$missing prometheus"; \
	test -x /usr/bin/amtool || missing="$$missing prometheus-alertmanager"; \
	test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -eq 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
		else \
			echo "error: looplab needs the Debian packages$$missing: run 'sudo apt-get install$$missing'" >&2; exit 1; \
		fi; \
	fi

lint: setup  ## ruff over the package, tests and benchmarks
	$(BIN)/ruff check src nbs_tests benchmarks

sync-check: setup  ## fail when the notebooks and the generated modules disagree
	$(BIN)/python nbs_tests/sync_check.py .

.PHONY: architecture
architecture: setup  ## write the module table and import graph (from the code) into the README's Architecture section
	$(BIN)/python nbs_tests/architecture.py .

# The notebooks' examples read the project as a fresh clone has it (LOOPLAB_PROJECT_ROOT: a copy of the
# project's own files), never the data, stores or conf/local that a user's runs left in the checkout.
nbtest: setup  ## run every notebook (library and test notebooks)
	@clean=$$(mktemp -d) && trap 'rm -rf "$$clean"' EXIT && \
	$(BIN)/python -c 'import sys; from looplab.core import copy_project_files; copy_project_files(".", sys.argv[1])' "$$clean" && \
	echo "$(BIN)/nbdev-test notebooks nbs_tests (on a fresh clone's files: $$clean)" && \
	LOOPLAB_PROJECT_ROOT="$$clean" $(BIN)/nbdev-test notebooks && \
	LOOPLAB_PROJECT_ROOT="$$clean" $(BIN)/nbdev-test nbs_tests

# One test module per worker (pytest-xdist, --dist loadfile): a module's servers and project copies start once,
# and each worker works in a project copy of its own. Modules are handed out in the conftest's order, longest
# first (--no-loadscope-reorder: not by their number of tests). PYTEST_WORKERS=0 runs the suite in this one process.
PYTEST_WORKERS ?= auto

pytest: setup  ## pytest over nbs_tests/ on every core (exit 5, "no tests collected", is not a failure)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder nbs_tests; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ]

test: setup system-packages setup-airflow lint sync-check nbtest pytest  ## set-up, ruff, sync guard, every notebook, pytest

LAB_PORT ?= 8888
VIZ_PORT ?= 4141

lab: setup  ## JupyterLab on $(HOST):$(LAB_PORT) with the looplab kernel
	$(BIN)/jupyter lab --ip=$(HOST) --port=$(LAB_PORT) --no-browser --notebook-dir=. $(ALLOW_ROOT)

viz: setup  ## kedro-viz on $(HOST):$(VIZ_PORT)
	$(BIN)/kedro viz run --host=$(HOST) --port=$(VIZ_PORT) --no-browser

viz-build: setup  ## static kedro-viz build into build/
	$(BIN)/kedro viz build

# The lock is complete, so it installs with --no-deps. Left out of it: rfc3987-syntax (and lark,
# which only it needs), the IRI format checker jsonschema's `format-nongpl` extra pulls in through
# jupyter-events: it builds 38 parsers on import, about 1.1 s added to every papermill run.
lock:  ## re-resolve requirements.lock from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --extra test --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --no-emit-package rfc3987-syntax \
		--no-emit-package lark -o requirements.lock

# Benchmarks: each writes benchmarks/results/<name>.json and prints one summary line; `make bench`
# ends with the one table of them all (bench-summary), after every benchmark, also under -j.
.PHONY: bench bench-data bench-training bench-serving bench-summary
SIZES ?= 1000000 10000000
REPS ?= 3
DURATION ?= 15

bench: setup bench-data bench-training bench-serving bench-monitoring bench-estimation bench-inference bench-logs bench-stream  ## run every benchmark, then write the summary table
	@$(MAKE) --no-print-directory bench-summary

bench-summary: setup  ## the one summary table of the last results: benchmarks/results/SUMMARY.md
	$(BIN)/python benchmarks/summary.py

STREAM_MB ?= 200

bench-data: setup  ## data layer at 1M and 10M rows, and one STREAM_MB landing CSV beside pyarrow alone (SIZES, STREAM_MB=0 skips)
	$(BIN)/python benchmarks/data/run.py --sizes $(SIZES) --stream-mb $(STREAM_MB)

bench-training: setup  ## one training run direct / kedro run -p training / papermill: wall times, overheads (REPS=3)
	$(BIN)/python benchmarks/training/run.py --repetitions $(REPS)

bench-serving: setup system-packages  ## mlflow models serve and BentoML (own venv in benchmarks/bentoml, built when missing) vs looplab through nginx under wrk, and a bare ASGI echo (the HTTP ceiling): rps, p50/p99, 10k-row batch rows/s (DURATION=15)
	DURATION=$(DURATION) $(BIN)/python benchmarks/serving/run.py

.PHONY: bench-monitoring
MONITORING_ROWS ?= 100000

bench-monitoring: setup  ## drift check of a 100k-row window, both backends (target <= 1 s); replay days/s (MONITORING_ROWS, REPS)
	$(BIN)/python benchmarks/monitoring/run.py --rows $(MONITORING_ROWS) --repetitions $(REPS)

.PHONY: bench-estimation
ESTIMATION_DATASETS ?= bike,bike-busy,breast-cancer

bench-estimation: setup  ## estimated vs realised error per window, looplab vs NannyML (own venv in benchmarks/nannyml) (ESTIMATION_DATASETS)
	$(BIN)/python benchmarks/estimation/run.py --datasets $(ESTIMATION_DATASETS)

.PHONY: bench-logs
LOG_LINES ?= 1000000

bench-logs: setup  ## looplab logs filtering a week of JSON logs (LOG_LINES=1M) against grep -c on the same files (target <= 2 s) (REPS)
	$(BIN)/python benchmarks/logs/run.py --lines $(LOG_LINES) --repetitions $(REPS)

.PHONY: bench-stream
STREAM_ROWS ?= 4000
STREAM_LATENCY_ROWS ?= 2000

bench-stream: setup system-packages  ## the stream consumer: stored msg/s vs redis's own XADD->XREADGROUP rate, event -> online feature p50/p99 (STREAM_ROWS, STREAM_LATENCY_ROWS)
	$(BIN)/python benchmarks/stream/run.py --rows $(STREAM_ROWS) --latency-rows $(STREAM_LATENCY_ROWS)

.PHONY: bench-inference
INFERENCE_ROUNDS ?= 3

# tl2cgen compiles the model with gcc: installed with apt-get when missing and running as root.
bench-inference: setup  ## the compiled predictor vs scikit-learn, treelite GTIL and tl2cgen at 1/100/10,000 rows (own venv in benchmarks/treelite) (INFERENCE_ROUNDS)
	@command -v gcc >/dev/null || { if [ "$$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null; \
		else echo "error: bench-inference needs gcc (tl2cgen compiles the model): run 'sudo apt-get install gcc'" >&2; exit 1; fi; }
	$(BIN)/python benchmarks/inference/run.py --rounds $(INFERENCE_ROUNDS)

# Serving: the champion on $(SERVE_WORKERS) uvicorn workers behind the nginx gateway; Ctrl-C stops both.
.PHONY: serve
SERVE_WORKERS ?= 2

# Ctrl-C stops both: the trap ignores further signals for the shell itself (`kill 0` signals the whole
# group, the shell included: a trap that re-entered itself crashed bash), stops the group and waits for it;
# a server still there after 5 s (a Ctrl-C that met it before it started, while it ignored TERM) is killed.
serve: setup system-packages  ## serve the champion through the nginx gateway (127.0.0.1:8080); Ctrl-C stops both
	@trap 'trap "" INT TERM; trap - EXIT; kill 0; for i in 1 2 3 4 5 6 7 8 9 10; do [ -z "$$(jobs -pr)" ] && break; sleep 0.5; done; \
		kill -9 $$(jobs -pr) 2>/dev/null; wait' INT TERM EXIT; \
	$(BIN)/looplab serve --workers $(SERVE_WORKERS) & \
	$(BIN)/looplab gateway & \
	wait

# The stream consumer of the conf's stream source (`looplab data stream`, data.sources kind: stream), its lag and
# pending entries at http://127.0.0.1:PORT/metrics (the source's metrics_port; STREAM_METRICS_PORT overrides it). When no Redis answers on 127.0.0.1:$(STREAM_REDIS_PORT),
# a redis-server is started beside it (data/01_raw/redis, append-only file on: the stream holds rows not stored yet);
# Ctrl-C stops both, as `make serve` does.
.PHONY: stream
STREAM_METRICS_PORT ?=
STREAM_REDIS_PORT ?= 6379

stream: setup system-packages  ## the stream consumer: stores what is published to the Redis stream, acknowledges it once stored; Ctrl-C stops
	@trap 'trap "" INT TERM; trap - EXIT; kill 0; for i in 1 2 3 4 5 6 7 8 9 10; do [ -z "$$(jobs -pr)" ] && break; sleep 0.5; done; \
		kill -9 $$(jobs -pr) 2>/dev/null; wait' INT TERM EXIT; \
	if ! redis-cli -h 127.0.0.1 -p $(STREAM_REDIS_PORT) ping >/dev/null 2>&1; then \
		mkdir -p data/01_raw/redis; echo "starting redis-server on 127.0.0.1:$(STREAM_REDIS_PORT) (data/01_raw/redis)" >&2; \
		redis-server --port $(STREAM_REDIS_PORT) --bind 127.0.0.1 --dir data/01_raw/redis --appendonly yes --save "" --loglevel warning & \
		for i in $$(seq 100); do redis-cli -h 127.0.0.1 -p $(STREAM_REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi; \
	$(BIN)/looplab data stream $(if $(STREAM_METRICS_PORT),--metrics-port $(STREAM_METRICS_PORT)) & \
	wait $$!

# The MLflow UI on this project's store (conf: mlflow.tracking_uri of $KEDRO_ENV, default local), sized
# for a laptop: one worker and no job runner (`mlflow ui` alone starts 4 workers and 6 job processes).
MLFLOW_PORT ?= 5000
.PHONY: mlflow-ui
mlflow-ui: setup  ## the MLflow UI of this project's store on $(HOST):$(MLFLOW_PORT), one worker
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --workers 1 --host $(HOST) --port $(MLFLOW_PORT) \
		--backend-store-uri "$$($(BIN)/python -c 'from looplab.core import mlflow_settings; print(mlflow_settings()["tracking_uri"])')"

# The Voila apps (notebooks/apps/): APP=serving by default, on $(HOST):$(APPS_PORT); `looplab apps` culls idle
# kernels and caps their number (serving.apps in conf).
.PHONY: apps
APP ?= serving
APPS_PORT ?= 8866

apps: setup  ## a Voila app on $(HOST) (APP=serving, APPS_PORT=8866)
	$(BIN)/looplab apps $(APP) --host $(HOST) --port $(APPS_PORT)

clean-venv:  ## remove .venv
	rm -rf $(VENV)

# Deploying (deploy/): images, the Kubernetes overlays, the monitoring stack; README "Deploying".
.PHONY: ops ops-render deploy-check images push-images cluster-render deploy cluster-monitor
REGISTRY ?= ghcr.io/looplab
TAG ?= $(shell git describe --tags --always 2>/dev/null || echo dev)
OVERLAY ?= dev
NAMESPACE ?= $(if $(filter prod,$(OVERLAY)),looplab,looplab-$(OVERLAY))
IMAGES := serving jobs apps
# Rendering uses the kubectl that comes with the lock (.venv/bin/kubectl, kustomize 5); applying to a
# cluster uses yours on PATH (KUBECTL=...), which should match the cluster's version.
KUSTOMIZE = $(BIN)/kubectl kustomize --load-restrictor=LoadRestrictionsNone
KUBECTL ?= kubectl

ops: setup  ## monitoring exporter + Alertmanager webhook (looplab ops serve, 127.0.0.1:9108)
	$(BIN)/looplab ops serve

ops-render: setup  ## render the Prometheus rules/config, Alertmanager config and k8s ingress from conf
	$(BIN)/looplab ops render

deploy-check: setup system-packages  ## deploy/ is consistent: rendered files match conf, promtool, amtool, every overlay renders
	$(BIN)/looplab ops render --check
	promtool check config deploy/monitoring/prometheus.yml
	promtool test rules deploy/monitoring/tests/looplab.rules.test.yml
	amtool check-config deploy/monitoring/alertmanager.yml
	@for overlay in dev prod; do $(KUSTOMIZE) deploy/k8s/overlays/$$overlay >/dev/null || exit 1; echo "deploy/k8s/overlays/$$overlay renders"; done

images:  ## docker build the serving, jobs and apps images as $(REGISTRY)/looplab-NAME:$(TAG)
	@for image in $(IMAGES); do \
		docker build -f deploy/docker/$$image.Dockerfile -t $(REGISTRY)/looplab-$$image:$(TAG) . || exit 1; \
	done

push-images: images  ## push the three images (docker login to $(REGISTRY) first)
	@for image in $(IMAGES); do docker push $(REGISTRY)/looplab-$$image:$(TAG) || exit 1; done

# The overlay with the images at $(TAG), through a generated kustomization in build/.
cluster-render:  ## print OVERLAY's manifests (dev|prod) with images $(REGISTRY)/looplab-NAME:$(TAG)
	@test -x $(BIN)/kubectl || { echo "error: $(BIN)/kubectl is missing: run make setup first" >&2; exit 1; }
	@mkdir -p build/cluster-$(OVERLAY)
	@{ printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../deploy/k8s/overlays/$(OVERLAY)]\nimages:\n'; \
	  for image in $(IMAGES); do printf '  - {name: ghcr.io/looplab/looplab-%s, newName: $(REGISTRY)/looplab-%s, newTag: "$(TAG)"}\n' $$image $$image; done; \
	} > build/cluster-$(OVERLAY)/kustomization.yaml
	@$(KUSTOMIZE) build/cluster-$(OVERLAY)

deploy: setup  ## apply OVERLAY at TAG to the current kubectl context and wait for serving to roll out
	mkdir -p build && $(MAKE) --no-print-directory cluster-render OVERLAY=$(OVERLAY) TAG=$(TAG) REGISTRY=$(REGISTRY) > build/cluster-$(OVERLAY).yaml
	$(KUBECTL) apply -f build/cluster-$(OVERLAY).yaml
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/looplab-serving --timeout=10m

cluster-monitor:  ## run one monitoring window in the cluster now (OVERLAY=prod or NAMESPACE=...) and wait for it
	$(KUBECTL) -n $(NAMESPACE) create job --from=cronjob/looplab-monitoring looplab-monitoring-manual-$$(date +%s) -o name \
		| xargs -I{} $(KUBECTL) -n $(NAMESPACE) wait --for=condition=complete --timeout=55m {}

# Airflow: the DAGs come from kedro-airflow (`make airflow-dags`, template orchestration/airflow/dag_template.j2,
# schedules in conf/<env>/airflow.yml). Airflow itself lives in its own environment, .venv-airflow,
# installed from orchestration/airflow/requirements.lock (its pins clash with the main environment's); `make test`
# installs it (2 s with uv, 83 s with pip on 2 busy cores) for the DagBag test.
.PHONY: setup-airflow airflow-dags lock-airflow
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_ENV ?= prod
AIRFLOW_DAGS ?= orchestration/airflow/dags
AIRFLOW_PIPELINES ?= data training deployment monitoring
AIRFLOW_CONSTRAINTS ?=

$(AIRFLOW_STAMP): orchestration/airflow/requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Airflow's environment needs Python 3.11" >&2; exit 1; }
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	@if command -v uv >/dev/null; then \
		uv pip install --quiet --python $(AIRFLOW_VENV)/bin/python --no-deps -r orchestration/airflow/requirements.lock; \
	else \
		$(AIRFLOW_VENV)/bin/python -m pip install --quiet --progress-bar off --no-deps -r orchestration/airflow/requirements.lock; \
	fi
	@touch $@

setup-airflow: $(AIRFLOW_STAMP)  ## Apache Airflow in .venv-airflow, from orchestration/airflow/requirements.lock

airflow-dags: setup  ## Airflow DAGs of the pipelines that exist into orchestration/airflow/dags (AIRFLOW_ENV=prod)
	@listed=$$($(BIN)/kedro registry list 2>&1) || { echo "$$listed" >&2; exit 1; }; \
	pipelines=$$(sed -n 's/^- //p' <<< "$$listed"); \
	for name in $(AIRFLOW_PIPELINES); do \
		if ! grep -qx "$$name" <<< "$$pipelines"; then echo "no '$$name' pipeline: no DAG for it"; continue; fi; \
		out=$$($(BIN)/kedro airflow create --pipelines $$name --group-by memory --env $(AIRFLOW_ENV) \
			--jinja-file orchestration/airflow/dag_template.j2 --target-dir $(AIRFLOW_DAGS) 2>&1) || { echo "$$out" >&2; exit 1; }; \
		grep -o "Converted pipeline .*" <<< "$$out"; \
	done

# Airflow publishes a constraints file per release and Python version; pass it when reachable:
# make lock-airflow AIRFLOW_CONSTRAINTS=https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt
lock-airflow:  ## re-resolve orchestration/airflow/requirements.lock (needs uv)
	uv pip compile --quiet orchestration/airflow/requirements.in --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		$(if $(AIRFLOW_CONSTRAINTS),--constraint $(AIRFLOW_CONSTRAINTS)) -o orchestration/airflow/requirements.lock
