"""The monitoring layer on a project copy: windows scored from the prediction log against late labels,
the `monitoring` pipeline, the retraining trigger's faults (a crashing training run, a trigger while one
runs, alerts), and the closed loop of `make run` (the loop once, then a replay that drifts, retrains,
promotes and serves the new champion)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest

from conftest import copy_project, kedro_run, project_with_models


@pytest.fixture(scope="module")
def project(root, tool, quiet_env, tmp_path_factory) -> Path:
    "A test-environment copy with data through 2011-01-23 and champion version 1."
    return project_with_models(root, tmp_path_factory.mktemp("monitoring") / "project", tool, quiet_env)


@pytest.fixture(scope="module", autouse=True)
def mlflow_as_found():
    """MLflow's tracking and registry URIs as they were before this module: its tests point them (and the
    environment variables MLflow sets with them) at the copy's store, where a later module's clients would go."""
    import mlflow

    with kept_environ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        yield
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def env(quiet_env, project) -> dict:
    return {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project), "KEDRO_ENV": "test"}


@pytest.fixture
def fresh_store(project):
    "Each test starts with an empty monitoring store and prediction log."
    import shutil

    for folder in ("data/08_reporting/monitoring", "data/07_model_output/predictions"):
        shutil.rmtree(project / folder, ignore_errors=True)
    yield project / "data" / "08_reporting" / "monitoring"


@contextlib.contextmanager
def kept_environ(*names: str):
    "The environment variables `names` as they were before the block, whatever it set."
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def in_project(project: Path):
    "Work inside the project copy (library calls read conf and the MLflow store from there)."
    here = Path.cwd()
    with kept_environ("LOOPLAB_PROJECT_ROOT", "KEDRO_ENV"):
        os.chdir(project)
        os.environ.update(LOOPLAB_PROJECT_ROOT=str(project), KEDRO_ENV="test")
        try:
            yield
        finally:
            os.chdir(here)


def parameters(project: Path) -> dict:
    from looplab.core import load_config

    return load_config("parameters", env="test", root=project)


def validated(project: Path) -> pd.DataFrame:
    folder = project / "data" / "03_primary" / "validated_rides.parquet"
    return pd.read_parquet(sorted(folder.iterdir())[-1] / folder.name)


def write_log(project: Path, start: str, end: str, version: str = "1", repeat: int = 1, shift: dict | None = None,
              later_days: int = 0, values: dict | None = None) -> int:
    "Log the champion's predictions for the hours in [start, end) the way serving does (contract of 31_serving)."
    from looplab.core import configure_mlflow
    from looplab.prediction_log import PredictionLog
    from looplab.registry import load_model

    params = parameters(project)
    columns = params["training"]["features"]
    folder = project / "data" / "04_feature" / "features.parquet"
    features = pd.read_parquet(sorted(folder.iterdir())[-1] / folder.name)
    times = pd.to_datetime(features["event_timestamp"])
    rows = features[(times >= start) & (times < end)].copy()
    for column, amount in (shift or {}).items():
        rows[column] = rows[column] + amount
    for column, value in (values or {}).items():
        rows[column] = value
    configure_mlflow("test", project)
    predictions = load_model("bike-demand", version).predict(rows[columns])
    log = PredictionLog(project / "data" / "07_model_output" / "predictions")
    call = uuid.uuid4().hex[:8]
    for attempt in range(repeat):  # a repeat writes the very same lines again
        log.append([{"request_id": f"{call}-{index}", "row": 0, "time": f"2026-01-01T00:00:{attempt:02d}+00:00",
                     "model_name": "bike-demand", "model_version": version, "entity": "dc",
                     "event_time": (when + pd.Timedelta(days=later_days)).isoformat(), "latency_ms": 2.5,
                     "inputs": {column: (None if pd.isna(value) else value) for column, value in zip(columns, row, strict=True)},
                     "prediction": float(prediction)}
                    for index, (when, row, prediction) in enumerate(zip(pd.to_datetime(rows["event_timestamp"]), rows[columns].itertuples(index=False),
                                                                        predictions, strict=True))])
    log.close()
    return len(rows)


def monitor(project: Path, now: str, **overrides) -> dict:
    from looplab.monitoring import monitor_windows

    params = parameters(project)
    with in_project(project):
        return monitor_windows(validated(project), {**params["monitoring"], **overrides}, params["data"], params["training"],
                               params["evaluation"], now=now, root=project, env="test")


def test_windows_are_scored_once_their_labels_are_due(project, fresh_store):
    from looplab.monitoring import load_store

    rows = write_log(project, "2011-01-10", "2011-01-17", repeat=2)  # every line twice: counted once
    early = monitor(project, "2011-01-18")                           # labels due two days after the window
    assert early["windows"] == []
    # before its labels the window is estimated: its error from the logged inputs and predictions alone, stored at once
    (estimated,) = early["estimated"]
    assert estimated["status"] == "estimated" and estimated["labelled"] == 0 and math.isnan(estimated["mae"]), estimated
    assert 0 < estimated["estimated_mae_low"] <= estimated["estimated_mae"] <= estimated["estimated_mae_high"], estimated
    assert estimated["note"].startswith("labels due 2011-01-19 00:00") and "run_id" not in estimated
    assert len(load_store(project, "test")["windows"]) == 0                  # not a scored window: the trigger never sees it
    (pending,) = load_store(project, "test", estimated=True)["windows"].to_dict("records")
    assert pending["status"] == "estimated" and pending["estimated_mae"] == pytest.approx(estimated["estimated_mae"])
    assert monitor(project, "2011-01-18 12:00")["estimated"] == []         # nothing served since: not estimated again
    report = monitor(project, "2011-01-20")
    (window,) = report["windows"]
    assert window["window_start"] == "2011-01-10 00:00:00" and window["predictions"] == rows == window["labelled"]
    assert report["predictions"]["lines"] == 2 * rows and report["predictions"]["duplicates"] == 0
    labels = validated(project).set_index("timestamp")["bikers"]
    assert 0 < window["mae"] < labels.mean() and math.isfinite(window["baseline_mae"]) and window["model_version"] == "1"
    assert math.isfinite(window["evaluation_mae"]) and window["drift_backend"] in ("alibi", "scipy")
    # the error estimated from the logged inputs and predictions alone, by the estimator version 1's training run kept,
    # beside the realised one; the window's MLflow run has both
    assert 0 < window["estimated_mae_low"] <= window["estimated_mae"] <= window["estimated_mae_high"], window
    assert window["estimate_error"] == pytest.approx(window["estimated_mae"] - window["mae"])
    assert math.isnan(window["estimated_error_rate"])
    import mlflow

    logged = mlflow.get_run(window["run_id"]).data.metrics
    assert logged["estimated_mae"] == pytest.approx(window["estimated_mae"]) and logged["mae"] == pytest.approx(window["mae"])
    assert monitor(project, "2011-01-21")["windows"] == []           # monitored once
    stored = load_store(project, "test")
    assert len(stored["windows"]) == 1 and set(stored["drift"]["feature"]) >= {"temp", "weathersit", "prediction"}
    # the estimated row was scored in place: one row, the realised MAE beside the estimate made before the labels
    assert list(load_store(project, "test", estimated=True)["windows"]["status"]) == ["scored"]
    assert window["estimated_mae"] == pytest.approx(estimated["estimated_mae"])
    assert stored["windows"]["estimated_mae"].iloc[0] == pytest.approx(window["estimated_mae"])
    assert "hr" not in set(stored["drift"]["feature"])  # monitoring.drift.ignore: calendar columns


def test_late_labels_empty_windows_and_duplicates(project, fresh_store):
    write_log(project, "2011-01-03", "2011-01-05")
    write_log(project, "2011-01-17", "2011-01-18")
    write_log(project, "2011-01-17 05:00", "2011-01-17 06:00")  # the same hour predicted again: the later line counts
    report = monitor(project, "2011-01-26 00:00", label_delay_hours=60)
    by_start = {window["window_start"][:10]: window for window in report["windows"]}
    assert set(by_start) == {"2011-01-03", "2011-01-10"}           # the week of the 17th: labels not due yet
    assert by_start["2011-01-10"]["predictions"] == 0 and by_start["2011-01-10"]["note"] == "no predictions in this window"
    assert report["predictions"]["duplicates"] == 1
    # Labels that never arrive (hours after the data ends): the window is reported with its volume
    # and why it has no error.
    write_log(project, "2011-01-17", "2011-01-18", later_days=7)
    late = {window["window_start"][:10]: window for window in monitor(project, "2011-02-01", label_delay_hours=1)["windows"]}
    assert set(late) == {"2011-01-17", "2011-01-24"} and late["2011-01-17"]["labelled"] == 24
    week = late["2011-01-24"]
    assert week["predictions"] == week["missing_labels"] == 24 and week["labelled"] == 0
    assert "labels missing" in week["note"] and math.isnan(week["mae"])


class _Records(list):
    "The records a logger emits, whatever its handlers and propagation."

    def __init__(self, name: str):
        import logging

        super().__init__()
        self.logger, self.handler = logging.getLogger(name), logging.Handler(logging.WARNING)
        self.handler.emit = self.append

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self]


def test_late_log_entries_rescore_their_window(project, fresh_store):
    from looplab.monitoring import WINDOW_COLUMNS, load_store, store_files

    rows = write_log(project, "2011-01-10", "2011-01-15")
    (window,) = monitor(project, "2011-01-20")["windows"]
    assert window["predictions"] == window["log_lines"] == rows and window["rescored"] == window["late_entries"] == 0
    assert monitor(project, "2011-01-20 06:00")["windows"] == []      # nothing new: nothing scored again
    # A worker flushes a day late, and a day is served again (new lines for hours already logged).
    late = write_log(project, "2011-01-15", "2011-01-16")
    again = write_log(project, "2011-01-12", "2011-01-13")
    with _Records("looplab.monitoring") as records:
        report = monitor(project, "2011-01-21")
    (rescored,) = report["windows"]
    assert rescored["window_start"][:10] == "2011-01-10" and rescored["rescored"] == 1 and rescored["late_entries"] == late + again
    assert rescored["predictions"] == rescored["labelled"] == rows + late and rescored["log_lines"] == rows + late + again
    assert report["late_entries"] == {"2011-01-10": late + again} and "re-scored" in rescored["note"]
    assert any("2011-01-10" in message and f"{late + again} log entries arrived after it was scored" in message
               for message in records.messages()), records.messages()
    stored = load_store(project, "test")["windows"]
    assert len(stored) == 1 and stored.loc[0, "predictions"] == rows + late and stored.loc[0, "rescored"] == 1  # replaced, one row
    assert monitor(project, "2011-01-22")["windows"] == []            # counted now: not scored a third time
    # A store written before lines were counted: a late line for a new hour still shows, through the volume.
    path = store_files(fresh_store)["windows"]
    pd.read_parquet(path).drop(columns=["log_lines", "late_entries", "rescored"]).to_parquet(path, index=False)
    last = write_log(project, "2011-01-16", "2011-01-17")
    (old,) = monitor(project, "2011-01-23")["windows"]
    assert old["rescored"] == 1 and old["late_entries"] == last and old["predictions"] == rows + late + last
    assert set(WINDOW_COLUMNS) <= set(load_store(project, "test")["windows"].columns)


def test_a_rescored_window_does_not_retrain_its_episode_again(project, fresh_store, policy):
    from looplab.monitoring import store_files
    from looplab.retraining import record_decision, retraining_trigger

    policy(runner="direct", cooldown_days=0)
    shift = {"temp": 0.4, "atemp": 0.4, "hum": -0.3}
    write_log(project, "2011-01-10", "2011-01-15", shift=shift)
    (window,) = monitor(project, "2011-01-20")["windows"]
    assert window["drift_features"] >= 2, window
    # The retraining this drift called for has run (recorded as the trigger records it).
    record_decision(fresh_store, {"id": uuid.uuid4().hex, "time": "2026-01-01T00:00:00+00:00", "clock": "2011-01-20T00:00:00",
                                  "window_end": window["window_end"], "fired": True, "reasons": ["drift"], "blocked_by": [],
                                  "source": "monitoring", "outcome": "rejected"})
    write_log(project, "2011-01-15", "2011-01-17", shift=shift)  # late lines: the window is scored again, drift and all
    report = monitor(project, "2011-01-21")
    (rescored,) = report["windows"]
    assert rescored["rescored"] == 1 and rescored["drift_features"] >= 2
    params = parameters(project)
    with in_project(project):
        decision = retraining_trigger(report, validated(project), params["monitoring"], params["retraining"], params["data"],
                                      params["training"], root=project, env="test")
    assert decision["fired"] is False and decision["blocked_by"] == ["episode"], decision
    audit = [json.loads(line) for line in store_files(fresh_store)["decisions"].read_text().splitlines()]
    assert sum(bool(line.get("fired")) for line in audit) == 1


def test_a_window_with_one_weather_and_a_constant_feature_is_checked(project, fresh_store):
    write_log(project, "2011-01-10", "2011-01-17", values={"weathersit": "clear", "windspeed": 0.2})
    (window,) = monitor(project, "2011-01-20")["windows"]
    assert window["drift_backend"] and "drift not checked" not in window["note"], window["note"]
    from looplab.monitoring import load_store

    drift = load_store(project, "test")["drift"].set_index("feature")
    assert {"weathersit", "windspeed", "prediction"} <= set(drift.index)
    assert bool(drift.loc["windspeed", "drift"])  # a wind that never changes is not the wind of the reference


def test_monitoring_pipeline_runs_one_window(project, fresh_store, tool, env):
    write_log(project, "2011-01-10", "2011-01-17")
    kedro_run(tool, env, project, "-p", "monitoring", "--env", "test")
    report = json.loads((project / "data" / "08_reporting" / "monitoring_report.json").read_text())
    decision = json.loads((project / "data" / "08_reporting" / "retraining_decision.json").read_text())
    assert [window["window_start"][:10] for window in report["windows"]] == ["2011-01-10"]
    assert decision["fired"] is False and decision["blocked_by"] and decision["champion_before"] == "1"
    audit = [json.loads(line) for line in (fresh_store / "decisions.jsonl").read_text().splitlines()]
    assert audit[-1]["id"] == decision["id"] and audit[-1]["source"] == "monitoring"


def alert(name: str = "LooplabDriftDetected", status: str = "firing", group: str = "g1") -> dict:
    return {"version": "4", "status": status, "groupKey": group, "groupLabels": {"alertname": name},
            "alerts": [{"status": status, "labels": {"alertname": name, "severity": "warning"}, "fingerprint": "f1"}]}


def policy_conf(project: Path, runner: str = "direct", cooldown_days: float = 0, **retraining) -> None:
    "An override of the retraining policy for these tests (in the copy's conf/test)."
    import yaml

    block = {"retraining": {"runner": runner, "policy": {"min_new_labelled_rows": 0, "cooldown_days": cooldown_days}, **retraining}}
    (project / "conf" / "test" / "parameters_retraining_override.yml").write_text(yaml.safe_dump(block))


@pytest.fixture
def policy(project):
    yield lambda **kwargs: policy_conf(project, **kwargs)
    (project / "conf" / "test" / "parameters_retraining_override.yml").unlink(missing_ok=True)


def test_a_crashing_training_run_leaves_the_champion_serving(project, fresh_store, policy):
    from looplab.core import configure_mlflow
    from looplab.monitoring import load_store
    from looplab.registry import alias_version
    from looplab.retraining import handle_alert

    # The papermill notebook runs for real and fails inside: one day of training data is below
    # training.window.min_train_rows.
    policy(runner="papermill", train_days=1, evaluation_days=2)
    with in_project(project):
        decision = handle_alert(alert(group="crash"), project, "test")
        configure_mlflow("test", project)
        assert alias_version("bike-demand", "champion") == "1"
    assert decision["fired"] and decision["outcome"] == "failed" and decision["champion_after"] == "1"
    assert "TrainingDataError" in decision["error"] or "no training rows" in decision["error"], decision["error"]
    # the notebook's kernel logged JSON lines in the trigger's environment, its failure among them
    lines = (project / "data" / "08_reporting" / "logs" / "papermill-train.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    [failure] = [record for record in records if record["level"] == "ERROR" and "TrainingDataError" in record["message"]]
    assert failure["message"].startswith("a cell raised TrainingDataError") and "Traceback" in failure["exc_info"], failure
    kernel = [record for record in records if record["pid"] == failure["pid"]]  # that kernel's lines
    assert {(record["component"], record["env"]) for record in kernel} == {("papermill-train", "test")}, kernel
    assert kernel[0]["message"] == "papermill-train kernel started (environment test)"
    assert kernel[0]["output_notebook"].startswith(str(fresh_store / "retraining")), kernel[0]
    stored = load_store(project, "test")["decisions"]
    assert stored.iloc[-1]["outcome"] == "failed"                     # the decision and its outcome, merged
    assert not (fresh_store / "retraining.lock").exists()


def test_alerts_are_deduplicated_and_a_running_retraining_blocks_another(project, fresh_store, policy):
    from looplab.monitoring import load_store, store_files
    from looplab.retraining import handle_alert, retraining_lock

    policy(runner="direct", cooldown_days=7)
    with in_project(project):
        resolved = handle_alert(alert(status="resolved", group="r"), project, "test")
        assert resolved["fired"] is False and resolved["blocked_by"] == ["resolved"]
        with retraining_lock(store_files(fresh_store)["lock"]) as held:  # a retraining is running
            assert held
            blocked = handle_alert(alert(group="busy"), project, "test")
        assert blocked["fired"] is False and "running" in blocked["blocked_by"]
        assert handle_alert(alert(group="busy"), project, "test").get("deduplicated")  # the same group within the hour
        with pytest.raises(ValueError, match="alerts"):
            handle_alert({"nothing": 1}, project, "test")
        # Two alerts at once: one retraining; the other is told one is running (or, when it decides
        # after the first has finished, that the cool-down holds).
        results = []
        threads = [threading.Thread(target=lambda group=group: results.append(handle_alert(alert(group=group), project, "test")))
                   for group in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    fired = [result for result in results if result["fired"]]
    assert len(results) == 2 and len(fired) == 1, results
    assert fired[0]["outcome"] in ("promoted", "rejected")
    decisions = load_store(project, "test")["decisions"]
    assert len(decisions) == 4 and decisions["fired"].sum() == 1     # resolved, busy, a, b: all kept; one retraining
    assert decisions["source"].eq("alert").all() and decisions["time"].notna().all()  # each decision whole, not just its id


def test_every_alert_decision_goes_to_mlflow(project, fresh_store, policy):
    "A resolved alert's decision and one held for want of data are MLflow runs too, like every other decision."
    import mlflow
    from mlflow import MlflowClient

    from looplab.core import configure_mlflow, mlflow_settings
    from looplab.retraining import handle_alert

    policy(runner="direct", cooldown_days=7)
    data = project / "data" / "03_primary" / "validated_rides.parquet"
    with in_project(project):
        resolved = handle_alert(alert(status="resolved", group="gone"), project, "test")
        data.rename(data.with_name("hidden.parquet"))
        try:
            no_data = handle_alert(alert(group="nodata"), project, "test")
        finally:
            data.with_name("hidden.parquet").rename(data)
        configure_mlflow("test", project)
        experiment = mlflow.get_experiment_by_name(mlflow_settings("test", project)["experiments"]["monitoring"])
        for decision, blocked in ((resolved, "resolved"), (no_data, "no_data")):
            assert decision["fired"] is False and decision["blocked_by"] == [blocked], decision
            (run,) = MlflowClient().search_runs([experiment.experiment_id], f"tags.`looplab.decision_id` = '{decision['id']}'")
            assert run.data.tags["looplab.blocked_by"] == blocked and run.data.tags["looplab.source"] == "alert"
            assert run.data.metrics["fired"] == 0.0 and run.info.run_name == "retraining decision held"


def test_replay_through_a_running_server(project, fresh_store, tool, env):
    "`looplab replay --mode http`: the same steps, the requests sent to a real `looplab serve` worker."
    from looplab.monitoring import logged_predictions

    from conftest import free_port, running_server

    port = free_port()
    with running_server([tool("looplab"), "serve", "--workers", "1", "--port", str(port), "--env", "test"], project, env,
                        f"http://127.0.0.1:{port}/ready", project / "serve.log"):
        result = subprocess.run([tool("looplab"), "replay", "--mode", "http", "--url", f"http://127.0.0.1:{port}", "--start", "2011-01-24",
                                 "--end", "2011-01-25", "--no-progress", "--env", "test"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=600)
    # stopped gracefully on leaving: the worker has flushed its prediction log
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    served = int(re.search(r"2 days in .* s \(.*\), (\d+) predictions", result.stdout).group(1))
    log, _ = logged_predictions(project / "data" / "07_model_output" / "predictions", "bike-demand")
    days = set(log["event_time"].dt.strftime("%Y-%m-%d"))
    assert days == {"2011-01-24", "2011-01-25"} and len(log) == served >= 40  # every hour the data has, logged by the worker


def test_make_run_closes_the_loop(root, tool, quiet_env, tmp_path):
    "`make run`'s two steps on the embedded defaults: drift is detected, the trigger retrains, serving moves on."
    project = copy_project(root, tmp_path / "project")
    env = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}
    env.pop("KEDRO_ENV", None)
    makefile = (root / "Makefile").read_text()
    start = re.search(r"^RUN_REPLAY_START \?= (\S+)", makefile, re.M).group(1)
    end = re.search(r"^RUN_REPLAY_END \?= (\S+)", makefile, re.M).group(1)
    assert "\t$(BIN)/looplab loop --start $(RUN_REPLAY_START) --end $(RUN_REPLAY_END)\n" in makefile, "make run is `looplab loop`"
    make_run = [tool("looplab"), "loop", "--start", start, "--end", end, "--no-progress"]
    result = subprocess.run(make_run, cwd=project, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the loop, once: kedro run -c kedro.yml" in result.stdout, result.stdout[-3000:]
    assert "promoted" in result.stdout and "policy" in result.stdout, result.stdout
    assert "next:" in result.stdout and "looplab apps monitoring" in result.stdout
    assert "Kernel is running over TCP" not in result.stderr, "the retraining kernel listens on local sockets, quietly"
    summary = json.loads((project / "data" / "08_reporting" / "replay" / "summary.json").read_text())
    assert summary["retrainings"] >= 1 and summary["promotions"] >= 1 and summary["drift_windows"] >= 1, summary
    assert summary["champion_end"] != summary["champion_start"]
    assert summary["requests"] >= 24 * 40 and math.isfinite(summary["policy_mae"]) and math.isfinite(summary["static_mae"])
    # Serving answered with the new champion after its promotion.
    from looplab.monitoring import load_store, logged_predictions

    store = load_store(project)
    promoted = store["decisions"][store["decisions"]["outcome"] == "promoted"].iloc[0]
    log, _ = logged_predictions(project / "data" / "07_model_output" / "predictions", "bike-demand")
    after = log[log["event_time"] >= pd.Timestamp(promoted["clock"])]
    assert len(after) and set(after["model_version"]) - {summary["champion_start"]}, "serving never moved to a retrained version"
    assert store["windows"]["drift"].astype(bool).any()
    # Everything is in MLflow: the windows, the decisions, the retraining's executed notebook, the report.
    from mlflow import MlflowClient

    tracking = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking, registry_uri=tracking)
    experiment = client.get_experiment_by_name("looplab-monitoring")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    names = [run.info.run_name for run in runs]
    assert any(name.startswith("window ") for name in names) and any(name.startswith("replay ") for name in names)
    assert any(run.data.tags.get("looplab.outcome") == "promoted" for run in runs)
    retrained = client.get_run(promoted["run_id"])
    # the lab record is the finished notebook: the last cell's output is in it (it logs the notebook), and its hash is on the run
    import hashlib
    import tempfile

    import mlflow.artifacts
    import nbformat

    (record,) = [item.path for item in client.list_artifacts(retrained.info.run_id, "notebook")]
    local = Path(mlflow.artifacts.download_artifacts(run_id=retrained.info.run_id, artifact_path=record,
                                                     dst_path=tempfile.mkdtemp(), tracking_uri=tracking))
    last = [cell for cell in nbformat.read(local, as_version=4).cells if cell.cell_type == "code"][-1]
    assert "log_executed_notebook" in last.source and "logged " in str(last.outputs), last.outputs
    assert retrained.data.tags["notebook_sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    (report,) = (project / "data" / "08_reporting" / "replay").glob("replay-*.html")
    page = report.read_text()
    assert "policy" in page and "static" in page and "data:image/png;base64," in page and "promoted" in page

    # `make run` again repeats nothing: no Kedro run, no replayed day, the same versions and the same report.
    versions = sorted(int(version.version) for version in client.search_model_versions("name = 'bike-demand'"))
    summary_text = (project / "data" / "08_reporting" / "replay" / "summary.json").read_text()
    again = subprocess.run(make_run, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "kedro run skipped" in again.stdout and "the replay is up to date" in again.stdout, again.stdout
    assert sorted(int(version.version) for version in client.search_model_versions("name = 'bike-demand'")) == versions
    assert (project / "data" / "08_reporting" / "replay" / "summary.json").read_text() == summary_text
    assert report.read_text() == page and len(list(report.parent.glob("replay-*.html"))) == 1

    # `looplab reset` (make reset) leaves the project as a fresh clone has it: raw data, conf and code stay.
    refused = subprocess.run([tool("looplab"), "reset"], cwd=project, env=env, input="n\n", capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and (project / "mlflow.db").exists(), refused.stdout  # asked, and told no: nothing removed
    reset = subprocess.run([tool("looplab"), "reset", "--yes"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert reset.returncode == 0, reset.stdout[-3000:] + reset.stderr[-3000:]
    assert "mlflow.db" in reset.stdout and not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
    derived = [path for layer in ("02_intermediate", "03_primary", "04_feature", "06_models", "07_model_output", "08_reporting")
               for path in (project / "data" / layer).iterdir() if path.name != ".gitkeep"]
    assert derived == [] and not list((project / "data" / "01_raw").glob("landing/rides_*.csv"))
    assert (project / "data" / "01_raw" / "Bikeshare.csv").is_file() and (project / "conf" / "base" / "catalog.yml").is_file()
