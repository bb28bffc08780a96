"""The model registry in a temporary MLflow store: gate and champion, promote and rollback, status,
loading with trusted types only, no partial registration, the `looplab` commands, and `reproduce`
end to end after a `kedro run -p data` in a project copy."""

from __future__ import annotations

import json
import operator
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from looplab import registry
from looplab.cli import cli
from looplab.core import PROJECT_ROOT_VARIABLE, configure_mlflow, load_config
from looplab.lineage import grouped_tags

from conftest import free_port


def small_project(root: Path, destination: Path) -> Path:
    "A project with this one's configuration and lock, and nothing else: its MLflow store is its own."
    destination.mkdir(parents=True)
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(root / name, destination)
    shutil.copytree(root / "conf", destination / "conf", ignore=shutil.ignore_patterns("local", "__pycache__"))
    (destination / "conf" / "local").mkdir()
    return destination


@pytest.fixture(scope="module")
def store(root, tmp_path_factory):
    "A project copy whose MLflow store (sqlite + artifacts) every test of this module registers into."
    project = small_project(root, tmp_path_factory.mktemp("registry") / "project")
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROJECT_ROOT_VARIABLE, str(project))
        patch.chdir(project)
        settings = configure_mlflow(root=project, experiment="training")
        assert settings["tracking_uri"] == f"sqlite:///{project / 'mlflow.db'}"
        yield project
    mlflow.set_tracking_uri(previous_uri)


@pytest.fixture(scope="module")
def bike(root):
    "Three weeks of the bike data's features, and the training parameters with a quick model."
    from looplab.features import build_features
    from looplab.sources import demo_rides

    parameters = load_config(root=root)
    data_params, training_params = parameters["data"], parameters["training"]
    rides = demo_rides(data_params, root=root).query("timestamp < '2011-01-22'").assign(region=data_params["entity"]["default"])
    features = build_features(rides, data_params)
    early = features["event_timestamp"] < pd.Timestamp("2011-01-15")
    model = {**training_params["model"],
             "hist_gradient_boosting": {**training_params["model"]["hist_gradient_boosting"], "max_iter": 20}}
    return {"data_params": data_params, "training_params": {**training_params, "model": model},
            "train": features[early], "evaluation": features[~early].reset_index(drop=True)}


def trained(bike, name: str, passed: bool, family: str = "hist_gradient_boosting", model=None) -> tuple:
    "What train_model and evaluate_model hand to register_model: model, evaluation, evaluation set, run info."
    from looplab.training import fit_model

    params = {**bike["training_params"], "model_name": name, "model": {**bike["training_params"]["model"], "family": family}}
    model = model or fit_model(bike["train"], bike["data_params"], params)
    evaluation_set = bike["evaluation"]
    error = float(np.mean(np.abs(model.predict(evaluation_set[params["features"]]) - evaluation_set["bikers"])))
    with mlflow.start_run(run_name=f"{name} test") as run:
        mlflow.log_metric("mae", error)
    run_info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_name": name,
                "git_commit": "abc123", "git_dirty": False, "lock_hash": "f00d",
                "data_versions": {"features": {"version": "2026-11-26T00.00.00.000Z", "content_hash": "c0ffee"}}}
    gate = {"passed": passed, "reason": "passed: test" if passed else "failed: test", "metric": "mae",
            "challenger": error, "champion": None, "margin": 0.02}
    return (model, {"metrics": {"mae": error}, "gate": gate}, evaluation_set, run_info), params


def register(bike, name: str, passed: bool, **options) -> dict:
    arguments, params = trained(bike, name, passed, **options)
    return registry.register_model(*arguments, bike["data_params"], params)


def versions_of(name: str) -> list[str]:
    return [str(version.version) for version in MlflowClient().search_model_versions(f"name = '{name}'")]


def run_cli(*arguments: str):
    return CliRunner().invoke(cli, list(arguments))


