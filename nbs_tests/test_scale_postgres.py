"""conf/prod on real servers: PostgreSQL as MLflow's backend store and as the SQL source, an `mlflow server` serving artifacts, training, promotion and serving from that registry, and the faults: PostgreSQL stopped during a run, the tracking server restarted while serving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import copy_project, free_port, kedro_run, stop_process

PG_BIN = Path("/usr/lib/postgresql/15/bin")
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]  # initdb and postgres refuse root
MODEL = "bike-demand"
# Faults should fail fast: MLflow's client otherwise retries a failing request for minutes.
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").is_file(), reason="PostgreSQL 15 is not installed (make system-packages)")


def wait_until(check, timeout: float, what: str, interval: float = 0.25):
    "Call `check` until it returns something true, at most `timeout` seconds."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Postgres:
    "A throw-away PostgreSQL cluster on 127.0.0.1, run as `nobody` from a temporary folder it owns."

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="looplab-pg-", dir="/tmp"))  # not under pytest's root-only tmp
        shutil.chown(self.folder, "nobody", "nogroup")
        self.data, self.sockets, self.port, self.process = self.folder / "data", self.folder / "sockets", free_port(), None
        self.sockets.mkdir()
        shutil.chown(self.sockets, "nobody", "nogroup")
        try:
            subprocess.run([*AS_NOBODY, PG_BIN / "initdb", "-D", self.data, "-U", "looplab", "--auth=trust", "-E", "UTF8",
                            "--no-sync"], check=True, capture_output=True, timeout=120)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://looplab@127.0.0.1:{self.port}/{database}"

    def ready(self) -> bool:
        return subprocess.run([PG_BIN / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-q"], timeout=10).returncode == 0

    def start(self) -> None:
        self.log = open(self.folder / "postgres.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [*AS_NOBODY, PG_BIN / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.sockets,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.process.poll() is not None or self.ready(), 60, "PostgreSQL to accept connections")
        assert self.process.poll() is None, (self.folder / "postgres.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: active transactions are rolled back
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.log.close()
        self.process = None

    def execute(self, database: str, *statements: str) -> list:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="looplab", dbname=database)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                rows = []
                for statement in statements:
                    cursor.execute(statement)
                    rows = cursor.fetchall() if cursor.description else []
                return rows
        finally:
            connection.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class TrackingServer:
    "`mlflow server` on 127.0.0.1: backend store in PostgreSQL, artifacts served from a temporary folder."

    def __init__(self, tool, env: dict, backend: str, artifacts: Path):
        self.command = [tool("mlflow"), "server", "--backend-store-uri", backend, "--serve-artifacts",
                        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "1"]
        self.url = f"http://127.0.0.1:{self.command[self.command.index('--port') + 1]}"
        self.env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job consumers
        self.artifacts, self.process = artifacts, None

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> None:
        self.log = open(self.artifacts.parent / "mlflow-server.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.process.poll() is not None or self.healthy(), 180, "the MLflow tracking server")
        assert self.process.poll() is None, (self.artifacts.parent / "mlflow-server.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            wait_until(lambda: not self.healthy(), 30, "the tracking server to stop")
            self.log.close()
        self.process = None


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tool, quiet_env):
    postgres = Postgres()
    try:
        postgres.start()
        postgres.execute("postgres", "CREATE DATABASE mlflow", "CREATE DATABASE operational")
        artifacts = tmp_path_factory.mktemp("mlflow") / "artifacts"
        tracking = TrackingServer(tool, quiet_env, postgres.url("mlflow"), artifacts)
        try:
            tracking.start()
            yield postgres, tracking
        finally:
            tracking.stop()
    finally:
        postgres.remove()


@pytest.fixture(scope="module")
def project(tmp_path_factory, root, servers):
    "A project copy whose conf/prod points at the servers; the test's small data and training window."
    postgres, tracking = servers
    project = copy_project(root, tmp_path_factory.mktemp("prod") / "project")
    prod = project / "conf" / "prod"
    data = yaml.safe_load((prod / "parameters_data.yml").read_text())
    data["data"]["sources"]["history"]["url"] = postgres.url("operational")
    data["data"]["dask"]["scheduler"] = None                     # a LocalCluster in the Kedro process
    data["data"]["demo"] = {"enabled": True, "history_end": "2011-01-22", "landing_days": 2}  # landing files from the demo
    data["data"]["features"].pop("online_store")                  # Redis has its own test: SQLite here
    (prod / "parameters_data.yml").write_text(yaml.safe_dump(data))
    mlflow = yaml.safe_load((prod / "mlflow.yml").read_text())
    mlflow["mlflow"]["tracking_uri"] = tracking.url
    (prod / "mlflow.yml").write_text(yaml.safe_dump(mlflow))
    shutil.copy(root / "conf" / "test" / "parameters_training.yml", prod / "parameters_training.yml")
    return project


def seed_history(postgres: Postgres, root: Path) -> int:
    "The operational `rides` table in PostgreSQL: the first three weeks of the demo, times as text."
    import sqlalchemy as sa

    from looplab.core import load_config
    from looplab.sources import demo_rides, with_text_times

    params = load_config("parameters", root=root)["data"]
    rides = demo_rides(params, root)
    rides = rides[rides["timestamp"] < "2011-01-22"]
    engine = sa.create_engine(postgres.url("operational"))
    try:
        with engine.begin() as connection:
            with_text_times(rides).to_sql("rides", connection, index=False, if_exists="replace")
    finally:
        engine.dispose()
    return len(rides)


def client_of(tracking: TrackingServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking.url, registry_uri=tracking.url)


def versions(tracking: TrackingServer) -> dict[str, str]:
    "Every registered version of the model and its status."
    return {v.version: v.status for v in client_of(tracking).search_model_versions(f"name='{MODEL}'")}


def latest_json(folder: Path) -> dict:
    return json.loads((sorted(folder.iterdir())[-1] / folder.name).read_text())


def test_prod_conf_on_postgres_and_a_tracking_server(servers, project, root, tool, quiet_env, monkeypatch):
    postgres, tracking = servers
    seeded = seed_history(postgres, root)
    env = {**quiet_env, **FAST_FAILURE}

    # data layer: the SQL source reads PostgreSQL; validation reports go to the tracking server
    kedro_run(tool, env, project, "-p", "data", "--env", "prod")
    report = latest_json(project / "data" / "08_reporting" / "validation_report.json")
    assert report["sources"]["history"] == seeded and report["rows_valid"] > seeded, report
    assert report.get("engine") == "dask"  # conf/prod's engine, on a LocalCluster

    # training registers version 1 as champion in the server's registry, stored in PostgreSQL
    kedro_run(tool, env, project, "-p", "training", "--env", "prod")
    kedro_run(tool, env, project, "-p", "training", "--env", "prod", "--params", "training.model.family=linear,training.seed=7")
    assert versions(tracking) == {"1": "READY", "2": "READY"}
    rows = postgres.execute("mlflow", f"SELECT version, status FROM model_versions WHERE name = '{MODEL}' ORDER BY version")
    assert rows == [(1, "READY"), (2, "READY")]
    experiment = client_of(tracking).get_experiment_by_name("looplab-training")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    assert any(path.name == "MLmodel" for path in tracking.artifacts.rglob("MLmodel")), "the server did not store the model"

    # promotion through the command line, against the same registry. prod rebuilds a version before it
    # promotes it (registry.promote_verify); this copy is no git checkout, so that is refused with the reason
    refused = subprocess.run([tool("looplab"), "promote", MODEL, "2", "--env", "prod"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "no git commit" in refused.stderr, refused.stderr[-3000:]
    assert client_of(tracking).get_model_version_by_alias(MODEL, "champion").version == "1"
    promoted = subprocess.run([tool("looplab"), "promote", MODEL, "2", "--env", "prod", "--no-verify"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert client_of(tracking).get_model_version_by_alias(MODEL, "champion").version == "2"

    # serving loads the champion from that registry; then the tracking server restarts under it
    from fastapi.testclient import TestClient

    from looplab.serving import create_app, serving_settings

    for name, value in {**FAST_FAILURE, "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}.items():
        monkeypatch.setenv(name, value)
    settings = {**serving_settings("prod", project), "poll_interval_seconds": 0.5}
    settings["prediction_log"] = {**settings["prediction_log"], "path": None}
    from looplab.core import load_config

    features = load_config("parameters", env="prod", root=project)["training"]["features"]
    evaluation_rows = pd.read_parquet(sorted((project / "data/05_model_input/evaluation_set.parquet").iterdir())[-1] / "evaluation_set.parquet")
    with TestClient(create_app(settings, root=project, env="prod")) as http:
        ready = http.get("/ready").json()
        assert ready["ready"] and ready["version"] == "2" and ready["source"] == "registry", ready
        record = json.loads(evaluation_rows[features].head(3).to_json(orient="records"))

        def predict():
            answer = http.post(f"/v1/models/{MODEL}/predict", json={"records": record})
            assert answer.status_code == 200, answer.text
            return answer.json()

        assert predict()["model_version"] == "2"
        tracking.stop()
        wait_until(lambda: http.get("/ready").json().get("tracking_reachable") is False, 60, "serving to notice the tracking server is gone")
        assert predict()["model_version"] == "2"  # the cached champion keeps answering
        tracking.start()
        wait_until(lambda: http.get("/ready").json().get("tracking_reachable") is True, 60, "serving to reach the restarted server")
        client_of(tracking).set_registered_model_alias(MODEL, "champion", "1")
        wait_until(lambda: http.get("/ready").json().get("version") == "1", 60, "serving to follow the champion alias again")
        assert predict()["model_version"] == "1"


def test_postgres_stopped_during_a_training_run(servers, project, tool, quiet_env):
    "A clear error, no half-registered model; once PostgreSQL is back, the same run succeeds."
    postgres, tracking = servers
    before = versions(tracking)
    champion = client_of(tracking).get_model_version_by_alias(MODEL, "champion").version
    experiment = client_of(tracking).get_experiment_by_name("looplab-training").experiment_id
    runs_before = {run.info.run_id for run in client_of(tracking).search_runs([experiment], max_results=1000)}
    env = {**quiet_env, **FAST_FAILURE}
    run = subprocess.Popen([tool("kedro"), "run", "-p", "training", "--env", "prod"], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def training_started():
            found = client_of(tracking).search_runs([experiment], max_results=1000)
            return run.poll() is not None or {r.info.run_id for r in found} - runs_before
        wait_until(training_started, 180, "the training run to start", interval=0.1)
        postgres.stop()  # while the run trains: its next call to the tracking server fails
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            stop_process(run)
    assert run.returncode != 0, f"the run succeeded without its database:\n{output[-3000:]}"
    # the error names the tracking server and its answer (503: its backend store is unavailable)
    error = output[output.rindex("MlflowException"):]
    assert tracking.url in error and "503 error responses" in error, output[-3000:]

    postgres.start()

    def registry_answers() -> bool:
        try:
            return tracking.healthy() and versions(tracking) is not None
        except Exception:  # the server's pooled connections to the old PostgreSQL fail once
            return False
    wait_until(registry_answers, 60, "the tracking server to reach PostgreSQL again")
    assert versions(tracking) == before, "a model version was registered by the failed run"
    assert client_of(tracking).get_model_version_by_alias(MODEL, "champion").version == champion

    # the cut-off run could not be closed while its store was down: it is still RUNNING, and says which process opened it
    cut_off = [client_of(tracking).get_run(run_id) for run_id in
               {r.info.run_id for r in client_of(tracking).search_runs([experiment], max_results=1000)} - runs_before]
    assert cut_off and all(r.info.status == "RUNNING" and r.data.tags.get("looplab.pid") for r in cut_off), \
        [(r.info.status, r.data.tags.get("looplab.pid")) for r in cut_off]

    kedro_run(tool, env, project, "-p", "training", "--env", "prod")  # the next command closes it, with the reason
    for run in cut_off:
        closed = client_of(tracking).get_run(run.info.run_id)
        assert closed.info.status == "FAILED" and "ended without closing the run" in closed.data.tags["looplab.failure"], closed.data.tags
    after = versions(tracking)
    assert len(after) == len(before) + 1 and set(after.values()) == {"READY"}, after
