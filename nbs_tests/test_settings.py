"""One settings object, handed on: two conf environments run in one process and neither reaches the other.

Each environment has its own MLflow store and its own registered model. Kedro sessions of both run one
after the other in one Python process, started outside the project: every run, experiment and model
lands in its own environment's store, and the process's environment variables and working directory
are what they were before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import copy_project

ENVIRONMENTS = {"alpha": "alpha-demand", "beta": "beta-demand"}

# Runs in a child process: its own interpreter, so what Kedro and MLflow do process-wide is all there is to see.
SCRIPT = r"""
import json, os, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

project, order = Path(sys.argv[1]), json.loads(sys.argv[2])
bootstrap_project(project)
watched = ("LOOPLAB_", "KEDRO_", "MLFLOW_")
before = {name: value for name, value in os.environ.items() if name.startswith(watched)}
cwd = os.getcwd()
for env, pipeline in order:
    with KedroSession.create(project_path=project, env=env) as session:
        session.run(pipeline_name=pipeline)
after = {name: value for name, value in os.environ.items() if name.startswith(watched)}
print(json.dumps({"before": before, "after": after, "cwd_before": cwd, "cwd_after": os.getcwd()}))
"""


@pytest.fixture(scope="module")
def two_environments(root, tmp_path_factory) -> Path:
    "A project copy with conf environments alpha and beta: the test environment's data, a store and a model name each."
    project = copy_project(root, tmp_path_factory.mktemp("settings") / "project")
    for env, model in ENVIRONMENTS.items():
        folder = project / "conf" / env
        shutil.copytree(project / "conf" / "test", folder)
        (folder / "mlflow.yml").write_text(
            f"mlflow:\n  tracking_uri: sqlite:///mlflow-{env}.db\n  artifact_root: mlartifacts-{env}\n")
        training = (folder / "parameters_training.yml").read_text()
        assert training.startswith("# ") and "\ntraining:\n" in training
        (folder / "parameters_training.yml").write_text(training.replace("\ntraining:\n", f"\ntraining:\n  model_name: {model}\n", 1))
    return project


def store(project: Path, env: str) -> MlflowClient:
    uri = f"sqlite:///{project / f'mlflow-{env}.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_two_environments_in_one_process_stay_apart(two_environments, quiet_env, tmp_path):
    project = two_environments
    order = [("alpha", "data"), ("beta", "data"), ("alpha", "training"), ("beta", "training"), ("alpha", "training")]
    outside = tmp_path / "elsewhere"  # started outside the project: nothing may lean on the working directory
    outside.mkdir()
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(project), json.dumps(order)], cwd=outside, env=quiet_env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    looplab_own = lambda variables: {name: value for name, value in variables.items() if not name.startswith("MLFLOW_")}  # noqa: E731
    assert looplab_own(seen["after"]) == looplab_own(seen["before"]), "a run handed something on through os.environ"
    # MLflow's fluent API keeps its active store in MLFLOW_TRACKING_URI (for its child processes): after the
    # last run, the last environment's store, never a mix.
    mlflow_after = {name: value for name, value in seen["after"].items() if name.endswith(("_TRACKING_URI", "_REGISTRY_URI"))}
    assert set(mlflow_after.values()) <= {f"sqlite:///{project / 'mlflow-alpha.db'}"}, mlflow_after
    assert seen["cwd_after"] == seen["cwd_before"] == str(outside)

    assert not (project / "mlflow.db").exists(), "a run fell back to the local environment's store"
    trained = {"alpha": 2, "beta": 1}
    for env, model in ENVIRONMENTS.items():
        client = store(project, env)
        models = {registered.name for registered in client.search_registered_models()}
        assert models == {model}, f"{env}'s registry holds {models}"
        assert len(client.search_model_versions(f"name='{model}'")) == trained[env], env
        experiments = {experiment.name: experiment.experiment_id for experiment in client.search_experiments()}
        training = client.search_runs([experiments["looplab-training"]])
        assert len(training) == trained[env], f"{env}: {len(training)} training runs"
        assert {run.data.tags.get("mlflow.runName", "") for run in training}, env
        for run in client.search_runs(list(experiments.values())):
            artifacts = run.info.artifact_uri.removeprefix("file://")
            assert Path(artifacts).is_relative_to(project / f"mlartifacts-{env}"), (env, artifacts)
        # both environments read the test environment's landing folders: alpha's data run takes the files and logs
        # to alpha's store; beta's then finds nothing new and logs no run at all (nothing lands in alpha's store either)
        data_runs = client.search_runs([experiments["looplab-data"]]) if "looplab-data" in experiments else []
        assert bool(data_runs) == (env == "alpha"), (env, len(data_runs))
