"""Shared fixtures for looplab's pytest modules."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from looplab.core import copy_project_files

REPOSITORY = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Tests never read what a user's runs leave in the checkout (landing files, mlflow.db, the served-model
# cache, reports, conf/local): the whole session works on a copy of the project's own files, as a fresh
# clone has them, and in a working directory inside that copy.
ROOT = copy_project_files(REPOSITORY, Path(tempfile.mkdtemp(prefix="looplab-tests-")) / "project")
# What the copy held before any test ran (the tests' own runs add logs and stores to it later).
COPIED = frozenset(path.relative_to(ROOT).as_posix() for path in ROOT.rglob("*"))

# A user's shell may point looplab, Kedro or MLflow elsewhere; the tests set what they need themselves.
# (MLflow's fluent API also writes its active store and experiment into os.environ: child processes of a
# test never inherit what an earlier test in the same worker left there.)
OUTSIDE_SETTINGS = ("LOOPLAB_PROJECT_ROOT", "LOOPLAB_SERVING_URL", "LOOPLAB_LOG_LEVEL", "LOOPLAB_TRACEBACK",
                    "KEDRO_ENV", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def runs_no_tests(config) -> bool:
    "True in pytest-xdist's controller: it only starts the workers, which inherit its working directory and collect from it."
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    for name in OUTSIDE_SETTINGS:
        os.environ.pop(name, None)
    if not runs_no_tests(config):  # the controller stays in the checkout, so every worker collects the checkout's tests
        os.chdir(ROOT)


# With pytest-xdist (`make test`) each module runs on one worker, handed out in collection order: the
# longest modules (measured on 2 cores, several minutes each) go first, so that no worker is still busy
# with a long one at the end while the other idles. The others keep their order.
LONGEST_FIRST = (
    "test_monitoring.py", "test_scale_postgres.py", "test_backtest.py", "test_training_pipeline.py", "test_serving.py", "test_benchmarks.py",
    "test_serve_gateway.py", "test_drift.py", "test_app_monitoring.py", "test_app_serving.py", "test_second_dataset_training.py",
    "test_scale_redis.py", "test_serving_load.py", "test_scale_dask.py", "test_settings.py", "test_reproduction_isolated.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: a module's tests stay together, in order


def pytest_unconfigure(config):
    # What still runs as the process ends (MLflow ends a run left open, at exit) writes into a folder of the
    # session's own, never into the checkout; the whole session folder goes last (registered first, runs last).
    after = ROOT.parent / "after-session"
    after.mkdir(exist_ok=True)
    os.chdir(after)
    shutil.rmtree(ROOT, ignore_errors=True)


atexit.register(shutil.rmtree, ROOT.parent, True)


@pytest.fixture(scope="session")
def root() -> Path:
    "The project as a fresh clone has it (a copy: tests that write into it write into a throw-away folder)."
    return ROOT


@pytest.fixture(scope="session")
def repository() -> Path:
    "The checkout the tests come from, for facts only it has: its git history and its environment."
    return REPOSITORY


@pytest.fixture(scope="session")
def tool():
    "Path of a command installed in the project's environment."

    def find(name: str) -> str:
        path = BIN / name
        assert path.is_file(), f"{name} is not installed in {BIN}; run make setup"
        return str(path)

    return find


@pytest.fixture(scope="session")
def quiet_env() -> dict[str, str]:
    "The environment for child processes: no telemetry, unbuffered output."
    inherited = {name: value for name, value in os.environ.items() if name not in OUTSIDE_SETTINGS}
    return {**inherited, "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


# Servers listen below the kernel's ephemeral range (32768-60999 here): a port from inside it can be taken
# by a client's outgoing connection while a killed worker restarts (bind: address already in use).
LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    "A port of 127.0.0.1 that nothing listens on, with the next one free too (workers take consecutive ports)."
    import random

    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        try:
            with socket.socket() as probe, socket.socket() as following:
                probe.bind(("127.0.0.1", port))
                following.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# What `kedro run` needs, and the papermill notebooks a run may start (the retraining trigger runs
# notebooks/runs/train.ipynb); `data/` holds only the committed demo data.
PROJECT_FOR_RUNS = ("pyproject.toml", "kedro.yml", ".telemetry", "conf", "src", "notebooks/runs", "data")


def copy_project(root: Path, destination: Path) -> Path:
    "The project's own files that `kedro run` needs, copied so runs write only into `destination`."
    return copy_project_files(root, destination, only=PROJECT_FOR_RUNS)


def kedro_run(tool, env, project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [tool("kedro"), "run", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, f"kedro run {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def latest_json(folder: Path) -> dict:
    versions = sorted(p for p in folder.iterdir() if p.is_dir())
    return json.loads((versions[-1] / folder.name).read_text())


# The first project with a trained champion a worker builds is its template: later ones are copies of it (the
# data, the feature store and the MLflow store with its artifacts), the store's artifact paths pointed at the copy.
_TRAINED: dict[Path, Path] = {}


def project_with_models(root: Path, destination: Path, tool, env: dict, second_version: bool = False) -> Path:
    "A project copy with the test data and `bike-demand` version 1 as champion; with `second_version`, a linear version 2 too."
    from looplab.backtest import relocate_mlflow

    template = _TRAINED.get(root)
    if template is None:
        template = copy_project(root, ROOT.parent / "trained" / "project")
        kedro_run(tool, env, template, "-p", "data", "--env", "test")
        kedro_run(tool, env, template, "-p", "training", "--env", "test")
        _TRAINED[root] = template
    shutil.copytree(template, destination, symlinks=True, dirs_exist_ok=True)
    relocate_mlflow(destination / "mlflow.db", template, destination)
    project = destination
    if second_version:
        kedro_run(tool, env, project, "-p", "training", "--env", "test",
                  "--params", "training.model.family=linear,training.seed=7")
    return project


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    "Terminate a child process, and kill it when it does not stop within `timeout` seconds."
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_until(condition, seconds: float, what: str, poll: float = 0.3):
    "Poll `condition` until it returns something true (that value), for at most `seconds`; fail naming `what`."
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(poll)


# `looplab serve` (and the gateway) as a user runs them, for the tests that load, kill and stop real workers.
def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Stack:
    "`looplab serve --workers 2` and `looplab gateway` on free loopback ports of a project copy."

    def __init__(self, project: Path, tool, env: dict, logs: Path):
        self.project, self.tool, self.env, self.logs = project, tool, {**env, "LOOPLAB_PROJECT_ROOT": str(project)}, logs
        self.serving_port = free_port()
        while not all(_free(port) for port in (self.serving_port, self.serving_port + 1)):
            self.serving_port = free_port()
        self.gateway_port = free_port()
        while self.gateway_port in (self.serving_port, self.serving_port + 1):
            self.gateway_port = free_port()
        self.run_dir = tempfile.mkdtemp(prefix="looplab-gateway-")
        os.chmod(self.run_dir, 0o755)  # nginx's workers run as an unprivileged user, who must enter it
        (project / "conf" / "local" / "gateway.yml").write_text(
            f"gateway:\n  listen: 127.0.0.1:{self.gateway_port}\n  run_dir: {self.run_dir}\n  fail_timeout_seconds: 2\n"
            "  auth: none\n"  # open on purpose: these tests are about faults under load; test_serve_gateway covers keys
            "  rate_limit:\n    requests_per_second: 100000\n    burst: 100000\n")
        self.serve: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def worker_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.serving_port + index}"

    def start_serve(self, log_folder: Path) -> None:
        "Start the workers, logging predictions into `log_folder`; wait until both answer."
        self.stop_serve()
        (self.project / "conf" / "local" / "serving.yml").write_text(
            f"serving:\n  port: {self.serving_port}\n  workers: 2\n  prediction_log:\n    path: {log_folder}\n")
        self.runs += 1
        self.serve_log = self.logs / f"serve-{self.runs}.log"
        with self.serve_log.open("w") as output:
            self.serve = subprocess.Popen([self.tool("looplab"), "serve", "--workers", "2"], cwd=self.project, env=self.env,
                                          stdout=output, stderr=subprocess.STDOUT)
        for index in (0, 1):
            wait_until(lambda index=index: self.serve.poll() is None and ready(self.worker_url(index)) or self._died(), 120,
                       f"serving worker {index + 1}")

    def _died(self):
        assert self.serve.poll() is None, self.serve_log.read_text()[-3000:]
        return False

    def start_gateway(self) -> None:
        with (self.logs / "gateway.log").open("w") as output:
            self.gateway = subprocess.Popen([self.tool("looplab"), "gateway"], cwd=self.project, env=self.env,
                                            stdout=output, stderr=subprocess.STDOUT)
        wait_until(lambda: ready(self.url), 30, "the gateway")

    def worker_pid(self, index: int) -> int:
        "The pid of worker `index` (0-based) as `looplab serve` last reported it."
        text = self.serve_log.read_text()
        port = self.serving_port + index
        found = re.findall(rf"worker {index + 1}: http://127\.0\.0\.1:{port}\s+\(pid (\d+)", text)
        found += re.findall(rf"on port {port} exited .*; restarted it as pid (\d+)", text)
        assert found, text[-2000:]
        return int(found[-1])

    def stop_serve(self) -> None:
        "Graceful stop (SIGTERM): the workers flush their prediction logs."
        if self.serve is not None:
            stop_process(self.serve, timeout=60)
            assert self.serve.returncode is not None
            self.serve = None

    def close(self) -> None:
        self.stop_serve()
        if self.gateway is not None:
            stop_process(self.gateway)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def stack(root, tmp_path_factory, tool, quiet_env):
    "A project copy with the champion, and its `Stack` (nothing started yet); stopped after the module."
    project = project_with_models(root, tmp_path_factory.mktemp("stack") / "project", tool, quiet_env)
    stack = Stack(project, tool, quiet_env, tmp_path_factory.mktemp("stack-logs"))
    try:
        yield stack
    finally:
        stack.close()


def good_record(project: Path) -> dict:
    "One row of the evaluation set's model inputs, without missing values, as a JSON record."
    from looplab.core import load_config
    from looplab.versioning import load_version

    features = load_config(env="test", root=project)["training"]["features"]
    row = load_version(project / "data" / "05_model_input" / "evaluation_set.parquet")[features].dropna().iloc[0]
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}


@contextlib.contextmanager
def running_server(
    command: list[str], cwd: Path, env: dict, ready_url: str, log_path: Path,
    timeout: float = 120, ready=lambda status: status == 200,
):
    "Start `command`, wait (bounded) until `ready_url` answers with a status `ready` accepts; yield; always stop it."
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert server.poll() is None, log_path.read_text()[-3000:]
                try:
                    if ready(requests.get(ready_url, timeout=5).status_code):
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, f"{Path(command[0]).name} {command[1]} did not answer within {timeout:.0f} s:\n" \
                    + log_path.read_text()[-3000:]
                time.sleep(0.3)
            yield server
        finally:
            stop_process(server, timeout=20)


# Browser tests drive Debian's Chromium (packages chromium, chromium-driver) through Playwright.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    "Headless Debian Chromium through Playwright, for one test module."
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
