"""The training layer end to end: `kedro run -p training`, the papermill notebook, and the registry commands."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path

import mlflow
import pytest

from conftest import project_with_models, stop_process


@pytest.fixture(scope="module")
def project(root, tmp_path_factory, tool, quiet_env):
    "A project copy with the test environment's data and one `kedro run -p training`."
    return project_with_models(root, tmp_path_factory.mktemp("training") / "project", tool, quiet_env)


def looplab(tool, env, project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("looplab"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def status(tool, env, project) -> dict:
    result = looplab(tool, env, project, "status", "--json", "--env", "test")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_kedro_training_registers_a_champion(project, tool, quiet_env):
    registration = json.loads((project / "data" / "08_reporting" / "registration.json").read_text())
    assert registration["name"] == "bike-demand" and registration["version"] == "1"
    facts = status(tool, quiet_env, project)
    assert facts["tracking_uri"] == f"sqlite:///{project}/mlflow.db"
    model = next(m for m in facts["models"] if m["name"] == "bike-demand")
    assert model["aliases"]["champion"] == "1" and model["aliases"]["challenger"] == "1"
    version = model["versions"][0]
    assert version["tags"]["gate.passed"] == "true", version["tags"]
    assert version["evaluated_on"] == "2011-01-20 … 2011-01-24", version  # conf/test: train to Jan 20, evaluate 4 days
    table = looplab(tool, quiet_env, project, "status", "--env", "test").stdout
    assert "EVALUATED ON" in table and "2011-01-20 … 2011-01-24" in table, table
    # a one-line description: the gate's outcome, its numbers, the days compared and the days trained on
    described = version["description"]
    assert described.startswith("promoted: MAE ") and " vs baseline " in described, described
    assert described.endswith(" on 2011-01-20..2011-01-23; trained on 2011-01-01..2011-01-19"), described
    assert f"  version 1: {described}" in table.splitlines(), table
    assert (version["tags"]["data.trained_on"], version["tags"]["gate.compared_on"]) == ("2011-01-01..2011-01-19", "2011-01-20..2011-01-23")
    assert {key.split(".")[0] for key in version["tags"]} <= {"run", "code", "env", "data", "model", "gate", "looplab"}, sorted(version["tags"])
    run = mlflow.MlflowClient(tracking_uri=facts["tracking_uri"]).get_run(version["run_id"])
    assert {"mae", "rmse", "r2", "baseline_mae"} <= set(run.data.metrics)
    assert run.data.metrics["mae"] < run.data.metrics["baseline_mae"], "the model must beat the seasonal-naive baseline"
    assert {"git_commit", "lock_hash"} <= {key.split(".")[-1] for key in run.data.tags}, sorted(run.data.tags)
    assert run.inputs.dataset_inputs, "the data versions the model saw are logged as inputs"
    assert all(len(d.dataset.digest) > 8 for d in run.inputs.dataset_inputs)


def test_papermill_run_registers_and_keeps_its_lab_record(root, project, tool, quiet_env):
    output = project / "data" / "08_reporting" / "train-linear.ipynb"
    result = subprocess.run(
        [tool("papermill"), str(root / "notebooks" / "runs" / "train.ipynb"), str(output), "-k", "looplab",
         "-p", "env", "test", "-p", "model_family", "linear", "-p", "seed", "7", "-p", "experiment", "papermill-runs",
         "-p", "register", "True"],
        cwd=project, env=quiet_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert output.is_file()
    facts = status(tool, quiet_env, project)
    model = next(m for m in facts["models"] if m["name"] == "bike-demand")
    version = next(v for v in model["versions"] if v["version"] == "2")
    client = mlflow.MlflowClient(tracking_uri=facts["tracking_uri"])
    run = client.get_run(version["run_id"])
    assert run.data.params["training.model.family"] == "linear" and run.data.params["seed"] == "7"
    assert client.get_experiment(run.info.experiment_id).name == "papermill-runs"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notebook")] == ["notebook/train-linear.ipynb"]
    # The linear model does not beat the champion: a normal outcome, the champion stays.
    assert model["aliases"]["challenger"] == "2"
    assert model["aliases"]["champion"] == ("2" if version["tags"]["gate.passed"] == "true" else "1")


def test_papermill_in_another_environment_keeps_everything_in_that_environments_store(root, project, tool, quiet_env):
    "`-p env NAME` with KEDRO_ENV unset: the run, the registered version and the lab record all land in NAME's MLflow store."
    import shutil

    shutil.copytree(project / "conf" / "test", project / "conf" / "elsewhere")
    (project / "conf" / "elsewhere" / "mlflow.yml").write_text(
        "mlflow:\n  tracking_uri: sqlite:///elsewhere.db\n  artifact_root: elsewhere-artifacts\n")
    env = {key: value for key, value in quiet_env.items() if key != "KEDRO_ENV"}
    default_versions = len(next(m for m in status(tool, quiet_env, project)["models"] if m["name"] == "bike-demand")["versions"])
    output = project / "data" / "08_reporting" / "train-elsewhere.ipynb"
    result = subprocess.run(
        [tool("papermill"), str(root / "notebooks" / "runs" / "train.ipynb"), str(output), "-k", "looplab",
         "-p", "env", "elsewhere", "-p", "seed", "3", "-p", "register", "True"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    store = f"sqlite:///{project / 'elsewhere.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)  # both explicit: the process may have set a registry
    [version] = client.search_model_versions("name='bike-demand'")
    assert str(version.version) == "1" and str(client.get_model_version_by_alias("bike-demand", "champion").version) == "1"
    # the lab record on disk, under that environment's own artifact root
    artifacts = Path(urllib.parse.urlparse(client.get_run(version.run_id).info.artifact_uri).path)
    assert artifacts.is_relative_to(project / "elsewhere-artifacts"), artifacts
    assert (artifacts / "notebook" / "train-elsewhere.ipynb").is_file()
    assert len(next(m for m in status(tool, quiet_env, project)["models"] if m["name"] == "bike-demand")["versions"]) == default_versions
    shutil.rmtree(project / "conf" / "elsewhere")


def test_promote_and_rollback(project, tool, quiet_env):
    promoted = looplab(tool, quiet_env, project, "promote", "bike-demand", "2", "--env", "test")
    assert promoted.returncode == 0, promoted.stderr
    assert "champion of bike-demand: version 1 → 2" in promoted.stdout
    assert next(m for m in status(tool, quiet_env, project)["models"] if m["name"] == "bike-demand")["aliases"]["champion"] == "2"
    rolled = looplab(tool, quiet_env, project, "rollback", "bike-demand", "--env", "test")
    assert rolled.returncode == 0, rolled.stderr
    assert next(m for m in status(tool, quiet_env, project)["models"] if m["name"] == "bike-demand")["aliases"]["champion"] == "1"
    unknown = looplab(tool, quiet_env, project, "promote", "bike-demand", "99", "--env", "test")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr and "99" in unknown.stderr


def test_reproduce_the_champion(project, tool, quiet_env):
    result = looplab(tool, quiet_env, project, "reproduce", "bike-demand@champion", "--json", "--env", "test")
    assert result.returncode == 0, result.stdout + result.stderr
    comparison = json.loads(result.stdout)
    assert comparison["matches"] is True
    assert {row["name"] for row in comparison["metrics"]} >= {"mae", "rmse", "r2"}


def test_the_registered_model_is_visible_in_the_mlflow_ui(project, tool, quiet_env, tmp_path):
    "The MLflow UI's server answers with the registered model and its aliases from the project's store."
    import time

    import requests

    from conftest import free_port

    port = free_port()
    log = (tmp_path / "mlflow-ui.log").open("w")
    server = subprocess.Popen(
        [tool("mlflow"), "ui", "--backend-store-uri", f"sqlite:///{project}/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=project, env=quiet_env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get"
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "mlflow-ui.log").read_text()[-3000:]
            try:
                response = requests.get(url, params={"name": "bike-demand"}, timeout=30)
                if response.ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting on a busy machine
                pass
            assert time.monotonic() < deadline, "the MLflow UI did not answer within 240 s"
            time.sleep(0.5)
        model = response.json()["registered_model"]
        aliases = {alias["alias"]: alias["version"] for alias in model.get("aliases", [])}
        assert aliases["champion"] == "1"
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=60).ok, "the UI page itself is served"
    finally:
        stop_process(server, timeout=20)
        log.close()


def test_an_exploratory_papermill_run_leaves_the_registry_alone(root, project, tool, quiet_env):
    "Without `-p register True`: a tracked, evaluated run with its lab record, and no new version, no moved alias."
    "Explored on an earlier window, the champion (trained until January 20) is compared on the days it never saw, with a warning."
    before = next(m for m in status(tool, quiet_env, project)["models"] if m["name"] == "bike-demand")
    store = f"sqlite:///{project / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    tags_before = dict(client.get_registered_model("bike-demand").tags)
    output = project / "data" / "08_reporting" / "train-explore.ipynb"
    result = subprocess.run(
        [tool("papermill"), str(root / "notebooks" / "runs" / "train.ipynb"), str(output), "-k", "looplab",
         "-p", "env", "test", "-p", "seed", "11", "-p", "experiment", "exploration", "-p", "window_end", "2011-01-18"],
        cwd=project, env=quiet_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    after = next(m for m in status(tool, quiet_env, project)["models"] if m["name"] == "bike-demand")
    assert [v["version"] for v in after["versions"]] == [v["version"] for v in before["versions"]]
    assert after["aliases"] == before["aliases"] and dict(client.get_registered_model("bike-demand").tags) == tags_before
    assert [v["tags"] for v in after["versions"]] == [v["tags"] for v in before["versions"]], "no version's tags change"
    [run] = client.search_runs([client.get_experiment_by_name("exploration").experiment_id])
    assert run.data.params["seed"] == "11" and "mae" in run.data.metrics and "baseline_mae" in run.data.metrics
    champion = before["aliases"]["champion"]
    note = (f"the champion (version {champion}) was trained on 2011-01-01..2011-01-19, which covers 2011-01-18..2011-01-19 of the "
            "evaluation window 2011-01-18..2011-01-21: both compared on 2011-01-20..2011-01-21 only (")
    assert note in run.data.tags["gate_reason"], run.data.tags["gate_reason"]
    assert f"evaluation of bike-demand: {note}" in output.read_text(), "the warning is in the lab record"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notebook")] == ["notebook/train-explore.ipynb"]
    assert "not registered: an exploratory run" in output.read_text()
