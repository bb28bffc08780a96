"""One request followed by its id: the gateway's JSON access log → the worker's JSON log line → the prediction-log row.

The real nginx gateway in front of one real serving worker, and `looplab logs --request-id` reading it all back;
the kedro runs that trained the model wrote their JSON logs too, with the data run's MLflow run id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest
import requests

from looplab.prediction_log import read_prediction_log

from conftest import free_port, good_record, kedro_run, project_with_models, running_server, wait_until

pytestmark = pytest.mark.skipif(not os.access("/usr/sbin/nginx", os.X_OK), reason="nginx is missing: run make system-packages")


@pytest.fixture(scope="module")
def gateway_and_worker(root, tmp_path_factory, tool, quiet_env):
    "A project with a champion, one `looplab serve` worker and `looplab gateway` (unbuffered access log) on free loopback ports."
    project = project_with_models(root, tmp_path_factory.mktemp("logs") / "project", tool, quiet_env)  # its kedro runs' logs come with it
    serving_port, gateway_port = free_port(), free_port()
    while gateway_port == serving_port:
        gateway_port = free_port()
    predictions = project / "data" / "07_model_output" / "predictions"
    (project / "conf" / "local" / "serving.yml").write_text(
        f"serving:\n  port: {serving_port}\n  workers: 1\n  prediction_log:\n    path: {predictions}\n    flush_rows: 1\n")
    run_dir = tempfile.mkdtemp(prefix="looplab-gateway-")
    os.chmod(run_dir, 0o755)  # nginx's workers run as an unprivileged user, who must enter it
    (project / "conf" / "local" / "gateway.yml").write_text(
        f"gateway:\n  listen: 127.0.0.1:{gateway_port}\n  run_dir: {run_dir}\n  auth: none\n  access_log_buffer: null\n")
    env = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}
    output = tmp_path_factory.mktemp("logs-output")
    try:
        with running_server([tool("looplab"), "serve", "--workers", "1"], project, env, f"http://127.0.0.1:{serving_port}/ready",
                            output / "serve.log"), \
             running_server([tool("looplab"), "gateway"], project, env, f"http://127.0.0.1:{gateway_port}/gateway/health",
                            output / "gateway.log", timeout=60):
            yield {"project": project, "url": f"http://127.0.0.1:{gateway_port}", "env": env, "predictions": predictions}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def looplab_logs(tool, served, *options: str) -> list[dict]:
    result = subprocess.run([tool("looplab"), "logs", "--json", *options], cwd=served["project"], env=served["env"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_one_request_id_from_the_gateway_to_the_prediction_log(gateway_and_worker, tool):
    served = gateway_and_worker
    answer = requests.post(f"{served['url']}/v1/models/bike-demand/predict", json={"records": [good_record(served["project"])]}, timeout=30)
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["X-Request-ID"]  # made by nginx, sent on to the worker, answered to the client
    assert answer.json()["request_id"] == request_id

    # the worker writes its line after answering: wait (bounded) for the gateway's line and the worker's
    trail = wait_until(lambda: (lambda found: found if {r["component"] for r in found} >= {"gateway", "serving"} else None)(
        looplab_logs(tool, served, "--request-id", request_id)), 30, "the request's gateway and worker log lines")
    # time order: nginx's line has the second only; past the logs, the request's prediction-log row, and that no window scored it yet
    assert [record["component"] for record in trail][0] == "gateway" and trail[-1]["component"] == "monitoring", trail
    assert sorted(record["component"] for record in trail) == ["gateway", "monitoring", "prediction-log", "serving"], trail
    [gateway], [worker] = ([record for record in trail if record["component"] == name] for name in ("gateway", "serving"))
    assert gateway["uri"] == "/v1/models/bike-demand/predict" and gateway["status"] == 200
    assert (worker["level"], worker["status"], worker["model_name"], worker["model_version"], worker["env"]) == \
        ("INFO", 200, "bike-demand", "1", "local")
    assert worker["rows"] == 1 and worker["logger"] == "looplab.serving.requests"

    def logged_rows():
        frame = read_prediction_log(served["predictions"])
        return frame[frame["request_id"] == request_id].to_dict("records") if len(frame) else None

    logged = wait_until(logged_rows, 30, "the request's prediction-log row")
    assert len(logged) == 1 and logged[0]["model_version"] == "1", logged

    # a refused request is a warning on both sides, under its own id
    refused = requests.post(f"{served['url']}/v1/models/bike-demand/predict", json={"records": [{"nonsense": 1}]}, timeout=30)
    assert refused.status_code == 422
    warnings = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(
        looplab_logs(tool, served, "--level", "warning", "--request-id", refused.headers["X-Request-ID"])), 30, "the refusal's lines")
    assert {record["component"] for record in warnings} == {"gateway", "serving"}


def test_kedro_runs_log_json_with_their_data_run(gateway_and_worker, tool):
    records = looplab_logs(tool, gateway_and_worker, "--component", "kedro", "--env", "test")
    assert records and all(record["env"] == "test" for record in records)
    recorded = [record for record in records if record["message"].startswith("recorded data versions")]
    assert recorded and recorded[0]["logger"] == "looplab.versioning" and recorded[0]["run_id"], recorded
    registered = [record for record in records if record["message"].startswith("registered bike-demand version 1")]
    assert registered and registered[0]["model_version"] == "1" and registered[0]["run_id"], records[-5:]

    # a promotion by hand names the version and the run that trained it
    promoted = subprocess.run([tool("looplab"), "promote", "bike-demand", "1"], cwd=gateway_and_worker["project"],
                              env=gateway_and_worker["env"], capture_output=True, text=True, timeout=120)
    assert promoted.returncode == 0, promoted.stderr
    [promotion] = [record for record in looplab_logs(tool, gateway_and_worker, "--component", "registry")
                   if record["message"].startswith("promoted")]  # the command's own component (the kedro run's registry lines match too)
    assert promotion["component"] == "registry"
    assert (promotion["logger"], promotion["model_version"], promotion["run_id"]) == ("looplab.registry", "1", registered[0]["run_id"])


def test_a_papermill_run_logs_json_in_its_environment(gateway_and_worker, tool):
    "The training notebook run by papermill, as the retraining trigger runs it: its kernel's lines, in the environment it was given."
    served = gateway_and_worker
    project = served["project"]
    output = project / "data" / "08_reporting" / "train-explore.ipynb"
    run = subprocess.run([tool("papermill"), str(project / "notebooks" / "runs" / "train.ipynb"), str(output), "-k", "looplab",
                          "-p", "env", "test", "-p", "root", str(project), "-p", "model_family", "linear"],
                         cwd=project, env=served["env"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    records = looplab_logs(tool, served, "--component", "papermill-train", "--env", "test")
    assert records and {(record["component"], record["env"]) for record in records} == {("papermill-train", "test")}, records
    started, *rest = records
    assert started["message"] == "papermill-train kernel started (environment test)"
    assert started["notebook"] == "notebooks/runs/train.ipynb" and "output_notebook" not in started  # none given: none said
    [done] = [record for record in rest if record["message"].startswith("training run done")]
    printed = json.loads(output.read_text())  # the run id the notebook printed is the one its lines carry
    assert f"MLflow run {done['run_id']}" in json.dumps(printed), done
    assert done["model_name"] == "bike-demand" and "model_version" not in done  # an exploratory run registers nothing
    assert any(record["logger"].startswith("looplab.training") for record in rest), rest  # the library's own records, in the kernel's file


def test_a_request_traced_to_the_monitoring_window_that_scored_it(gateway_and_worker, tool):
    "`looplab logs --request-id` past the logs: the request's prediction-log rows, then the window a real monitoring run scored."
    from looplab.core import load_config
    from looplab.versioning import load_version

    served = gateway_and_worker
    project = served["project"]
    parameters = load_config(env="test", root=project)
    features, data = parameters["training"]["features"], parameters["data"]

    def as_records(frame):
        "Rows of a model-input set as request records: the features, the event time and the entity (logged, not model inputs)."
        frame = frame.dropna(subset=features)
        records = json.loads(frame[features].to_json(orient="records"))
        for record, moment, entity in zip(records, frame["event_timestamp"], frame[data["entity"]["column"]], strict=True):
            record.update({data["timestamp"]: moment.isoformat(), data["entity"]["column"]: entity})
        return records

    train = load_version(project / "data" / "05_model_input" / "train_set.parquet")
    week = as_records(train[(train["event_timestamp"] >= "2011-01-10") & (train["event_timestamp"] < "2011-01-17")])  # labels due
    later = as_records(load_version(project / "data" / "05_model_input" / "evaluation_set.parquet"))[-1]  # labels not due yet
    url = f"{served['url']}/v1/models/bike-demand/predict"
    assert requests.post(url, json={"records": week[1:]}, timeout=60).status_code == 200  # the rest of the week, another request
    answer = requests.post(url, json={"records": [week[0], later]}, timeout=30)
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["X-Request-ID"]

    before = looplab_logs(tool, served, "--request-id", request_id)  # no monitoring run yet: said so
    assert [record["status"] for record in before if record["component"] == "monitoring"] == ["not scored", "not scored"], before

    kedro_run(tool, served["env"], project, "-p", "monitoring", "--env", "test")
    trail = looplab_logs(tool, served, "--request-id", request_id)
    rows = [record for record in trail if record["component"] == "prediction-log"]
    assert [(row["row"], row["event_time"][:13], row["model_version"]) for row in rows] == \
        [(0, week[0][data["timestamp"]][:13], "1"), (1, later[data["timestamp"]][:13], "1")], rows
    scored, pending = (record for record in trail if record["component"] == "monitoring")
    assert (scored["window_start"], scored["window_end"], scored["status"]) == ("2011-01-10T00:00:00", "2011-01-17T00:00:00", "scored"), scored
    assert scored["predictions"] == len(week) and scored["mae"] > 0 and isinstance(scored["drift"], bool), scored
    assert scored["message"].startswith(f"window 2011-01-10 00:00 – 2011-01-17 00:00 scored (1 of this request's rows): "
                                        f"MAE {scored['mae']:.4g}"), scored
    assert scored["request_rows"] == pending["request_rows"] == 1
    assert pending["window_start"] == "2011-01-17T00:00:00" and pending["status"] == "estimated", pending
    assert pending["message"].startswith("window 2011-01-17 00:00 – 2011-01-24 00:00 not scored yet (labels due 2011-01-26 00:00; 1 of this request's rows)")

    # the same trail for people
    shown = subprocess.run([tool("looplab"), "logs", "--request-id", request_id], cwd=project, env=served["env"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "rows): MAE" in shown.stdout and "not scored yet" in shown.stdout, shown.stdout + shown.stderr
