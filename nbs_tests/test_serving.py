"""The serving layer: the model holder, the prediction API (in process and as `looplab serve`), hot reload under load, the cache, and a schemathesis run against the OpenAPI schema."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests
from fastapi.testclient import TestClient

from conftest import free_port, project_with_models, stop_process

MODEL = "bike-demand"
PREDICT = f"/v1/models/{MODEL}/predict"


@pytest.fixture(scope="module")
def project(root, tmp_path_factory, tool, quiet_env):
    "A project copy with the test data, the champion (version 1) and a second, linear version (2) that is not champion."
    project = project_with_models(root, tmp_path_factory.mktemp("serving") / "project", tool, quiet_env, second_version=True)
    from looplab import registry

    client = registry.registry_client(f"sqlite:///{project}/mlflow.db")
    if registry.alias_version(MODEL, "champion", client) != "1":
        registry.promote(MODEL, "1", client)  # the linear version passed its gate: start from version 1 anyway
    return project


@pytest.fixture(scope="module")
def registry_client(project):
    from looplab import registry

    return registry.registry_client(f"sqlite:///{project}/mlflow.db")


@pytest.fixture(scope="module")
def data_params(project):
    from looplab.core import load_config

    return load_config("parameters", env="test", root=project)["data"]


@pytest.fixture(scope="module")
def inputs(project, registry_client):
    "Model input rows without missing values (JSON has no NaN), as the feature store holds them."
    from looplab.deployment import read_signature

    columns = [column["name"] for column in read_signature(registry_client, MODEL, "1")]
    features = pd.read_parquet(project / "data" / "04_feature" / "feast" / "features.parquet")
    return features[columns].dropna().tail(40).reset_index(drop=True)


def settings_for(project: Path, tmp_path: Path, **changes) -> dict:
    from looplab.serving import serving_settings

    settings = serving_settings("test", project)
    settings["prediction_log"] = {**settings["prediction_log"], "path": str(tmp_path / "predictions")}
    return {**settings, **changes}


def make_app(project, tmp_path, data_params, holder=None, **changes):
    from looplab.deployment import ModelHolder
    from looplab.serving import create_app

    settings = settings_for(project, tmp_path, **changes)
    if holder is None:
        holder = ModelHolder(MODEL, "champion", cache_dir=settings["cache_dir"], poll_interval=0.1,
                             tracking=f"sqlite:///{project}/mlflow.db")
    return create_app(settings, holder=holder, data_params=data_params, root=project), settings


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def test_bad_input_is_422_naming_the_field(project, tmp_path, data_params, inputs):
    app, _ = make_app(project, tmp_path, data_params, max_records=50)
    good = records(inputs.head(1))[0]
    cases = [
        ({"records": [{**good, "hr": "noon"}]}, ["body", "records", 0, "hr"]),           # wrong type
        ({"records": [{**good, "hr": 3.5}]}, ["body", "records", 0, "hr"]),              # a float for an integer
        ({"records": [{k: v for k, v in good.items() if k != "temp"}]}, ["body", "records", 0, "temp"]),  # missing
        ({"records": [{**good, "colour": "red"}]}, ["body", "records", 0, "colour"]),    # unknown field
        ({"records": [good, {**good, "temp": None}]}, ["body", "records", 1, "temp"]),   # null
        ({"records": []}, ["body", "records"]),                                          # empty
        ({"records": [good] * 51}, ["body", "records"]),                                 # too many
        ({"rows": [good]}, ["body", "rows"]),                                            # unknown top-level field
        ({"records": [{"region": "atlantis"}]}, ["body", "records", 0, "region"]),      # unknown entity
    ]
    with TestClient(app) as client:
        for body, location in cases:
            response = client.post(PREDICT, json=body)
            assert response.status_code == 422, (body, response.text)
            assert location in [problem["loc"] for problem in response.json()["detail"]], response.json()
        for text in (json.dumps({"records": [good]}).replace(str(good["temp"]), "NaN", 1),
                     json.dumps({"records": [{**good, "temp": 1e999}]}),                 # Infinity
                     "{not json"):
            response = client.post(PREDICT, content=text, headers={"content-type": "application/json"})
            assert response.status_code == 422, (text, response.text)
            assert "Traceback" not in response.text
        missing = client.post("/v1/models/no-such-model/predict", json={"records": [good]})
        assert missing.status_code == 404 and "no-such-model" in missing.json()["detail"]


def test_predictions_equal_the_registered_model(project, tmp_path, data_params, inputs, registry_client):
    from looplab import registry
    from looplab.features import online_features

    model = registry.load_model(MODEL, "1", registry_client)
    app, _ = make_app(project, tmp_path, data_params)
    with TestClient(app) as client:
        response = client.post(PREDICT, json={"records": records(inputs)})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["model_name"], answer["model_version"]) == (MODEL, "1") and answer["request_id"]
        assert answer["predictions"] == pytest.approx(list(model.predict(inputs)), rel=1e-9)
        # one record's features from Feast's online store, by entity key, mixed with a full record
        by_entity = client.post(PREDICT, json={"records": [{"region": "dc"}, records(inputs.head(1))[0]]})
        assert by_entity.status_code == 200, by_entity.text
        online = online_features(["dc"], data_params, root=project)[list(inputs.columns)]
        expected = [float(model.predict(online)[0]), float(model.predict(inputs.head(1))[0])]
        assert by_entity.json()["predictions"] == pytest.approx(expected, rel=1e-9)
        # an optional input (the signature's required: false, like a lag missing at the start of the data) takes null: NaN
        gap = client.post(PREDICT, json={"records": [{**records(inputs.head(1))[0], "bikers_lag_24h": None}]})
        assert gap.status_code == 200, gap.text
        assert gap.json()["predictions"] == pytest.approx([float(model.predict(inputs.head(1).assign(bikers_lag_24h=float("nan")))[0])], rel=1e-9)
        docs = client.get("/docs")
        assert docs.status_code == 200
        schema = client.get("/openapi.json").json()
        properties = schema["components"]["schemas"]["FeatureRecord"]["properties"]
        assert set(properties) == set(inputs.columns) | {"region", "timestamp"}  # the model inputs and the optional identifying fields
        assert set(schema["components"]["schemas"]["FeatureRecord"]["required"]) == set(inputs.columns)
        assert properties["timestamp"]["format"] == "date-time"


def test_the_compiled_predictor_answers_exactly_what_the_model_says(project, tmp_path, data_params, inputs, registry_client):
    "The gradient-boosting champion compiled at load (looplab.inference): records and columns, small and large, NaN lags: equal bits."
    from looplab import registry
    from looplab.deployment import ModelHolder
    from looplab.inference import compile_model

    model = registry.load_model(MODEL, "1", registry_client)
    holder = ModelHolder(MODEL, "champion", poll_interval=0.1, tracking=f"sqlite:///{project}/mlflow.db", prepare=compile_model)
    app, _ = make_app(project, tmp_path, data_params, holder=holder)
    large = pd.concat([inputs] * (5000 // len(inputs) + 1), ignore_index=True).head(5000)  # above large_batch_rows: two threads
    large.loc[::7, "bikers_lag_24h"] = float("nan")
    with TestClient(app) as client:
        assert client.get("/ready").json()["predictor"].startswith("CompiledModel(")
        first = client.post(PREDICT, json={"records": records(inputs)})  # the first batch: also predicted by the model, compared
        assert first.status_code == 200 and first.json()["predictions"] == list(model.predict(inputs))
        assert dict(app.state.batcher._checked) == {holder.current.compiled: True}
        table = {name: [None if pd.isna(value) else value for value in large[name].tolist()] for name in large.columns}
        by_column = client.post(PREDICT, json={"columns": table})
        assert by_column.status_code == 200, by_column.text[:500]
        assert by_column.json()["predictions"] == list(model.predict(large))  # exactly, not approximately
        table["hr"][3] = "noon"
        wrong = client.post(PREDICT, json={"columns": table})
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "columns", "hr", 3], wrong.text[:500]
        short = client.post(PREDICT, json={"columns": {**table, "hr": table["hr"][:10]}})
        assert short.status_code == 422 and "differ in length" in short.json()["detail"][0]["msg"]


def test_identifying_fields_are_validated_logged_and_kept_from_the_model(project, tmp_path, data_params, inputs, registry_client):
    from looplab import registry
    from looplab.prediction_log import LOG_COLUMNS, read_prediction_log

    model = registry.load_model(MODEL, "1", registry_client)
    app, settings = make_app(project, tmp_path, data_params)
    good = records(inputs.head(2))
    identified = [{**good[0], "region": "dc", "timestamp": "2011-03-15T08:00:00"},
                  {**good[1], "timestamp": "2011-03-15T14:00:00+00:00"}]  # zone-aware: converted into the data's zone
    with TestClient(app) as client:
        response = client.post(PREDICT, json={"records": identified})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == pytest.approx(list(model.predict(inputs.head(2))), rel=1e-9)
        for bad, field in (({**good[0], "timestamp": "tomorrow"}, "timestamp"), ({**good[0], "timestamp": 1300000000}, "timestamp"),
                           ({**good[0], "region": ""}, "region"), ({**good[0], "region": 7}, "region")):
            answer = client.post(PREDICT, json={"records": [good[1], bad]})
            assert answer.status_code == 422, answer.text
            problems = answer.json()["detail"]
            assert ["body", "records", 1, field] in [problem["loc"] for problem in problems], problems
            assert any(field in problem["msg"] for problem in problems), problems
    logged = read_prediction_log(settings["prediction_log"]["path"])
    assert list(logged.columns) == LOG_COLUMNS and len(logged) == 2
    assert list(logged["entity"]) == ["dc", None]
    assert list(logged["event_time"]) == ["2011-03-15T08:00:00", "2011-03-15T10:00:00"]
    assert all("region" not in inputs and "timestamp" not in inputs for inputs in logged["inputs"])
    assert (logged["latency_ms"] > 0).all() and logged["latency_ms"].nunique() == 1  # one request, one server-side time


def test_every_200_is_logged_after_shutdown(project, tmp_path, data_params, inputs):
    from looplab.prediction_log import read_prediction_log

    # flushes far apart: what reaches the disk is what the shutdown flush writes
    log_settings = {**settings_for(project, tmp_path)["prediction_log"], "flush_rows": 100000, "flush_seconds": 3600}
    app, settings = make_app(project, tmp_path, data_params, prediction_log=log_settings)
    good = records(inputs.head(5))
    ok = 0
    with TestClient(app) as client:
        for index in range(30):
            body = {"records": [good[index % 5]]} if index % 4 else {"records": [{**good[0], "hr": "x"}]}
            ok += client.post(PREDICT, json=body).status_code == 200
        metrics = client.get("/metrics").text
    logged = read_prediction_log(settings["prediction_log"]["path"])
    assert ok > 0 and logged["request_id"].nunique() == ok == len(logged)
    assert set(logged["model_version"]) == {"1"}
    assert re.search(r'looplab_requests_total\{method="POST",path="/v1/models/\{name\}/predict",status="422"\} 8\.0', metrics), metrics
    assert 'looplab_model_info{model_name="bike-demand",source="registry",version="1"} 1.0' in metrics


OPENTELEMETRY_CHECK = """
import json, sys
from pathlib import Path

