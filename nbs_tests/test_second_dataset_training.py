"""The second dataset through the `training` pipeline, changing only conf/ and data/: a classifier of air-quality alerts.

The air-quality project of `test_second_dataset.py` (same sources, same data conf) gets its own
`conf/base/parameters_training.yml`: task classification, model `air-alert`, a window inside its
three weeks, its features and categorical column, classification metrics, a gate on F1, the alert
of the same hour a day earlier as the seasonal-naive baseline, slices by sensor, wind direction and
humidity, and behavioural checks from what is known of fine dust (more humid: more dust; more wind:
less). `kedro run -p data` then `kedro run -p training` must register a version in MLflow with
everything logged, and `looplab reproduce` must rebuild it with the same metrics.
"""

from __future__ import annotations

import json
import subprocess

import mlflow
import pandas as pd
import pytest
from test_second_dataset import readings, use_second_dataset, write_sources

from conftest import copy_project, kedro_run, latest_json

MODEL = "air-alert"
CLASSIFICATION = {"accuracy", "f1", "roc_auc", "log_loss"}

# The whole training configuration of the second dataset: nothing here names the bike data.
TRAINING = """
training:
  task: classification
  model_name: air-alert
  seed: 7
  threads: 1
  window:                       # two weeks to learn from, the last week of the three to judge on
    start: "2024-05-06"
    end: "2024-05-20"
    evaluation_days: 7
    min_train_rows: 500
    min_evaluation_rows: 100
  features: [temperature, humidity, wind_speed, wind_dir, alert_lag_1h, alert_lag_24h, alert_mean_same_hour_3d]
  categorical: [wind_dir]
  model:
    family: hist_gradient_boosting
    hist_gradient_boosting:     # HistGradientBoostingClassifier: its default loss (log loss)
      max_iter: 200
      learning_rate: 0.05
      max_leaf_nodes: 15
    linear:
      alpha: 1.0
  search:
    enabled: false
    folds: 3
    metric: log_loss
    grid:
      learning_rate: [0.05, 0.1]

evaluation:
  metrics: [accuracy, f1, roc_auc, log_loss]
  gate_metric: f1               # alerts are the rarer class: F1, not accuracy
  gate_margin: 0.02
  gate_requires_behavioural: true
  baseline_feature: alert_lag_24h   # seasonal naive: the alert of the same hour a day earlier
  slices:
    sensor: {column: sensor}
    wind: {column: wind_dir}
    humidity_band:
      column: humidity
      bins: [0, 55, 75, 101]
      labels: [dry, moderate, humid]
  behavioural:
    invariant_to: [_source, _batch_id]
    directional:
      humidity: increasing
      wind_speed: decreasing
    directional_step: 1.0
    non_negative: false
  importance_repeats: 2
"""


