"""A classifier's loop closes: the classes it served are scored, window by window, against the labels that arrive later.

A user's CSV with a time column and a Yes/No target (`busy`: more than 100 bikers in the hour, from the
bundled bike data, six weeks of it) goes through `looplab init` → `kedro run --env busy`. The champion
serves one week of hours through `looplab serve --env busy`; `kedro run -p monitoring --env busy` then
scores that week: its error rate (the share of wrong classes, recomputed here from the prediction log
and the CSV's labels), the class-prior baseline and the version's evaluation error rate (1 − accuracy).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from looplab.core import load_config
from looplab.monitoring import load_store
from looplab.sources import demo_rides

from conftest import copy_project, free_port, kedro_run, running_server

WEEK = ("2011-01-10", "2011-01-17")  # Monday to Monday: one monitoring window, long before the data's last day


@pytest.fixture(scope="module")
def busy(root, tmp_path_factory, tool, quiet_env):
    "A project with the environment `busy` trained, one week served, and the monitoring pipeline run."
    folder = tmp_path_factory.mktemp("busy")
    project = copy_project(root, folder / "project")
    (project / "conf" / "local").mkdir(exist_ok=True)
    rides = demo_rides(load_config(root=project)["data"], root=project)
    rides = rides[rides["timestamp"] < "2011-02-12"].drop(columns=["casual", "registered"])
    data = rides.assign(busy=np.where(rides["bikers"] > 100, "Yes", "No")).drop(columns="bikers")
    data.to_csv(folder / "busy.csv", index=False)
    init = subprocess.run([tool("looplab"), "init", "busy", "--data", str(folder / "busy.csv"), "--target", "busy", "--timestamp", "timestamp"],
                          cwd=project, env=quiet_env, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stderr
    assert "task: classification, target busy" in init.stdout, init.stdout
    kedro_run(tool, quiet_env, project, "--env", "busy")
    week = data[(data["timestamp"] >= WEEK[0]) & (data["timestamp"] < WEEK[1])]
    records = week.drop(columns="busy").astype({"timestamp": str}).to_dict("records")
    port = free_port()
    with running_server([tool("looplab"), "serve", "--env", "busy", "--workers", "1", "--port", str(port)],
                        project, quiet_env, f"http://127.0.0.1:{port}/ready", folder / "serve.log"):
        answer = requests.post(f"http://127.0.0.1:{port}/v1/models/busy/predict", json={"records": records}, timeout=60)
    assert answer.status_code == 200, answer.text
    monitored = kedro_run(tool, quiet_env, project, "-p", "monitoring", "--env", "busy")
    return {"project": project, "data": data, "week": week, "answer": answer.json(), "run": monitored.stdout + monitored.stderr}


def test_the_served_week_is_one_window_scored_by_its_error_rate(busy):
    windows = load_store(root=busy["project"], env="busy")["windows"].sort_values("window_start", ignore_index=True)
    window = windows.iloc[0]
    later = windows.iloc[1:]  # the weeks up to the data's clock: monitored, with nothing served in them
    assert len(later) and (later["predictions"] == 0).all() and (later["note"] == "no predictions in this window").all(), later
    assert (str(window["window_start"].date()), str(window["window_end"].date())) == WEEK
    assert window["predictions"] == window["labelled"] == len(busy["week"]), window.to_dict()
    served = np.asarray(busy["answer"]["predictions"])
    expected = float(np.mean(served != busy["week"]["busy"].to_numpy()))  # the served classes against the CSV's labels
    assert window["error_rate"] == pytest.approx(expected), (window["error_rate"], expected)
    assert pd.isna(window["mae"]) and pd.isna(window["evaluation_mae"])  # no numbers averaged for classes
    # the error rate estimated before labels: the served version's probabilities on the logged inputs, calibrated on its
    # evaluation set; the estimate's own error once the labels are in
    assert 0 <= window["estimated_error_rate_low"] <= window["estimated_error_rate"] <= window["estimated_error_rate_high"] <= 1, window.to_dict()
    assert window["estimated_error_rate"] < 0.5 and pd.isna(window["estimated_mae"])
    assert window["estimate_error"] == pytest.approx(window["estimated_error_rate"] - window["error_rate"])
    assert "error rate" in busy["run"] and "class prior" in busy["run"], busy["run"][-3000:]


def test_the_window_is_compared_with_the_evaluation_and_the_class_prior(busy, tool, quiet_env):
    window = load_store(root=busy["project"], env="busy")["windows"].sort_values("window_start").iloc[0]
    status = subprocess.run([tool("looplab"), "status", "--env", "busy", "--json"], cwd=busy["project"], env=quiet_env,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    model = next(m for m in json.loads(status.stdout)["models"] if m["name"] == "busy")
    version = next(v for v in model["versions"] if v["version"] == model["aliases"]["champion"])
    assert window["evaluation_error_rate"] == pytest.approx(1 - version["metrics"]["accuracy"])
    assert window["degradation"] == pytest.approx(window["error_rate"] / window["evaluation_error_rate"] - 1)
    # the class-prior baseline: the most frequent class of the labels known before the window (its first nine days)
    before = busy["data"].loc[busy["data"]["timestamp"] < WEEK[0], "busy"].mode().iloc[0]
    assert window["baseline_error_rate"] == pytest.approx(float(np.mean(busy["week"]["busy"] != before)))


LATER = ("2011-02-12", "2011-02-23")  # the days after the file `looplab init` was given: a window of them is due by the end


@pytest.fixture(scope="module")
def replayed(busy, tool, quiet_env):
    "`looplab replay --env busy --data later.csv`: the twelve days after the environment's data, day by day through the loop."
    project = busy["project"]
    rides = demo_rides(load_config(root=project)["data"], root=project)
    rides = rides[(rides["timestamp"] >= LATER[0]) & (rides["timestamp"] < pd.Timestamp(LATER[1]) + pd.Timedelta(days=1))]
    later = rides.drop(columns=["casual", "registered"]).assign(busy=np.where(rides["bikers"] > 100, "Yes", "No")).drop(columns="bikers")
    later.to_csv(project.parent / "later.csv", index=False)
    # as `looplab init` says: its ranges are January's, widened by the user for the days still to come (the weather columns are 0–1)
    conf = project / "conf" / "busy" / "parameters_data.yml"
    parameters = yaml.safe_load(conf.read_text())
    for spec in parameters["data"]["validation"]["schema"]["columns"].values():
        if spec["dtype"] == "float64":
            spec.update(min=0.0, max=1.0)
    conf.write_text(yaml.safe_dump(parameters, sort_keys=False))
    run = subprocess.run([tool("looplab"), "replay", "--env", "busy", "--data", str(project.parent / "later.csv"), "--no-progress"],
                         cwd=project, env=quiet_env, capture_output=True, text=True, timeout=1200)
    return {"run": run, "later": later}


def test_the_replay_takes_a_file_of_days_for_an_environment(busy, replayed):
    run = replayed["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"replay {LATER[0]} – {LATER[1]}" in run.stdout and "  error rate: policy " in run.stdout, run.stdout
    folder = busy["project"] / "data" / "busy" / "08_reporting" / "replay"  # beside the environment's monitoring store
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["requests"] == len(replayed["later"]), summary
    # the policy's error rate, recomputed from the prediction log's answers for those hours and the file's labels
    from looplab.monitoring import logged_predictions

    logged, _ = logged_predictions(busy["project"] / "data" / "busy" / "07_model_output" / "predictions", "busy", "classification", "all")
    answers = logged[logged["event_time"] >= LATER[0]].set_index("event_time")["prediction"]
    labels = replayed["later"].assign(timestamp=pd.to_datetime(replayed["later"]["timestamp"])).set_index("timestamp")["busy"]
    assert len(answers) == len(labels)
    assert summary["policy_error_rate"] == pytest.approx(float((answers != labels.reindex(answers.index)).mean()))
    assert "Error rate over the replay" in (folder / f"replay-{LATER[0]}-{LATER[1]}.html").read_text()
    windows = load_store(root=busy["project"], env="busy")["windows"]
    scored = windows[(windows["window_start"] >= "2011-02-07") & windows["error_rate"].notna()]
    assert len(scored) >= 1, windows[["window_start", "predictions", "labelled", "error_rate", "note"]]
    # a retraining the trigger fires runs the training notebook on the classifier's data to the end
    decisions = load_store(root=busy["project"], env="busy")["decisions"]
    fired = decisions[decisions["fired"] == True]  # noqa: E712
    assert not (fired["outcome"] == "failed").any(), fired.to_dict("records")
    assert summary["retrainings"] == len(fired)


def test_the_dashboard_shows_a_classifier_s_error_rates(busy, replayed, tool, quiet_env):
    "The monitoring dashboard's page for the environment (built in a process of its own, as the Voila app does)."
    script = "import sys; from looplab.dashboard import page; print(page(sys.argv[1], 'busy'))"
    shown = subprocess.run([str(Path(tool("python"))), "-c", script, str(busy["project"])], cwd=busy["project"], env=quiet_env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    page = shown.stdout
    assert "looplab-error" not in page, page[:2000]
    assert "data-field='error_rate'" in page and "evaluation accuracy" in page and "<th>error_rate</th>" in page, page[:3000]
    assert "data-field='mae'" not in page and "alt='error rate, drift p-values" in page


def test_the_drift_notebook_checks_the_served_week_in_the_environment(busy, tool, quiet_env, root):
    "papermill with `-p env busy`: the week the champion served, against its training data; the result in the environment's reports."
    run = subprocess.run([tool("papermill"), str(root / "notebooks" / "runs" / "drift.ipynb"), str(busy["project"].parent / "drift-busy.ipynb"),
                          "-k", "looplab", "-p", "env", "busy", "-p", "window_start", WEEK[0], "-p", "window_end", WEEK[1],
                          "-p", "model_alias", "1"],
                         cwd=busy["project"], env=quiet_env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [path] = (busy["project"] / "data" / "busy" / "08_reporting" / "drift").glob("busy-1-*.json")
    result = json.loads(path.read_text())
    assert (result["status"], result["model_version"], result["window_rows"]) == ("checked", "1", len(busy["week"])), result
    assert {row["feature"] for row in result["features"]} >= {"temp", "hr"}, result["features"]