from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from looplab.deployment import ModelHolder
from looplab.serving import create_app, serving_settings

project, folder = Path(sys.argv[1]), Path(sys.argv[2])
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # a provider configured in the worker's process, as an OpenTelemetry user would
spans = {}
for asked in (False, True):
    settings = serving_settings("test", project)
    settings["prediction_log"] = {**settings["prediction_log"], "path": str(folder / f"predictions-{asked}")}
    settings["opentelemetry"] = asked
    holder = ModelHolder("bike-demand", "champion", cache_dir=settings["cache_dir"], poll_interval=0.1,
                         tracking=f"sqlite:///{project}/mlflow.db")
    exporter.clear()
    with TestClient(create_app(settings, holder=holder, root=project)) as client:
        assert client.get("/health").status_code == 200
    spans[str(asked)] = len(exporter.get_finished_spans())
print(json.dumps(spans))
"""


def test_opentelemetry_spans_only_when_asked(project, tmp_path, quiet_env):
    # in a process of its own: a tracer provider is set once per process
    done = subprocess.run([str(Path(sys.executable)), "-c", OPENTELEMETRY_CHECK, str(project), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=quiet_env, cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    spans = json.loads(done.stdout.strip().splitlines()[-1])
    assert spans["False"] == 0 and spans["True"] > 0, spans  # off by default (serving.opentelemetry: false); FastAPI's spans when asked


def test_alias_move_under_load_swaps_without_failures(project, tmp_path, data_params, inputs, registry_client):
    from looplab import registry

    app, _ = make_app(project, tmp_path, data_params, batching={"max_batch_size": 32, "max_wait_ms": 2})
    good = records(inputs)
    results: list[tuple[int, str | None]] = []
    lock, stop = threading.Lock(), threading.Event()

    def send(client, worker: int) -> None:
        for index in range(400):  # bounded: stops by itself
            if stop.is_set():
                return
            response = client.post(PREDICT, json={"records": [good[(worker + index) % len(good)]]})
            with lock:
                results.append((response.status_code, response.json().get("model_version") if response.status_code == 200 else response.text))

    try:
        with TestClient(app) as client, ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(send, client, worker) for worker in range(6)]
            while len(results) < 30 and not all(f.done() for f in futures):
                time.sleep(0.01)
            registry.promote(MODEL, "2", registry_client)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(f.done() for f in futures):
                with lock:
                    after = [version for _, version in results[-20:]]
                if after and all(version == "2" for version in after):
                    break
                time.sleep(0.05)
            stop.set()
            for future in futures:
                future.result()
            swaps = app.state.holder.swaps
    finally:
        registry.promote(MODEL, "1", registry_client)
    failures = [result for result in results if result[0] != 200]
    assert not failures, failures[:5]
    versions = [version for _, version in results]
    assert versions[0] == "1" and versions[-1] == "2" and swaps == 2, (versions[:3], versions[-3:], swaps)


def test_unreachable_tracking_store_serves_the_cache(project, tmp_path, data_params, inputs, registry_client):
    from looplab import registry
    from looplab.deployment import ModelHolder

    settings = settings_for(project, tmp_path, cache_dir=str(tmp_path / "cache"))
    ModelHolder(MODEL, "champion", cache_dir=settings["cache_dir"], tracking=f"sqlite:///{project}/mlflow.db").refresh()  # fills the cache
    offline = ModelHolder(MODEL, "champion", cache_dir=settings["cache_dir"], poll_interval=0.2,
                          tracking=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    app, _ = make_app(project, tmp_path, data_params, holder=offline, cache_dir=settings["cache_dir"])
    with TestClient(app) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        status = ready.json()
        assert (status["source"], status["tracking_reachable"], status["version"]) == ("cache", False, "1")
        assert status["last_error"]
        response = client.post(PREDICT, json={"records": records(inputs.head(3))})
        assert response.status_code == 200, response.text
        model = registry.load_model(MODEL, "1", registry_client)
        assert response.json()["predictions"] == pytest.approx(list(model.predict(inputs.head(3))), rel=1e-9)
    empty = ModelHolder(MODEL, "champion", cache_dir=tmp_path / "nothing", tracking=f"http://127.0.0.1:{free_port()}")
    app, _ = make_app(project, tmp_path, data_params, holder=empty)
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200
        assert client.post(PREDICT, json={"records": records(inputs.head(1))}).status_code == 503


def consecutive_free_ports(count: int) -> int:
    "A port P with P … P + count - 1 all free on 127.0.0.1."
    for _ in range(50):
        start = free_port()
        sockets = []
        try:
            for port in range(start, start + count):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError("no consecutive free ports")


@pytest.fixture(scope="module")
def server(project, tool, quiet_env, tmp_path_factory):
    "`looplab serve --workers 2` on two free ports; (first port, log file)."
    port = consecutive_free_ports(2)
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = log_path.open("w")
    process = subprocess.Popen([tool("looplab"), "serve", "--workers", "2", "--port", str(port), "--env", "test"],
                               cwd=project, env=quiet_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        for worker_port in (port, port + 1):
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    if requests.get(f"http://127.0.0.1:{worker_port}/ready", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "looplab serve was not ready within 120 s\n" + log_path.read_text()[-3000:]
                time.sleep(0.2)
        yield port, log_path
    finally:
        stop_process(process)
        log.close()


def test_looplab_serve_runs_two_workers(server, inputs):
    port, log_path = server
    for worker_port in (port, port + 1):
        ready = requests.get(f"http://127.0.0.1:{worker_port}/ready", timeout=10).json()
        assert ready["ready"] and ready["version"] and ready["model_name"] == MODEL
        response = requests.post(f"http://127.0.0.1:{worker_port}{PREDICT}", json={"records": records(inputs.head(2))}, timeout=30)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 2
    assert f"http://127.0.0.1:{port + 1}" in log_path.read_text()


def test_schemathesis_finds_no_server_error(server, tool, quiet_env, tmp_path):
    port, _ = server
    base = f"http://127.0.0.1:{port}"

    def predict_requests() -> dict[str, float]:
        text = requests.get(f"{base}/metrics", timeout=10).text
        found = re.findall(r'looplab_requests_total\{method="([A-Z]+)",path="([^"]*)",status="(\d+)"\} ([0-9.e+]+)', text)
        counts: dict[str, float] = {}
        for _, _, status, value in found:
            counts[status] = counts.get(status, 0) + float(value)
        return counts

    before = predict_requests()
    result = subprocess.run(
        [tool("schemathesis"), "run", f"{base}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "400",
         "--seed", "1", "--workers", "1", "--no-color"],
        cwd=tmp_path, env=quiet_env, capture_output=True, text=True, timeout=300,
    )
    after = predict_requests()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    answered = {status: after.get(status, 0) - before.get(status, 0) for status in after}
    assert sum(answered.values()) >= 500, (answered, result.stdout[-2000:])
    assert not any(status.startswith("5") and count for status, count in answered.items()), answered