def test_the_gate_moves_the_champion(store, bike):
    first = register(bike, "gate-demo", passed=True)
    assert (first["version"], first["aliases"], first["champion_moved"]) == ("1", {"challenger": "1", "champion": "1"}, True)
    second = register(bike, "gate-demo", passed=False, family="linear")
    assert (second["version"], second["aliases"]) == ("2", {"challenger": "2", "champion": "1"})
    assert not second["champion_moved"]
    third = register(bike, "gate-demo", passed=True)
    assert third["aliases"] == {"challenger": "3", "champion": "3"} and third["previous_champion"] == "1"
    assert registry.champion_history("gate-demo") == ["1", "3"]

    tags = MlflowClient().get_model_version("gate-demo", "2").tags
    assert tags["run.id"] == second["run_id"] and tags["gate.passed"] == "false" and tags["gate.reason"] == "failed: test"
    assert (tags["code.commit"], tags["code.dirty"], tags["env.lock_hash"]) == ("abc123", "false", "f00d")
    assert (tags["data.features.version"], tags["data.features.hash"]) == ("2026-11-26T00.00.00.000Z", "c0ffee")
    # every tag under a group: run, code, env, data, model, gate (looplab.lineage)
    assert {key.split(".")[0] for key in tags} <= {"run", "code", "env", "data", "model", "gate"}, sorted(tags)
    assert set(grouped_tags(tags)) == {"run", "code", "env", "data", "gate"} and grouped_tags(tags)["code"] == {"commit": "abc123", "dirty": "false"}
    described = MlflowClient().get_model_version("gate-demo", "2").description
    assert described.startswith("challenger, not promoted: MAE ") and " vs no champion" in described, described
    assert MlflowClient().get_model_version("gate-demo", "3").description.startswith("promoted: MAE ")

    model_file = Path(MlflowClient().get_model_version_download_uri("gate-demo", "1").removeprefix("file://")) / "MLmodel"
    description = yaml.safe_load(model_file.read_text())
    flavor = description["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops" and flavor["skops_trusted_types"] == registry.SKOPS_TRUSTED_TYPES
    assert (model_file.parent / "input_example.json").is_file()
    signature = json.loads(description["signature"]["inputs"])
    assert [column["name"] for column in signature] == bike["training_params"]["features"]


def test_load_through_the_registry(store, bike):
    arguments, _ = trained(bike, "load-demo", passed=True)
    registry.register_model(*arguments, bike["data_params"], {**bike["training_params"], "model_name": "load-demo"})
    loaded = registry.load_model("load-demo", "champion")
    features = bike["evaluation"][bike["training_params"]["features"]]
    np.testing.assert_array_equal(loaded.predict(features), arguments[0].predict(features))
    np.testing.assert_array_equal(registry.load_model("load-demo", 1).predict(features), loaded.predict(features))
    with pytest.raises(registry.ModelNotFoundError, match="load-demo has no alias 'staging'; aliases: challenger → 1, champion → 1"):
        registry.load_model("load-demo", "staging")
    with pytest.raises(registry.ModelNotFoundError, match="load-demo has no version 4; versions: 1"):
        registry.load_model("load-demo", "4")
    with pytest.raises(registry.ModelNotFoundError, match="no registered model 'no-such-model'"):
        registry.load_model("no-such-model", "champion")


def test_a_model_with_an_untrusted_type_is_refused(store, bike):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    columns = ["temp", "hum"]
    negating = Pipeline([("negate", FunctionTransformer(operator.neg)), ("model", Ridge())])
    negating.fit(bike["train"][columns], bike["train"]["bikers"])
    assert registry.untrusted_types(negating) == ["_operator.neg"]

    # Registering it stops before anything is logged or registered.
    gate = {"passed": True, "reason": "passed"}
    with pytest.raises(registry.UntrustedModelError, match="not on looplab.registry.SKOPS_TRUSTED_TYPES: _operator.neg"):
        registry.register_model(negating, {"gate": gate}, bike["evaluation"], {"run_id": "unused"}, bike["data_params"],
                                {**bike["training_params"], "model_name": "untrusted-demo", "features": columns})
    assert not MlflowClient().search_registered_models(filter_string="name = 'untrusted-demo'")

    # Stored by other means, with an MLmodel file that trusts the type itself: loading still refuses it.
    with mlflow.start_run(run_name="crafted"):
        crafted = mlflow.sklearn.log_model(negating, name="model", skops_trusted_types=["_operator.neg"], pip_requirements=["scikit-learn"])
        pickled = mlflow.sklearn.log_model(bike_model(bike), name="pickled", serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    mlflow.register_model(crafted.model_uri, "crafted-demo")
    with pytest.raises(registry.UntrustedModelError, match="refusing to load crafted-demo version 1: it contains type.*_operator.neg"):
        registry.load_model("crafted-demo", "1")
    mlflow.register_model(pickled.model_uri, "pickled-demo")
    with pytest.raises(registry.UntrustedModelError, match="saved as 'cloudpickle'.*only skops"):
        registry.load_model("pickled-demo", "1")


def bike_model(bike):
    from looplab.training import fit_model

    return fit_model(bike["train"], bike["data_params"], bike["training_params"])


def test_promote_and_rollback(store, bike):
    for passed in (True, False, False):
        register(bike, "rollback-demo", passed=passed)
    assert registry.alias_version("rollback-demo", "champion") == "1"
    with pytest.raises(registry.RegistryError, match="rollback-demo has no previous champion to roll back to"):
        registry.rollback("rollback-demo")

    change = registry.promote("rollback-demo", "2")
    assert registry.describe_change(change) == "champion of rollback-demo: version 1 → 2"
    registry.promote("rollback-demo", 3)
    assert registry.champion_history("rollback-demo") == ["1", "2", "3"]
    assert registry.promote("rollback-demo", "3")["changed"] is False

    back = registry.rollback("rollback-demo")
    assert (back["previous"], back["champion"]) == ("3", "2")
    MlflowClient().delete_model_version("rollback-demo", "1")  # a deleted former champion is skipped
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback("rollback-demo")
    assert registry.alias_version("rollback-demo", "champion") == "2"

    with pytest.raises(registry.ModelNotFoundError, match="rollback-demo has no version 9; versions: 2, 3"):
        registry.promote("rollback-demo", "9")
    register(bike, "no-champion-demo", passed=False)
    with pytest.raises(registry.RegistryError, match="no-champion-demo has no champion, so there is nothing to roll back"):
        registry.rollback("no-champion-demo")


def test_status_shape(store, bike):
    register(bike, "status-demo", passed=True)
    register(bike, "status-demo", passed=False)
    state = registry.status()
    assert set(state) == {"tracking_uri", "models", "serving"} and state["serving"] == {}
    assert state["tracking_uri"] == f"sqlite:///{store / 'mlflow.db'}"
    model = next(model for model in state["models"] if model["name"] == "status-demo")
    assert model["aliases"] == {"challenger": "2", "champion": "1"}
    assert [version["version"] for version in model["versions"]] == ["2", "1"]
    for version in model["versions"]:
        assert set(version) == {"version", "run_id", "created", "status", "tags", "metrics", "evaluated_on", "description"}
        assert version["description"].startswith("promoted: " if version["version"] == "1" else "challenger, not promoted: ")
        assert version["status"] == "READY" and version["metrics"]["mae"] > 0
        assert pd.Timestamp(version["created"]).tzinfo is not None
    assert json.loads(json.dumps(state)) == state


def test_no_partial_registration(store, bike, monkeypatch):
    register(bike, "atomic-demo", passed=True)
    before = registry.status(names=["atomic-demo"])["models"][0]

    # Logging fails midway: the registry is untouched.
    def broken_log_model(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("artifact store full")

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.sklearn, "log_model", broken_log_model)
        with pytest.raises(registry.RegistryError, match="artifact store full"):
            register(bike, "atomic-demo", passed=True)
    assert registry.status(names=["atomic-demo"])["models"][0] == before

    # The version exists, then moving the champion fails: the version is deleted, aliases and history restored.
    original = MlflowClient.set_registered_model_alias

    def failing_champion(self, name, alias, version):
        if alias == "champion":
            raise mlflow.exceptions.MlflowException("registry went away")
        return original(self, name, alias, version)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", failing_champion)
        with pytest.raises(registry.RegistryError, match="registering atomic-demo failed, the registry is left as it was: .*registry went away"):
            register(bike, "atomic-demo", passed=True)
        # A first registration that fails takes its new registered model with it.
        with pytest.raises(registry.RegistryError, match="registry went away"):
            register(bike, "atomic-new-demo", passed=True)
    after = registry.status(names=["atomic-demo"])["models"][0]
    assert (after["aliases"], after["champion_history"], [v["version"] for v in after["versions"]]) == (
        before["aliases"], before["champion_history"], [v["version"] for v in before["versions"]])
    assert not MlflowClient().search_registered_models(filter_string="name = 'atomic-new-demo'")


def test_cli(store, bike):
    register(bike, "cli-demo", passed=True)
    register(bike, "cli-demo", passed=False)

    promoted = run_cli("promote", "cli-demo", "2")
    assert promoted.exit_code == 0 and promoted.output.strip() == "champion of cli-demo: version 1 → 2"
    rolled = run_cli("rollback", "cli-demo")
    assert rolled.exit_code == 0 and rolled.output.strip() == "champion of cli-demo: version 2 → 1 (rolled back)"
    by_alias = run_cli("promote", "cli-demo", "challenger")
    assert by_alias.exit_code == 0 and by_alias.output.strip() == "champion of cli-demo: version 1 → 2"
    assert run_cli("rollback", "cli-demo").exit_code == 0

    state = run_cli("status", "--json")
    assert state.exit_code == 0, state.output
    model = next(model for model in json.loads(state.output)["models"] if model["name"] == "cli-demo")
    assert model["aliases"] == {"challenger": "2", "champion": "1"}
    table = run_cli("status")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    heading = lines.index("cli-demo  (challenger → 2, champion → 1; champion history: 1)")
    assert lines[heading + 1].split() == ["VERSION", "ALIASES", "CREATED", "STATUS", "GATE", "EVALUATED", "ON", "MAE", "RMSE", "R2", "RUN"]
    assert lines[heading + 2].split()[:2] == ["2", "challenger"] and "failed" in lines[heading + 2]
    assert lines[heading + 3].split()[:2] == ["1", "champion"] and "passed" in lines[heading + 3]
    # each version's one-line description under the table: the gate's outcome, its numbers
    assert lines[heading + 4].startswith("  version 2: challenger, not promoted: MAE "), lines[heading + 4]
    assert lines[heading + 5].startswith("  version 1: promoted: MAE "), lines[heading + 5]

    for arguments, message in [
        (("promote", "nope-demo", "1"), "no registered model 'nope-demo'"),
        (("promote", "cli-demo", "7"), "cli-demo has no version 7; versions: 1, 2"),
        (("promote", "cli-demo", "staging"), "cli-demo has no alias 'staging'"),
        (("rollback", "cli-demo"), "cli-demo has no previous champion to roll back to"),
        (("reproduce", "cli-demo"), "write NAME@ALIAS, NAME@VERSION or NAME/VERSION"),
        (("reproduce", "cli-demo@nope"), "cli-demo has no alias 'nope'"),
    ]:
        result = run_cli(*arguments)
        assert result.exit_code == 1, (arguments, result.output)
        assert result.output.startswith("Error: ") and message in result.output, (arguments, result.output)
        assert "Traceback" not in result.output


def test_cli_without_a_reachable_store(store, tool, quiet_env):
    unreachable = store / "conf" / "unreachable"
    unreachable.mkdir()
    (unreachable / "mlflow.yml").write_text(f"mlflow:\n  tracking_uri: http://127.0.0.1:{free_port()}\n")
    environment = {**quiet_env, PROJECT_ROOT_VARIABLE: str(store)}
    for command in (["status"], ["rollback", "bike-demand"], ["reproduce", "bike-demand@champion"]):
        result = subprocess.run([tool("looplab"), *command, "--env", "unreachable"], cwd=store, env=environment,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result
        assert "MLflow is unreachable at http://127.0.0.1:" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- reproduce, end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_project(root, tmp_path_factory, tool, quiet_env):
    "A project copy after `kedro run -p data --env test`, with bike-demand trained, evaluated and registered."
    from test_data_pipeline import copy_project, kedro_run

    from looplab.evaluation import evaluate_model
    from looplab.training import train_model
    from looplab.versioning import load_version

    project = copy_project(root, tmp_path_factory.mktemp("reproduce") / "project")
    shutil.copy(root / "requirements.lock", project)
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROJECT_ROOT_VARIABLE, str(project))
        patch.setenv("KEDRO_ENV", "test")
        patch.chdir(project)
        parameters = load_config(env="test", root=project)
        data_params, evaluation_params = parameters["data"], parameters["evaluation"]
        # The test environment holds ten days: train on eight, judge the ninth.
        training_params = {**parameters["training"], "window": {
            **parameters["training"]["window"], "start": "2011-01-01", "end": "2011-01-09", "evaluation_days": 1,
            "min_train_rows": 100, "min_evaluation_rows": 12}}
        data_versions = json.loads((project / "data" / "08_reporting" / "data_versions.json").read_text())
        features = load_version(project / data_params["features_path"])
        model, run_info, _, evaluation_set = train_model(features, data_versions, data_params, training_params, root=project, env="test")
        evaluation = evaluate_model(model, evaluation_set, run_info, data_params, training_params, evaluation_params, root=project, env="test")
        registration = registry.register_model(model, evaluation, evaluation_set, run_info, data_params, training_params)
        if not registration["champion_moved"]:  # a gate failure is a normal outcome; the test needs a champion
            registry.promote(registration["name"], registration["version"])
        yield {"project": project, "registration": registration, "run_info": run_info}
    mlflow.set_tracking_uri(previous_uri)


def test_reproduce_matches(trained_project, tool, quiet_env):
    project = trained_project["project"]
    environment = {**quiet_env, PROJECT_ROOT_VARIABLE: str(project)}
    result = subprocess.run([tool("looplab"), "reproduce", "bike-demand@champion", "--env", "test", "--json"],
                            cwd=project, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    reproduction = json.loads(result.stdout)
    assert reproduction["matches"] and reproduction["version"] == trained_project["registration"]["version"]
    names = {row["name"] for row in reproduction["metrics"]}
    assert {"mae", "rmse", "r2", "baseline_mae"} <= names, names
    assert all(row["delta"] is not None and abs(row["delta"]) <= 1e-6 * max(abs(row["logged"]), 1) for row in reproduction["metrics"])
    assert reproduction["commit"]["recorded"] == trained_project["run_info"]["git_commit"]
    assert reproduction["lock"]["same"]
    assert "temporary feature store" in result.stderr  # progress goes to stderr
    # Reproduction wrote nothing into the project's data or feature store, and registered nothing.
    assert not list((project / "data").rglob("looplab-reproduce-*"))
    versions = registry.status(names=["bike-demand"])["models"][0]["versions"]
    assert [v["version"] for v in versions] == [trained_project["registration"]["version"]]


def test_reproduce_detects_a_tampered_metric(trained_project):
    run_id = trained_project["run_info"]["run_id"]
    client = MlflowClient()
    logged = client.get_run(run_id).data.metrics["mae"]
    client.log_metric(run_id, "mae", logged * 1.05)
    result = run_cli("reproduce", "bike-demand@champion", "--env", "test")
    assert result.exit_code == 1, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("mae "))
    assert row.split()[-1] == "NO"
    assert "NOT reproduced" in result.output and "Traceback" not in result.output
