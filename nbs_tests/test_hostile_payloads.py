"""Hostile request bodies against a real serving worker, directly and through the nginx gateway.

Every one gets a 4xx whose body is JSON with a `detail` — never a 500, never an HTML or text page —
and the worker keeps answering good requests. nginx's own refusals (a request line it cannot read,
headers too large, a method it refuses) are JSON of the same shape.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest
import requests

from looplab.core import load_config
from looplab.versioning import load_version

from conftest import free_port, project_with_models, stop_process, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/nginx"), reason="nginx is missing: run make system-packages")

PREDICT = "/v1/models/bike-demand/predict"
DEPTH = 10_000
KEY = "hostile-test-key-0123456789"  # the gateway checks it; workers ignore it


@pytest.fixture(scope="module")
def served(root, tmp_path_factory, tool, quiet_env):
    "One serving worker and the gateway in front of it, on free loopback ports; the champion loaded."
    project = project_with_models(root, tmp_path_factory.mktemp("hostile") / "project", tool, quiet_env)
    serving_port, gateway_port = free_port(), free_port()
    while gateway_port == serving_port:
        gateway_port = free_port()
    (project / "conf" / "local" / "serving.yml").write_text(f"serving:\n  port: {serving_port}\n  workers: 1\n")
    run_dir = tempfile.mkdtemp(prefix="looplab-gateway-")
    os.chmod(run_dir, 0o755)  # nginx runs as an unprivileged user when started by root
    (project / "conf" / "local" / "gateway.yml").write_text(
        f"gateway:\n  listen: 127.0.0.1:{gateway_port}\n  run_dir: {run_dir}\n  access_log_buffer: null\n  api_keys: [{KEY}]\n")
    logs = tmp_path_factory.mktemp("hostile-logs")
    env = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}
    processes = []
    try:
        for name, command in (("serve", [tool("looplab"), "serve", "--workers", "1"]), ("gateway", [tool("looplab"), "gateway"])):
            log = (logs / f"{name}.log").open("w")
            processes.append(subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT))
        served = {"worker": f"http://127.0.0.1:{serving_port}", "gateway": f"http://127.0.0.1:{gateway_port}",
                  "record": a_record(project), "run_dir": run_dir, "logs": logs}
        for url in (served["worker"], served["gateway"]):
            wait_until(lambda url=url: good_answer(url, served["record"]), 120, f"the champion answering at {url}")
        yield served
    finally:
        for process in processes:
            stop_process(process)
        shutil.rmtree(run_dir, ignore_errors=True)


def a_record(project) -> dict:
    params = load_config(env="test", root=project)
    evaluation = load_version(project / "data" / "05_model_input" / "evaluation_set.parquet")
    row = evaluation[params["training"]["features"]].dropna().iloc[0]
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}


def good_answer(url: str, record: dict) -> bool:
    try:
        return requests.post(url + PREDICT, json={"records": [record]}, timeout=10, headers={"X-API-Key": KEY}).status_code == 200
    except requests.ConnectionError:
        return False


def with_field(record: dict, text: str) -> bytes:
    "The record as a body, with `text` (raw JSON: a key and its value) added as one more field."
    return ('{"records": [' + json.dumps(record)[:-1] + ", " + text + "}]}").encode()


def corpus(record: dict) -> list[tuple[str, bytes, dict]]:
    "(name, body, headers) of every hostile request; the headers say JSON unless the case is about them."
    first = next(iter(record))
    columns = {name: [value] * 3 for name, value in record.items()}
    json_type = {"Content-Type": "application/json"}
    cases = [
        ("lists nested 10^4 deep", b'{"records": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", json_type),
        ("objects nested 10^4 deep", b'{"records": [' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"]}", json_type),
        ("a bare list nested 10^4 deep", b"[" * DEPTH + b"]" * DEPTH, json_type),
        ("a value nested 10^4 deep", with_field({k: v for k, v in record.items() if k != first}, f'"{first}": ' + "[" * DEPTH + "]" * DEPTH), json_type),
        ("1e400", with_field({k: v for k, v in record.items() if k != first}, f'"{first}": 1e400'), json_type),
        ("NaN", with_field({k: v for k, v in record.items() if k != first}, f'"{first}": NaN'), json_type),
        ("Infinity", with_field({k: v for k, v in record.items() if k != first}, f'"{first}": Infinity'), json_type),
        ("-Infinity", with_field({k: v for k, v in record.items() if k != first}, f'"{first}": -Infinity'), json_type),
        ("an integer of 5,000 digits", with_field({k: v for k, v in record.items() if k != first}, f'"{first}": 1' + "0" * 5000), json_type),
        ("a string for a number", json.dumps({"records": [{**record, first: "noon"}]}).encode(), json_type),
        ("a list for a number", json.dumps({"records": [{**record, first: [1, 2]}]}).encode(), json_type),
        ("records as a string", b'{"records": "all of them"}', json_type),
        ("records as an object", json.dumps({"records": record}).encode(), json_type),
        ("a list body", json.dumps([record]).encode(), json_type),
        ("a unicode key", with_field(record, '"t\u00e9mp\u00e9rature \u2603": 1'), json_type),
        ("an escaped unicode key", with_field(record, '"\\u00e9\\u2603": 1'), json_type),
        ("a lone surrogate key", with_field(record, '"\\ud800": 1'), json_type),
        ("invalid UTF-8", b'{"records": [{"\xff\xfe": 1}]}', json_type),
        ("truncated JSON", json.dumps({"records": [record]}).encode()[:-7], json_type),
        ("an empty body", b"", json_type),
        ("null", b"null", json_type),
        ("no records", b'{"records": []}', json_type),
        ("gzip", gzip.compress(json.dumps({"records": [record]}).encode()), {**json_type, "Content-Encoding": "gzip"}),
        ("text/plain", json.dumps({"records": [record]}).encode(), {"Content-Type": "text/plain"}),
        ("a form", json.dumps({"records": [record]}).encode(), {"Content-Type": "application/x-www-form-urlencoded"}),
        ("multipart", b"--x\r\n\r\n{}\r\n--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("10^5 rows", json.dumps({"records": [record] * 100_000}).encode(), json_type),
        ("10^5 rows column-wise", json.dumps({"columns": {name: values * 33_334 for name, values in columns.items()}}).encode(), json_type),
        ("columns of unequal length", json.dumps({"columns": {**columns, first: columns[first][:2]}}).encode(), json_type),
        ("a column that is not a list", json.dumps({"columns": {**columns, first: 8}}).encode(), json_type),
        ("both records and columns", json.dumps({"records": [record], "columns": columns}).encode(), json_type),
    ]
    return cases


@pytest.mark.parametrize("through", ["worker", "gateway"])
def test_every_hostile_body_gets_a_json_4xx_and_the_worker_stays_up(served, through):
    url = served[through] + PREDICT
    answers = {}
    with requests.Session() as session:
        session.headers["X-API-Key"] = KEY
        for name, body, headers in corpus(served["record"]):
            response = session.post(url, data=body, headers=headers, timeout=60)
            answers[name] = response.status_code
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
            assert response.headers["content-type"].startswith("application/json"), (name, response.headers, response.text[:300])
            assert response.json()["detail"], (name, response.text[:300])
            good = session.post(url, json={"records": [served["record"]]}, timeout=30)
            assert good.status_code == 200, (name, good.status_code, good.text[:300])
    assert answers["lists nested 10^4 deep"] == answers["objects nested 10^4 deep"] == 422
    assert answers["gzip"] == answers["text/plain"] == 415
    # the whole 10^5 rows (~26 MB) is over the gateway's body limit; directly, the worker names the limit of rows
    assert answers["10^5 rows"] == (413 if through == "gateway" else 422)
    metrics = requests.get(served["worker"] + "/metrics", timeout=10).text
    assert 'path="/v1/models/{name}/predict",status="422"}' in metrics
    assert not [line for line in metrics.splitlines() if line.startswith("looplab_requests_total") and 'status="5' in line], metrics


@pytest.mark.parametrize("through", ["worker", "gateway"])
def test_values_the_data_layer_refuses_are_refused_naming_the_rule(served, through):
    "Well-typed but impossible values (an hour of 99, an unknown weather, a negative normalised temperature): 422, field and rule named."
    record = served["record"]
    odd = {"hr": 99, "weathersit": "bogus", "temp": -50.0}
    assert set(odd) <= set(record), sorted(record)  # the demo's inputs
    for field, value in odd.items():
        response = requests.post(served[through] + PREDICT, json={"records": [record, {**record, field: value}]}, timeout=30,
                                 headers={"X-API-Key": KEY})
        assert response.status_code == 422, (field, response.status_code, response.text[:300])
        detail = response.json()["detail"]
        assert detail[0]["loc"] == ["body", "records", 1, field] and detail[0]["type"] == "out_of_range", detail
        assert "data.validation.schema.columns." + field in detail[0]["msg"], detail
    metrics = requests.get(served["worker"] + "/metrics", timeout=10).text
    assert 'looplab_out_of_range_values_total{action="rejected",column="weathersit"}' in metrics
    assert good_answer(served[through], record)


def raw_request(url: str, request: bytes) -> tuple[int, dict, bytes]:
    "Send bytes as they are (no client library would send them) and read the whole answer."
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_what_nginx_refuses_itself_is_json_of_the_same_shape(served):
    cases = {
        "a request line that is not HTTP": b"\x16\x03\x01 nonsense\r\n\r\n",
        "headers too large": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n",
        "a URI too long": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "TRACE": b"TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a broken chunked body": f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n".encode(),
        "an internal error page asked for": b"GET /_looplab/error/500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    }
    for name, request in cases.items():
        status, headers, body = raw_request(served["gateway"], request)
        assert 400 <= status < 500, (name, status, body[:300])
        assert headers["content-type"] == "application/json", (name, headers, body[:300])
        answer = json.loads(body)
        assert answer["detail"] and answer["status"] == status, (name, answer)
    assert good_answer(served["gateway"], served["record"])
