"""Training in a throw-away demo project: time-ordered sets from the feature store, a tracked and reproducible MLflow run, clear refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro.io import Version
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset
from mlflow import MlflowClient

from looplab.core import load_config, mlflow_settings
from looplab.features import resolve_path
from looplab.tracking import TrackingError
from looplab.training import (
    TrainingDataError,
    demo_training_project,
    fit_model,
    load_training_data,
    make_estimator,
    search_model,
    train_model,
    training_windows,
)

from conftest import free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    "A demo project (conf copy, validated table, features, Feast store) with its own MLflow store; the tracking URI restored after."
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    demo = demo_training_project(tmp_path_factory.mktemp("training") / "project")
    parameters = load_config(root=demo["root"])
    demo.update(training=parameters["training"], evaluation=parameters["evaluation"])
    yield demo
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def sets(demo) -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_training_data(demo["data_params"], demo["training"], root=demo["root"])


def client_of(demo) -> MlflowClient:
    "A client of the demo project's store (tracking and registry), whatever MLflow's current URIs are."
    uri = mlflow_settings(root=demo["root"])["tracking_uri"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_count(demo) -> int:
    client = client_of(demo)
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


def with_window(training: dict, **changes) -> dict:
    return {**training, "window": {**training["window"], **changes}}


def test_sets_follow_the_window_in_time_order(demo, sets):
    train_set, evaluation_set = sets
    windows = training_windows(demo["training"])
    validated = demo["features"]
    times = validated["event_timestamp"]
    assert len(train_set) == ((times >= windows["train_start"]) & (times < windows["train_end"])).sum()
    assert len(evaluation_set) == ((times >= windows["train_end"]) & (times < windows["evaluation_end"])).sum()
    assert train_set["event_timestamp"].max() < windows["train_end"] <= evaluation_set["event_timestamp"].min()
    assert train_set["event_timestamp"].is_monotonic_increasing and evaluation_set["event_timestamp"].is_monotonic_increasing
    assert train_set["bikers"].notna().all() and train_set["bikers"].dtype == np.dtype("int64")
    # the label joined point-in-time is the stored label of that hour
    expected = validated.set_index("event_timestamp")["bikers"]
    np.testing.assert_array_equal(evaluation_set["bikers"].to_numpy(), expected.loc[evaluation_set["event_timestamp"]].to_numpy())


def test_training_twice_gives_identical_runs(demo):
    from looplab.evaluation import evaluate

    results = []
    for _ in range(2):
        model, info, train_set, evaluation_set = train_model(
            demo["features"], demo["data_versions"], demo["data_params"], demo["training"], root=demo["root"]
        )
        evaluation = evaluate(model, evaluation_set, demo["data_params"], demo["training"], demo["evaluation"])
        params = client_of(demo).get_run(info["run_id"]).data.params
        results.append((info, evaluation, params, model.predict(evaluation_set)))
    (first, first_eval, first_params, first_pred), (second, second_eval, second_params, second_pred) = results
    assert first["run_id"] != second["run_id"]
    assert first_eval["metrics"] == second_eval["metrics"]
    assert first_params == second_params
    np.testing.assert_array_equal(first_pred, second_pred)


def test_run_records_params_code_environment_and_data(demo):
    model, info, train_set, _ = train_model(demo["features"], demo["data_versions"], demo["data_params"], demo["training"], root=demo["root"])
    run = client_of(demo).get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert client_of(demo).get_experiment(run.info.experiment_id).name == "looplab-training"
    params, tags = run.data.params, run.data.tags
    assert params["training.model.family"] == "hist_gradient_boosting"
    assert json.loads(params["training.features"]) == demo["training"]["features"]
    assert (params["seed"], params["window.train_start"], params["window.evaluation_end"]) == ("42", "2011-01-01 00:00:00", "2011-03-15 00:00:00")
    assert params["train_rows"] == str(len(train_set))
    # the demo project is a copy outside git: the commit is "unknown"; the lock is the project's
    assert tags["git_commit"] == info["git_commit"] == "unknown"
    assert tags["lock_hash"] == info["lock_hash"] and len(info["lock_hash"]) == 64
    records = demo["data_versions"]["datasets"]
    assert tags["data.features.version"] == records["features"]["version"]
    assert {item.dataset.name: item.dataset.digest for item in run.inputs.dataset_inputs} == {
        name: record["content_hash"] for name, record in records.items()
    }
    assert info["data_versions"]["features"] == {"version": records["features"]["version"], "content_hash": records["features"]["content_hash"]}
    assert set(info) >= {"run_id", "experiment_id", "model_name", "git_commit", "lock_hash", "data_versions"}
    assert info["model_name"] == "bike-demand"


def test_git_commit_is_recorded_inside_a_repository(demo, repository):
    from looplab.tracking import git_commit

    inside = git_commit(repository)
    assert len(inside["commit"]) == 40 and isinstance(inside["dirty"], bool)
    assert git_commit(demo["root"]) == {"commit": "unknown", "dirty": None}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start": "2012-01-01", "end": "2012-02-01"}, "the training window [2012-01-01 00:00, 2012-02-01 00:00) has 0 labelled rows; at least 200 needed"),
        ({"start": "2011-02-25"}, "labelled rows; at least 200 needed (training.window.min_train_rows)"),
        ({"evaluation_days": 0.25}, "the evaluation window [2011-03-01 00:00, 2011-03-01 06:00) has 6 labelled rows; at least 24 needed"),
        ({"end": "2010-12-01"}, "start 2011-01-01 00:00:00 must be before end 2010-12-01"),
    ],
)
def test_too_small_windows_are_refused_before_any_run(demo, changes, message):
    before = run_count(demo)
    with pytest.raises(TrainingDataError) as error:
        train_model(demo["features"], demo["data_versions"], demo["data_params"], with_window(demo["training"], **changes), root=demo["root"])
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert run_count(demo) == before, "bad data must not leave a run behind"
    assert client_of(demo).search_registered_models() == []


def test_a_window_without_labels_is_refused(demo, tmp_path):
    "Events the feature store has no labels for (it was materialised before these rows came): a clear error."
    params = demo["data_params"]
    validated = ParquetDataset(filepath=str(resolve_path(params["validated_path"], demo["root"])), version=Version(None, None)).load()
    later = validated[validated["timestamp"] >= "2011-03-08"].assign(timestamp=lambda f: f["timestamp"] + pd.Timedelta(days=7))
    newer = pd.concat([validated, later], ignore_index=True)
    elsewhere = {**params, "validated_path": str(tmp_path / "validated_rides.parquet")}
    ParquetDataset(filepath=elsewhere["validated_path"], version=Version(None, "2026-01-01T00.00.00.000Z")).save(newer)
    no_labels = with_window(demo["training"], end="2011-03-15", evaluation_days=7)
    with pytest.raises(TrainingDataError, match=r"no labels \(bikers\) for the \d+ events of the evaluation window \[2011-03-15 00:00, 2011-03-22 00:00\)"):
        load_training_data(elsewhere, no_labels, root=demo["root"])


def test_missing_features_are_named(demo):
    training = {**demo["training"], "features": [*demo["training"]["features"], "sunshine", "rain_mm"]}
    with pytest.raises(TrainingDataError, match="the feature store has no feature.s. sunshine, rain_mm"):
        train_model(demo["features"], demo["data_versions"], demo["data_params"], training, root=demo["root"])
    with pytest.raises(TrainingDataError, match="lists the label 'bikers'"):
        load_training_data(demo["data_params"], {**demo["training"], "features": ["hr", "bikers"]}, root=demo["root"])


def test_a_set_without_a_model_column_is_refused(demo, sets):
    train_set, _ = sets
    with pytest.raises(TrainingDataError, match=r"lacks the column\(s\) temp, hum"):
        fit_model(train_set.drop(columns=["temp", "hum"]), demo["data_params"], demo["training"])
    with pytest.raises(TrainingDataError, match="empty"):
        fit_model(train_set.iloc[:0], demo["data_params"], demo["training"])


def test_unreachable_mlflow_fails_fast_with_one_line(demo, monkeypatch):
    port = free_port()
    local = demo["root"] / "conf" / "local" / "mlflow.yml"
    local.write_text(f"mlflow:\n  tracking_uri: http://127.0.0.1:{port}\n")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        with pytest.raises(TrackingError) as error:
            train_model(demo["features"], demo["data_versions"], demo["data_params"], demo["training"], root=demo["root"])
    finally:
        local.unlink()
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before, "a failed connection leaves MLflow's URIs as they were"
    message = str(error.value)
    assert message.startswith(f"MLflow tracking store http://127.0.0.1:{port} cannot be reached: ")
    assert "\n" not in message and len(message) < 500
    assert client_of(demo).search_registered_models() == []


def test_search_logs_each_candidate_as_a_nested_run(demo, sets):
    training = {**demo["training"], "search": {"enabled": True, "folds": 2, "metric": "mae",
                                               "grid": {"learning_rate": [0.05, 0.2], "max_iter": [40]}}}
    model, info, _, _ = train_model(demo["features"], demo["data_versions"], demo["data_params"], training, root=demo["root"])
    client = client_of(demo)
    children = client.search_runs([info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['run_id']}'")
    assert len(children) == 2
    assert sorted(child.data.params["model.learning_rate"] for child in children) == ["0.05", "0.2"]
    assert all("cv_mae" in child.data.metrics for child in children)
    best = min(children, key=lambda child: child.data.metrics["cv_mae"])
    parent = client.get_run(info["run_id"]).data.params
    assert parent["search.best.learning_rate"] == best.data.params["model.learning_rate"]
    assert model[-1].learning_rate == float(best.data.params["model.learning_rate"]) and model[-1].max_iter == 40
    assert info["model_params"]["learning_rate"] == model[-1].learning_rate
    # without an active run the search logs nothing and returns every candidate's scores
    before = run_count(demo)
    _, candidates = search_model(sets[0], demo["data_params"], training)
    assert run_count(demo) == before and [c["run_id"] for c in candidates] == [None, None]
    assert [len(c["fold_scores"]) for c in candidates] == [2, 2]


def test_linear_family_imputes_missing_lags(demo, sets):
    train_set, evaluation_set = sets
    assert train_set["bikers_lag_168h"].isna().any(), "the first week has no lag a week back"
    linear = {**demo["training"], "model": {"family": "linear", "linear": {"alpha": 1.0}}}
    model = fit_model(train_set, demo["data_params"], linear)
    assert np.isfinite(model.predict(evaluation_set)).all()


def test_classification_uses_the_classifiers(demo, sets):
    train_set, evaluation_set = sets
    threshold = train_set["bikers"].median()
    busy = {**demo["data_params"], "target": "busy"}
    for family, name in (("hist_gradient_boosting", "HistGradientBoostingClassifier"), ("linear", "LogisticRegression")):
        training = {**demo["training"], "task": "classification", "model": {"family": family, family: {}}}
        assert type(make_estimator(training)[-1]).__name__ == name
        model = fit_model(train_set.assign(busy=train_set["bikers"] > threshold), busy, training)
        probabilities = model.predict_proba(evaluation_set)[:, 1]
        accuracy = ((probabilities >= 0.5) == (evaluation_set["bikers"] > threshold)).mean()
        assert accuracy > 0.75, (family, accuracy)
    with pytest.raises(ValueError, match="training.task must be one of regression, classification"):
        make_estimator({**demo["training"], "task": "ranking"})


def test_the_training_pipeline_runs_as_wired(demo, monkeypatch, tmp_path):
    "The project's training pipeline (train → evaluate → register, one node) on a catalog stored as the project stores it."
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from looplab.core import Settings
    from looplab.pipelines.training import create_pipeline

    monkeypatch.delenv("KEDRO_ENV", raising=False)
    stored = tmp_path / "outputs"
    catalog = DataCatalog({
        "features": MemoryDataset(demo["features"]), "data_versions": MemoryDataset(demo["data_versions"]),
        "params:data": MemoryDataset(demo["data_params"]), "params:training": MemoryDataset(demo["training"]),
        "params:evaluation": MemoryDataset(demo["evaluation"]), "model": MemoryDataset(copy_mode="assign"),
        "settings": MemoryDataset(Settings(demo["root"], "local")),  # what the project's Kedro context puts in the catalog
        # as the catalog stores them: the run info, evaluation and registration as JSON, the sets as parquet
        "training_run": JSONDataset(filepath=str(stored / "training_run.json")),
        "evaluation": JSONDataset(filepath=str(stored / "evaluation.json")),
        "registration": JSONDataset(filepath=str(stored / "registration.json")),
        "train_set": ParquetDataset(filepath=str(stored / "train_set.parquet")),
        "evaluation_set": ParquetDataset(filepath=str(stored / "evaluation_set.parquet")),
    })
    SequentialRunner().run(create_pipeline(), catalog)
    evaluation = json.loads((stored / "evaluation.json").read_text())
    run_info = json.loads((stored / "training_run.json").read_text())
    registration = json.loads((stored / "registration.json").read_text())
    assert evaluation["gate"]["passed"] and evaluation["beats_baseline"]
    client = client_of(demo)
    run = client.get_run(run_info["run_id"])
    assert run.data.metrics["mae"] == evaluation["metrics"]["mae"]
    assert run.data.tags["gate_passed"] == "true"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(demo["root"])
    version = client.get_model_version(demo["training"]["model_name"], registration["version"])
    assert version.run_id == run_info["run_id"] and registration["champion_moved"]
    assert len(pd.read_parquet(stored / "evaluation_set.parquet")) == evaluation["window"]["rows"]
