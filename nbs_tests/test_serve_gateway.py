"""`make serve` as a user runs it: the champion on two serving workers behind the real nginx gateway.

Promote and rollback move the served version while requests flow through the gateway; none fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading

import pytest
import requests

from looplab.core import load_config
from looplab.versioning import load_version

from conftest import free_port, project_with_models, stop_process, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/nginx"), reason="nginx is missing: run make system-packages")


@pytest.fixture(scope="module")
def served(root, tmp_path_factory, tool, quiet_env):
    "Two registered versions (1 champion), two serving workers and the gateway, all on free loopback ports."
    project = project_with_models(root, tmp_path_factory.mktemp("serve") / "project", tool, quiet_env, second_version=True)
    serving_port, gateway_port = free_port(), free_port()
    while gateway_port in (serving_port, serving_port + 1):
        gateway_port = free_port()
    (project / "conf" / "local" / "serving.yml").write_text(
        f"serving:\n  port: {serving_port}\n  workers: 2\n  poll_interval_seconds: 0.5\n"
    )
    # nginx's workers run as an unprivileged user, who must be able to enter the run folder.
    run_dir = tempfile.mkdtemp(prefix="looplab-gateway-")
    os.chmod(run_dir, 0o755)
    (project / "conf" / "local" / "gateway.yml").write_text(
        f"gateway:\n  listen: 127.0.0.1:{gateway_port}\n  run_dir: {run_dir}\n"
    )
    logs = tmp_path_factory.mktemp("serve-logs")
    env = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}
    processes = []
    try:
        for name, command in (("serve", [tool("looplab"), "serve", "--workers", "2"]), ("gateway", [tool("looplab"), "gateway"])):
            log = (logs / f"{name}.log").open("w")
            processes.append(subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT))
        # secure by default: no key configured, so the gateway made one (conf/local/api_key, 0600) and printed it once
        key_file = project / "conf" / "local" / "api_key"
        wait_until(lambda: key_file.exists() and key_file.read_text().strip(), 60, "the gateway's API key")
        yield {"project": project, "url": f"http://127.0.0.1:{gateway_port}", "logs": logs, "env": env,
               "key": key_file.read_text().strip(), "key_file": key_file}
    finally:
        for process in processes:
            stop_process(process)
        shutil.rmtree(run_dir, ignore_errors=True)


def a_record(project) -> dict:
    params = load_config(env="test", root=project)
    evaluation = load_version(project / "data" / "05_model_input" / "evaluation_set.parquet")
    row = evaluation[params["training"]["features"]].iloc[0]
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}


def test_promote_and_rollback_through_the_gateway_fail_no_request(served, tool):
    url = f"{served['url']}/v1/models/bike-demand/predict"
    body = {"records": [a_record(served["project"])]}

    def answers():
        try:
            response = requests.post(url, json=body, timeout=5, headers={"X-API-Key": served["key"]})
            return response if response.status_code == 200 else None
        except requests.ConnectionError:
            return None

    first = wait_until(answers, 90, "the champion answering through the gateway")
    assert first.json()["model_version"] == "1"

    results, stop = [], threading.Event()

    def traffic():
        with requests.Session() as session:
            session.headers["X-API-Key"] = served["key"]
            while not stop.is_set() and len(results) < 20000:
                response = session.post(url, json=body, timeout=10)
                results.append((response.status_code, response.json().get("model_version")))

    senders = [threading.Thread(target=traffic) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        for command, version in ((["promote", "bike-demand", "2"], "2"), (["rollback", "bike-demand"], "1")):
            changed = subprocess.run([tool("looplab"), *command], cwd=served["project"], env=served["env"],
                                     capture_output=True, text=True, timeout=120)
            assert changed.returncode == 0, changed.stderr
            seen = len(results)

            def serving(version=version, seen=seen):
                return any(v == version for _, v in results[seen:])

            wait_until(serving, 60, f"version {version} being served")
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    statuses = {status for status, _ in results}
    assert statuses == {200}, f"failed requests during the alias moves: {statuses}"
    versions = [version for _, version in results]
    assert "2" in versions and versions[-1] == "1"


def test_the_gateway_refuses_bad_input_with_the_servings_422(served):
    response = requests.post(f"{served['url']}/v1/models/bike-demand/predict",
                             json={"records": [{"hr": "noon"}]}, timeout=10, headers={"X-API-Key": served["key"]})
    assert response.status_code == 422
    assert "hr" in response.text


def test_a_default_install_exposes_nothing_without_the_key(served):
    "No key configured: the gateway made one, printed it once, and answers nothing but its own health check without it."
    key, url = served["key"], served["url"]
    assert stat.S_IMODE(served["key_file"].stat().st_mode) == 0o600
    assert (served["logs"] / "gateway.log").read_text().count(key) == 1  # shown once, in the gateway's output
    def ready() -> bool:
        try:
            return requests.get(f"{url}/ready", headers={"X-API-Key": key}, timeout=5).status_code == 200
        except requests.ConnectionError:  # nginx not listening yet
            return False

    wait_until(ready, 120, "the champion answering through the gateway")
    for path in ("/ready", "/health", "/docs", "/openapi.json", "/v1/models/bike-demand/predict"):
        refused = requests.get(url + path, timeout=10)
        assert refused.status_code == 401 and refused.json()["status"] == 401, (path, refused.status_code, refused.text[:200])
        assert requests.get(url + path, timeout=10, headers={"X-API-Key": key + "x"}).status_code == 401, path
    assert requests.get(f"{url}/gateway/health", timeout=10).status_code == 200
    metrics = requests.get(f"{url}/metrics", timeout=10, headers={"X-API-Key": key})  # never on the public port, key or not
    assert metrics.status_code == 404 and "Prometheus" in metrics.json()["detail"], metrics.text[:300]
    docs = requests.get(f"{url}/docs", timeout=10, headers={"X-API-Key": key})
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert requests.get(f"{url}/openapi.json", timeout=10, headers={"X-API-Key": key}).json()["paths"]
