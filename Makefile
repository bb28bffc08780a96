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

# looplab makes no network calls at run time: Kedro's telemetry stays off.
export DO_NOT_TRACK := 1
export KEDRO_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: help setup system-packages run test lint sync-check nbtest pytest lab viz viz-build lock clean-venv

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

run: setup  ## run the whole loop on embedded defaults (kedro run -c kedro.yml)
	$(BIN)/kedro run -c kedro.yml

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

nbtest: setup  ## run every notebook (library and test notebooks)
	$(BIN)/nbdev-test notebooks
	$(BIN)/nbdev-test nbs_tests

pytest: setup  ## pytest over nbs_tests/ (exit 5, "no tests collected", is not a failure)
	$(BIN)/pytest nbs_tests; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ]

test: setup system-packages lint sync-check nbtest pytest  ## set-up, ruff, sync guard, every notebook, pytest

lab: setup  ## JupyterLab on $(HOST) with the looplab kernel
	$(BIN)/jupyter lab --ip=$(HOST) --no-browser --notebook-dir=. $(ALLOW_ROOT)

viz: setup  ## kedro-viz on $(HOST)
	$(BIN)/kedro viz run --host=$(HOST) --no-browser

viz-build: setup  ## static kedro-viz build into build/
	$(BIN)/kedro viz build

# The lock is complete, so it installs with --no-deps. Left out of it: rfc3987-syntax (and lark,
# which only it needs), the IRI format checker jsonschema's `format-nongpl` extra pulls in through
# jupyter-events: it builds 38 parsers on import, about 1.1 s added to every papermill run.
lock:  ## re-resolve requirements.lock from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --extra test --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --no-emit-package rfc3987-syntax \
		--no-emit-package lark -o requirements.lock

# Benchmarks: each writes benchmarks/results/<name>.json and prints one summary line.
.PHONY: bench bench-data bench-training bench-serving
SIZES ?= 1000000 10000000
REPS ?= 3
DURATION ?= 15

bench: setup bench-data bench-training bench-serving  ## run every benchmark

bench-data: setup  ## data layer at 1M and 10M rows: rows/s, peak RSS, time ratio (SIZES="100000 1000000" to override)
	$(BIN)/python benchmarks/data/run.py --sizes $(SIZES)

bench-training: setup  ## one training run direct / kedro run -p training / papermill: wall times, overheads (REPS=3)
	$(BIN)/python benchmarks/training/run.py --repetitions $(REPS)

bench-serving: setup system-packages  ## mlflow models serve vs looplab through nginx under wrk: rps, p50/p99, 10k-row batch rows/s (DURATION=15)
	DURATION=$(DURATION) $(BIN)/python benchmarks/serving/run.py

# Serving: the champion on $(SERVE_WORKERS) uvicorn workers behind the nginx gateway; Ctrl-C stops both.
.PHONY: serve
SERVE_WORKERS ?= 2

serve: setup system-packages  ## serve the champion through the nginx gateway (127.0.0.1:8080)
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/looplab serve --workers $(SERVE_WORKERS) & \
	$(BIN)/looplab gateway & \
	wait

# The Voila apps (notebooks/apps/): APP=serving by default, on $(HOST):$(APPS_PORT).
.PHONY: apps
APP ?= serving
APPS_PORT ?= 8866

apps: setup  ## a Voila app on $(HOST) (APP=serving, APPS_PORT=8866)
	$(BIN)/voila notebooks/apps/$(APP).ipynb --no-browser --Voila.ip=$(HOST) --port=$(APPS_PORT)

clean-venv:  ## remove .venv
	rm -rf $(VENV)