def looplab(tool, env, project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("looplab"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory, tool, quiet_env):
    "The air-quality project (conf/ and data/ changed only) after `kedro run -p data` and `kedro run -p training`."
    project = copy_project(root, tmp_path_factory.mktemp("second-dataset-training") / "project")
    (project / "data" / "01_raw" / "Bikeshare.csv").unlink()
    use_second_dataset(project)
    (project / "conf" / "base" / "parameters_training.yml").write_text(TRAINING.lstrip())
    (project / "conf" / "base" / "parameters_evaluation.yml").unlink()  # TRAINING holds the `evaluation` block too
    write_sources(project, readings())
    kedro_run(tool, quiet_env, project, "-p", "data")
    kedro_run(tool, quiet_env, project, "-p", "training")
    result = looplab(tool, quiet_env, project, "status", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    client = mlflow.MlflowClient(tracking_uri=facts["tracking_uri"], registry_uri=facts["tracking_uri"])
    model = next(m for m in facts["models"] if m["name"] == MODEL)
    version = next(v for v in model["versions"] if v["version"] == "1")
    return {"project": project, "facts": facts, "client": client, "model": model, "version": version,
            "run": client.get_run(version["run_id"]),
            "registration": json.loads((project / "data" / "08_reporting" / "registration.json").read_text()),
            "evaluation": latest_json(project / "data" / "08_reporting" / "evaluation.json")}


def test_a_classifier_version_is_registered(trained):
    facts, model, run = trained["facts"], trained["model"], trained["run"]
    assert facts["tracking_uri"] == f"sqlite:///{trained['project']}/mlflow.db"
    assert [m["name"] for m in facts["models"]] == [MODEL], "the bike model is nowhere in this project"
    assert trained["registration"]["name"] == MODEL and trained["registration"]["version"] == "1"
    assert model["aliases"]["challenger"] == "1"
    assert run.data.params["task"] == "classification" and run.data.params["data.target"] == "alert"
    assert run.data.params["training.model.family"] == "hist_gradient_boosting"
    assert run.data.params["evaluation.baseline_feature"] == "alert_lag_24h"
    assert run.data.params["window.train_end"] == "2024-05-20 00:00:00"
    assert run.inputs.dataset_inputs, "the data versions the model saw are logged as inputs"


def test_classification_and_baseline_metrics_are_logged(trained):
    metrics = trained["run"].data.metrics
    assert CLASSIFICATION <= set(metrics), sorted(metrics)
    assert {f"baseline_{name}" for name in CLASSIFICATION} <= set(metrics), sorted(metrics)
    assert not {"mae", "rmse", "r2"} & set(metrics), "no regression metric on a classifier"
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["f1"] <= 1 and 0 <= metrics["roc_auc"] <= 1
    assert trained["version"]["metrics"] == metrics, "status --json shows the run's metrics"


def test_the_gate_decision_is_tagged(trained):
    model, tags, run_tags = trained["model"], trained["version"]["tags"], trained["run"].data.tags
    assert tags["gate.passed"] in ("true", "false") and tags["gate.metric"] == "f1"
    assert run_tags["gate_passed"] == tags["gate.passed"] and run_tags["gate_reason"]
    assert run_tags["champion_version"] == "none", "the first version has no champion to face"
    # The first version is champion exactly when its gate passed (beat the baseline, passed its checks).
    assert (model["aliases"].get("champion") == "1") == (tags["gate.passed"] == "true"), (model["aliases"], tags)
    # The data are deterministic and alert follows humidity, wind and the last hour: the model beats
    # the alert of a day before, passes its checks, and so the gate.
    assert run_tags["beats_baseline"] == "true", run_tags["gate_reason"]
    assert run_tags["behavioural_passed"] == "true", run_tags["gate_reason"]
    assert tags["gate.passed"] == "true", run_tags["gate_reason"]


def test_evaluation_fits_a_classifier(trained):
    evaluation = trained["evaluation"]
    assert evaluation["task"] == "classification" and evaluation["gate_metric"] == "f1"
    baseline = evaluation["baseline"]
    assert baseline["feature"] == "alert_lag_24h" and baseline["rows"] > 100
    assert baseline["rows"] + baseline["rows_without_baseline"] == evaluation["n_rows"]
    slices = pd.DataFrame(evaluation["slices"])
    assert sorted(slices.loc[slices["slice"] == "sensor", "value"]) == ["centre", "harbour", "north"]
    assert slices.groupby("slice")["rows"].sum().eq(evaluation["n_rows"]).all(), "each slicing covers every row"
    assert set(slices.loc[slices["slice"] == "humidity_band", "value"]) <= {"dry", "moderate", "humid"}
    checks = {check["name"]: check for check in evaluation["behavioural"]}
    assert {"invariant to _source", "invariant to _batch_id", "humidity increasing", "wind_speed decreasing",
            "finite predictions", "probabilities in [0, 1]"} == set(checks)
    assert all(check["passed"] for check in checks.values()), checks
    artifacts = {a.path for a in trained["client"].list_artifacts(trained["run"].info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/predicted_vs_actual.png", "evaluation/slices.csv"} <= artifacts


def test_the_registered_classifier_loads_through_the_registry(trained):
    from looplab.registry import load_model
    from looplab.versioning import load_version

    model = load_model(MODEL, "1", client=trained["client"])  # skops, against the reviewed trusted types
    assert type(model[-1]).__name__ == "HistGradientBoostingClassifier"
    evaluation_set = load_version(trained["project"] / "data" / "05_model_input" / "evaluation_set.parquet")
    probabilities = model.predict_proba(evaluation_set)[:, 1]
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


@pytest.fixture(scope="module")
def retrained(trained, tool, quiet_env):
    "A second `kedro run -p training` with a logistic regression (conf changed only): it faces version 1 as champion."
    project = trained["project"]
    (project / "conf" / "base" / "parameters_training.yml").write_text(
        TRAINING.lstrip().replace("family: hist_gradient_boosting", "family: linear"))
    kedro_run(tool, quiet_env, project, "-p", "training")
    result = looplab(tool, quiet_env, project, "status", "--json")
    assert result.returncode == 0, result.stderr
    model = next(m for m in json.loads(result.stdout)["models"] if m["name"] == MODEL)
    version = next(v for v in model["versions"] if v["version"] == "2")
    return {"model": model, "version": version, "run": trained["client"].get_run(version["run_id"])}


def test_a_second_classifier_faces_the_champion(retrained):
    model, tags, run = retrained["model"], retrained["version"]["tags"], retrained["run"]
    assert run.data.params["training.model.family"] == "linear"
    assert model["aliases"]["challenger"] == "2"
    assert run.data.tags["champion_version"] == "1"
    # The champion (a skops-stored HistGradientBoostingClassifier) was loaded and scored on the same rows:
    # the gate compared the two, it did not fail for want of a champion.
    assert "the champion's" in tags["gate.reason"] and "cannot be" not in tags["gate.reason"], tags["gate.reason"]
    assert tags["gate.champion"] not in ("", "None") and tags["gate.improvement"] not in ("", "None"), tags
    assert model["aliases"]["champion"] == ("2" if tags["gate.passed"] == "true" else "1"), (model["aliases"], tags)


@pytest.mark.parametrize("version", ["1", "2"])
def test_reproduce_the_classifier(trained, retrained, tool, quiet_env, version):
    result = looplab(tool, quiet_env, trained["project"], "reproduce", f"{MODEL}@{version}", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    comparison = json.loads(result.stdout)
    assert comparison["matches"] is True, comparison["metrics"]
    names = {row["name"] for row in comparison["metrics"]}
    assert CLASSIFICATION | {f"baseline_{name}" for name in CLASSIFICATION} <= names, sorted(names)
