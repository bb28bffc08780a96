"""Evaluation in a throw-away demo project: metrics against the seasonal-naive baseline, slices, behavioural checks, the gate against a registered champion, and what the run records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.dummy import DummyRegressor

from looplab.core import load_config, mlflow_settings
from looplab.evaluation import (
    baseline_predictions,
    behavioural_checks,
    evaluate,
    evaluate_model,
    evaluation_report_html,
    gate,
    metrics,
    model_scores,
    plot_feature_importance,
    plot_predicted_vs_actual,
    plot_residuals_over_time,
    slice_metrics,
)
from looplab.tracking import TrackingError
from looplab.training import demo_training_project, fit_model, train_model

from conftest import free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    "A demo project with one tracked training run; MLflow's URIs restored after the module."
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    demo = demo_training_project(tmp_path_factory.mktemp("evaluation") / "project")
    parameters = load_config(root=demo["root"])
    demo.update(training=parameters["training"], evaluation=parameters["evaluation"])
    model, run_info, train_set, evaluation_set = train_model(
        demo["features"], demo["data_versions"], demo["data_params"], demo["training"], root=demo["root"]
    )
    demo.update(model=model, run_info=run_info, train_set=train_set, evaluation_set=evaluation_set)
    yield demo
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def evaluation(demo) -> dict:
    return evaluate(demo["model"], demo["evaluation_set"], demo["data_params"], demo["training"], demo["evaluation"])


def client_of(demo) -> MlflowClient:
    uri = mlflow_settings(root=demo["root"])["tracking_uri"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_champion(demo, model, client: MlflowClient, trained: tuple[str, str] | None = None) -> str:
    "Register `model` as a new version of the demo's model and point `champion` at it; `trained`: the window its run logs."
    from looplab.registry import SKOPS_TRUSTED_TYPES

    name = demo["training"]["model_name"]
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)
    mlflow.set_experiment("looplab-training")
    features = demo["evaluation_set"][demo["training"]["features"]]
    with mlflow.start_run(run_name="champion for a test"):
        if trained:  # as train_model logs it
            mlflow.log_params({"window.train_start": f"{trained[0]} 00:00:00", "window.train_end": f"{trained[1]} 00:00:00"})
        info = mlflow.sklearn.log_model(
            model, name="model", serialization_format="skops", skops_trusted_types=SKOPS_TRUSTED_TYPES,
            input_example=features.head(2), registered_model_name=name,
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "champion", version)
    return version


def fresh_run(demo, client: MlflowClient) -> dict:
    "The demo's run info with a new, empty run to log an evaluation to (cheaper than training again)."
    run = client.create_run(demo["run_info"]["experiment_id"], run_name="evaluation test")
    client.set_terminated(run.info.run_id)
    return {**demo["run_info"], "run_id": run.info.run_id}


def test_metrics_have_the_known_values():
    assert metrics([0, 10], [1, 7], "regression") == {"mae": 2.0, "rmse": math.sqrt(5), "r2": 1 - 10 / 50}
    scores = metrics([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9], "classification")
    assert scores["accuracy"] == 0.75 and scores["roc_auc"] == 1.0 and scores["f1"] == pytest.approx(0.8)
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.9])))
    several = metrics([0, 2, 1], [[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]], "classification", ["accuracy", "log_loss"])
    assert several["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown classification metric.s. mae"):
        metrics([1], [0.5], "classification", ["mae"])


def test_the_model_beats_the_seasonal_naive_baseline_on_the_demo_window(demo, evaluation):
    assert evaluation["n_rows"] == len(demo["evaluation_set"]) > 300
    assert evaluation["beats_baseline"]
    model, naive = evaluation["baseline"]["model_metrics"], evaluation["baseline_metrics"]
    assert model["mae"] < 0.8 * naive["mae"] and model["rmse"] < naive["rmse"] and model["r2"] > naive["r2"]
    json.dumps(evaluation, allow_nan=False)


def test_rows_without_a_baseline_are_left_out_of_the_comparison_only(demo, evaluation):
    evaluation_set = demo["evaluation_set"]
    baseline = baseline_predictions(evaluation_set, demo["evaluation"])
    covered = ~np.isnan(baseline)
    assert 0 < (~covered).sum() == evaluation["baseline"]["rows_without_baseline"]
    assert evaluation["baseline"]["rows"] + evaluation["baseline"]["rows_without_baseline"] == evaluation["n_rows"]
    predicted = model_scores(demo["model"], evaluation_set, "regression")
    actual = evaluation_set["bikers"].to_numpy()
    assert evaluation["metrics"] == pytest.approx(metrics(actual, predicted, "regression"))
    assert evaluation["baseline"]["model_metrics"] == pytest.approx(metrics(actual[covered], predicted[covered], "regression"))
    assert evaluation["baseline_metrics"] == pytest.approx(metrics(actual[covered], baseline[covered], "regression"))


def test_slices_cover_every_row_once_per_slice(demo, evaluation):
    table = pd.DataFrame(evaluation["slices"])
    assert table.groupby("slice")["rows"].sum().to_dict() == dict.fromkeys(["hour_band", "weather", "workingday"], evaluation["n_rows"])
    night = demo["evaluation_set"]["hr"] < 6
    predicted = model_scores(demo["model"], demo["evaluation_set"], "regression")
    row = table[(table["slice"] == "hour_band") & (table["value"] == "night")].iloc[0]
    assert row["rows"] == night.sum()
    assert row["mae"] == pytest.approx(np.abs(demo["evaluation_set"]["bikers"][night] - predicted[night]).mean())
    with pytest.raises(ValueError, match="3 predictions for"):
        slice_metrics(demo["evaluation_set"], [1, 2, 3], demo["evaluation"], "regression", "bikers")


class ReadsLineage(RegressorMixin, BaseEstimator):
    "A broken model: its predictions follow the source column."

    def fit(self, X, y):
        return self

    def predict(self, X):
        return X["_source"].astype(str).str.len().to_numpy(dtype=float)


def test_behavioural_checks_pass_for_the_model_and_catch_broken_ones(demo, evaluation):
    assert evaluation["behavioural_passed"] and len(evaluation["behavioural"]) == 6
    broken = {c["name"]: c for c in behavioural_checks(ReadsLineage(), demo["evaluation_set"], demo["training"], demo["evaluation"])}
    assert not broken["invariant to _source"]["passed"] and broken["invariant to _batch_id"]["passed"]
    # a column the set lacks is added for the check
    lacking = demo["evaluation_set"].drop(columns=["_batch_id"])
    added = behavioural_checks(demo["model"], lacking, demo["training"], demo["evaluation"])
    assert "_batch_id added" in added[1]["detail"] and added[1]["passed"]
    # a linear model predicts negative counts at night; a directional check on a column the set lacks fails
    linear = {**demo["training"], "model": {"family": "linear", "linear": {"alpha": 1.0}}}
    settings = {**demo["evaluation"], "behavioural": {**demo["evaluation"]["behavioural"], "directional": {"sunshine": "increasing"}}}
    checks = {c["name"]: c for c in behavioural_checks(
        fit_model(demo["train_set"], demo["data_params"], linear), demo["evaluation_set"], linear, settings)}
    assert not checks["non-negative predictions"]["passed"] and "negative prediction(s)" in checks["non-negative predictions"]["detail"]
    assert not checks["sunshine increasing"]["passed"] and "not a column" in checks["sunshine increasing"]["detail"]


def test_gate_outcomes(demo, evaluation):
    parameters = demo["evaluation"]
    alone = gate(evaluation, None, parameters)
    assert alone["passed"] and alone["champion"] is None and alone["metric"] == "mae" and alone["margin"] == 0.02
    # a model no better than predicting the mean fails against the baseline: a normal outcome
    mean_model = fit_model(demo["train_set"], demo["data_params"], demo["training"])
    mean_model.steps[-1] = ("model", DummyRegressor().fit(demo["train_set"][["hr"]], demo["train_set"]["bikers"]))
    weak = evaluate(mean_model, demo["evaluation_set"], demo["data_params"], demo["training"], demo["evaluation"])
    failed = gate(weak, None, parameters)
    assert not failed["passed"] and failed["reason"].startswith("failed: does not beat the seasonal-naive baseline (mae ")
    # against a champion: the margin is relative
    champion = {**evaluation, "metrics": {**evaluation["metrics"], "mae": evaluation["metrics"]["mae"] * 1.01}}
    small = gate(evaluation, champion, parameters)
    assert not small["passed"] and small["improvement"] == pytest.approx(0.01 / 1.01)
    assert gate(evaluation, champion, {**parameters, "gate_margin": 0.005})["passed"]
    assert set(small) >= {"passed", "reason", "metric", "challenger", "champion", "margin"}
    higher_better = gate(evaluation, {**evaluation, "metrics": {**evaluation["metrics"], "r2": 0.5}}, {**parameters, "gate_metric": "r2"})
    assert higher_better["passed"] and higher_better["improvement"] > 0.02


def test_report_and_plots(demo, evaluation):
    predicted = model_scores(demo["model"], demo["evaluation_set"], "regression")
    figures = {
        "predicted_vs_actual": plot_predicted_vs_actual(demo["evaluation_set"], predicted, demo["data_params"]),
        "residuals_over_time": plot_residuals_over_time(demo["evaluation_set"], predicted, demo["data_params"]),
        "feature_importance": plot_feature_importance(demo["model"], demo["evaluation_set"], demo["data_params"], demo["training"], demo["evaluation"]),
    }
    assert all(type(figure).__name__ == "Figure" and figure.axes for figure in figures.values())
    page = evaluation_report_html({**evaluation, "gate": gate(evaluation, None, demo["evaluation"])}, figures)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("data:image/png;base64,") == 3 and "light rain/snow" in page
    assert "Baseline: seasonal-naive (<code>bikers_lag_168h</code>)" in page


def test_evaluate_model_without_a_champion_logs_everything_to_the_run(demo, tmp_path):
    client = client_of(demo)
    result = evaluate_model(demo["model"], demo["evaluation_set"], demo["run_info"], demo["data_params"],
                            demo["training"], demo["evaluation"], root=demo["root"])
    assert result["gate"]["passed"] and result["champion"] is None
    run = client.get_run(demo["run_info"]["run_id"])
    assert run.info.status == "FINISHED"
    assert {"mae", "rmse", "r2", "baseline_mae", "baseline_rmse", "baseline_r2"} <= set(run.data.metrics)
    assert run.data.params["evaluation.gate_metric"] == "mae" and run.data.tags["gate_passed"] == "true"
    artifacts = {item.path for item in client.list_artifacts(demo["run_info"]["run_id"], "evaluation")}
    assert {"evaluation/report.html", "evaluation/slices.csv", "evaluation/behavioural.json", "evaluation/evaluation.json",
            "evaluation/predicted_vs_actual.png", "evaluation/residuals_over_time.png", "evaluation/feature_importance.png"} <= artifacts
    assert client.search_registered_models() == [], "evaluation registers nothing"
    downloaded = client.download_artifacts(demo["run_info"]["run_id"], "evaluation/evaluation.json", str(tmp_path))
    logged = json.loads(Path(downloaded).read_text())
    assert logged["gate"] == result["gate"] and logged["metrics"] == result["metrics"]


def test_the_champion_is_evaluated_on_the_same_set(demo):
    "A registered champion, loaded through looplab.registry: an identical challenger does not beat it; a weaker champion is beaten."
    client = client_of(demo)
    training, train_set = demo["training"], demo["train_set"]
    evaluation_set = demo["evaluation_set"]
    same_version = register_champion(demo, demo["model"], client)
    run_info = fresh_run(demo, client)
    result = evaluate_model(demo["model"], evaluation_set, run_info, demo["data_params"], training, demo["evaluation"], root=demo["root"])
    assert result["champion"]["version"] == same_version
    assert result["champion"]["metrics"] == result["metrics"]
    assert not result["gate"]["passed"] and result["gate"]["improvement"] == 0.0
    assert "does not beat the champion by the margin" in result["gate"]["reason"]
    assert client.get_run(run_info["run_id"]).data.tags["champion_version"] == same_version

    january = {**training, "window": {**training["window"], "end": "2011-02-01"}}
    weaker = fit_model(train_set[train_set["event_timestamp"] < "2011-02-01"], demo["data_params"], january)
    weaker_version = register_champion(demo, weaker, client)
    result = evaluate_model(demo["model"], evaluation_set, fresh_run(demo, client), demo["data_params"], training, demo["evaluation"], root=demo["root"])
    assert result["champion"]["version"] == weaker_version
    assert result["gate"]["passed"] and result["gate"]["improvement"] >= 0.02, result["gate"]
    assert result["gate"]["champion"] == pytest.approx(result["champion"]["metrics"]["mae"])


def test_a_champion_trained_on_part_of_the_window_is_compared_on_the_days_it_never_saw(demo, caplog):
    "The demo evaluates on March 1-14; a champion whose run trained until March 8 is scored on March 8-14 only, with a warning."
    client = client_of(demo)
    version = register_champion(demo, demo["model"], client, trained=("2011-01-01", "2011-03-08"))
    with caplog.at_level("WARNING", logger="looplab.evaluation"):
        result = evaluate_model(demo["model"], demo["evaluation_set"], fresh_run(demo, client), demo["data_params"], demo["training"],
                                demo["evaluation"], root=demo["root"])
    unseen = demo["evaluation_set"][demo["evaluation_set"]["event_timestamp"] >= "2011-03-08"]
    note = (f"the champion (version {version}) was trained on 2011-01-01..2011-03-07, which covers 2011-03-01..2011-03-07 of the "
            f"evaluation window 2011-03-01..2011-03-14: both compared on 2011-03-08..2011-03-14 only ({len(unseen)} rows it never trained on)")
    assert f"evaluation of bike-demand: {note}" in caplog.messages
    assert result["gate"]["reason"].endswith(f"; {note}"), result["gate"]["reason"]
    assert result["gate"]["compared_on"] == "2011-03-08..2011-03-14"
    assert result["champion"]["trained_on"] == "2011-01-01..2011-03-07" and result["champion"]["note"] == note
    on_unseen = evaluate(demo["model"], unseen, demo["data_params"], demo["training"], demo["evaluation"])["metrics"]["mae"]
    assert result["gate"]["champion"] == pytest.approx(on_unseen) and result["gate"]["challenger"] == pytest.approx(on_unseen)
    assert on_unseen != pytest.approx(result["metrics"]["mae"]), "the whole window's MAE is not the one compared"
    assert result["metrics"]["mae"] == pytest.approx(evaluate(demo["model"], demo["evaluation_set"], demo["data_params"], demo["training"],
                                                              demo["evaluation"])["metrics"]["mae"]), "the run still logs the whole window"


def test_a_champion_trained_on_the_whole_window_cannot_be_compared_and_stays(demo, caplog):
    client = client_of(demo)
    version = register_champion(demo, demo["model"], client, trained=("2011-01-01", "2011-04-01"))
    with caplog.at_level("WARNING", logger="looplab.evaluation"):
        result = evaluate_model(demo["model"], demo["evaluation_set"], fresh_run(demo, client), demo["data_params"], demo["training"],
                                demo["evaluation"], root=demo["root"])
    note = (f"the champion (version {version}) was trained on 2011-01-01..2011-03-31, which covers 2011-03-01..2011-03-14 of the "
            "evaluation window 2011-03-01..2011-03-14: there is no day of the window it never trained on, so the two cannot be compared fairly")
    assert f"evaluation of bike-demand: {note}" in caplog.messages
    assert not result["gate"]["passed"] and result["gate"]["reason"] == f"failed: {note}"
    assert result["gate"]["champion"] is None and result["gate"]["compared_on"] is None
    assert str(client.get_registered_model("bike-demand").aliases["champion"]) == version


def test_a_champion_that_cannot_score_this_set_fails_the_gate(demo):
    client = client_of(demo)
    extra = {**demo["training"], "features": [*demo["training"]["features"], "casual"]}
    with_casual = demo["train_set"].assign(casual=demo["train_set"]["bikers"] // 3)
    register_champion(demo, fit_model(with_casual, demo["data_params"], extra), client)
    result = evaluate_model(demo["model"], demo["evaluation_set"], fresh_run(demo, client), demo["data_params"], demo["training"],
                            demo["evaluation"], root=demo["root"])
    assert not result["gate"]["passed"]
    assert result["gate"]["reason"].startswith("failed: the champion (version ") and "cannot be evaluated on this evaluation set" in result["gate"]["reason"]
    assert "casual" in result["gate"]["reason"]


def test_a_champion_that_cannot_be_loaded_fails_the_gate(demo, monkeypatch):
    import looplab.evaluation
    import looplab.registry

    client = client_of(demo)
    version = register_champion(demo, demo["model"], client)

    def refuse(name, alias_or_version, client=None):
        raise looplab.registry.RegistryError(f"refusing to load {name} version {alias_or_version}: untrusted type x.Y")

    monkeypatch.setattr(looplab.evaluation, "load_model", refuse)  # the registry's loader, as evaluation calls it
    result = evaluate_model(demo["model"], demo["evaluation_set"], fresh_run(demo, client), demo["data_params"], demo["training"],
                            demo["evaluation"], root=demo["root"])
    assert not result["gate"]["passed"]
    assert result["gate"]["reason"] == (f"failed: the champion (version {version}) cannot be loaded: "
                                        f"RegistryError: refusing to load bike-demand version {version}: untrusted type x.Y")


def test_unreachable_mlflow_is_a_clear_error(demo, monkeypatch):
    port = free_port()
    local = demo["root"] / "conf" / "local" / "mlflow.yml"
    local.write_text(f"mlflow:\n  tracking_uri: http://127.0.0.1:{port}\n")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        with pytest.raises(TrackingError, match=f"^MLflow tracking store http://127.0.0.1:{port} cannot be reached: [^\n]+$"):
            evaluate_model(demo["model"], demo["evaluation_set"], demo["run_info"], demo["data_params"], demo["training"],
                           demo["evaluation"], root=demo["root"])
    finally:
        local.unlink()


def test_classification_is_evaluated_with_probabilities(demo):
    threshold = demo["train_set"]["bikers"].median()

    def busy(frame):
        lag = frame["bikers_lag_168h"]
        return frame.assign(busy=(frame["bikers"] > threshold).astype("int64"), busy_lag_168h=(lag > threshold).astype(float).where(lag.notna()))

    data = {**demo["data_params"], "target": "busy"}
    training = {**demo["training"], "task": "classification", "model": {"family": "hist_gradient_boosting",
                                                                        "hist_gradient_boosting": {"max_iter": 100}}}
    parameters = {**demo["evaluation"], "metrics": ["accuracy", "f1", "roc_auc", "log_loss"], "gate_metric": "log_loss",
                  "baseline_feature": "busy_lag_168h"}
    model = fit_model(busy(demo["train_set"]), data, training)
    result = evaluate(model, busy(demo["evaluation_set"]), data, training, parameters)
    assert set(result["metrics"]) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert result["beats_baseline"] and result["metrics"]["roc_auc"] > 0.9
    assert {c["name"] for c in result["behavioural"]} >= {"finite predictions", "probabilities in [0, 1]"}
    assert all(c["passed"] for c in result["behavioural"]), result["behavioural"]
    assert gate(result, None, parameters)["passed"]
    json.dumps(result, allow_nan=False)
