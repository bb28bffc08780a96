"""The API gateway with the real nginx in front of small stand-in workers that answer with their own name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import free_port

if not os.access("/usr/sbin/nginx", os.X_OK):
    pytest.skip("nginx is not installed (/usr/sbin/nginx; Debian package nginx-light, `make serve` installs it)",
                allow_module_level=True)

from looplab.gateway import Gateway, GatewayError, check_reachable, load_gateway_settings, render_nginx_config  # noqa: E402

KEY = "test-key-0123456789abcdef"


class Worker:
    """A stand-in serving worker on a free 127.0.0.1 port: answers {"worker": name} and records what it got."""

    def __init__(self, name: str, status: int = 200, delay: float = 0.0):
        self.name, self.status, self.delay = name, status, delay
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with worker.lock:
                    worker.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                time.sleep(worker.delay)  # a slow worker: the gateway may have given up and closed the connection
                answer = json.dumps({"worker": worker.name}).encode()
                with contextlib.suppress(OSError):
                    self.send_response(worker.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def kill(self) -> None:
        "Stop listening: new connections are refused, as after a crash."
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def workers():
    "Start stand-in workers by name; all stopped at the end."
    started: list[Worker] = []

    def start(*names: str, status: int = 200, delay: float = 0.0) -> list[Worker]:
        new = [Worker(name, status, delay) for name in names]
        started.extend(new)
        return new

    yield start
    for worker in started:
        with contextlib.suppress(OSError):
            worker.kill()


@pytest.fixture
def run_dir():
    "A run folder nginx's workers can enter even when the test runs as root (pytest's tmp_path is private)."
    folder = Path(tempfile.mkdtemp(prefix="looplab-gateway-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def base_settings(**changes) -> dict:
    settings = load_gateway_settings()
    settings.update({"listen": f"127.0.0.1:{free_port()}", "challenger_workers": [], "api_keys": [], "auth": "none",
                     "canary": {"enabled": False}, "shadow": {"enabled": False},
                     "rate_limit": {"requests_per_second": 10000, "burst": 1000}, "fail_timeout_seconds": 1,
                     # tests read the access log while nginx runs; bodies over 16k exercise nginx's temp files
                     "access_log_buffer": None, "body_buffer_size": "16k"})
    settings.update(changes)
    if settings["api_keys"]:  # keys given: the default key check, as in a real install
        settings["auth"] = "key"
    return settings


@contextlib.contextmanager
def running(settings: dict, run_dir: Path):
    gateway = Gateway(settings, run_dir)
    gateway.start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            yield gateway, client
    finally:
        gateway.stop()
    assert not gateway.running


def access_log(gateway: Gateway, name: str = "access.log") -> list[dict]:
    return [json.loads(line) for line in (gateway.run_dir / "logs" / name).read_text().splitlines()]


def test_balances_over_workers_and_logs_the_upstream(workers, run_dir):
    first, second = workers("w0", "w1")
    with running(base_settings(workers=[first.address, second.address]), run_dir) as (gateway, client):
        answers = Counter(client.get("/v1/ping").json()["worker"] for _ in range(40))
        log = access_log(gateway)
    assert answers["w0"] >= 10 and answers["w1"] >= 10, answers
    assert {entry["upstream_addr"] for entry in log} == {first.address, second.address}
    assert {entry["upstream_status"] for entry in log} == {"200"}
    assert all(entry["request_id"] and entry["status"] == 200 for entry in log)


def test_routes_around_a_dead_or_unready_worker(workers, run_dir):
    alive, doomed = workers("alive", "doomed")
    (unready,) = workers("unready", status=503)
    settings = base_settings(workers=[alive.address, doomed.address, unready.address])
    with running(settings, run_dir) as (gateway, client):
        doomed.kill()
        responses = [client.post("/v1/models/m/predict", json={"records": [{"x": i}]}) for i in range(30)]
        assert [r.status_code for r in responses] == [200] * 30
        assert {r.json()["worker"] for r in responses} == {"alive"}
        alive.kill()
        down = client.get("/v1/ping")
    assert down.status_code == 502
    assert down.headers["content-type"].startswith("application/json")
    assert down.json()["status"] == 502 and "worker" in down.json()["detail"]


def test_canary_sends_the_configured_share_to_the_challenger(workers, run_dir):
    champion, challenger = workers("champion", "challenger")
    settings = base_settings(workers=[champion.address], challenger_workers=[challenger.address],
                             canary={"enabled": True, "challenger_weight": 30})
    total = 400
    with running(settings, run_dir) as (_, client):
        responses = [client.get(f"/v1/ping?i={i}") for i in range(total)]
    answers = Counter(r.json()["worker"] for r in responses)
    assert answers["champion"] + answers["challenger"] == total
    assert all(r.headers["x-looplab-variant"] == r.json()["worker"] for r in responses)
    # binomial(400, 0.3): standard deviation 0.023; 4.5 of them leave a one-in-100000 chance of a false failure
    share, bound = answers["challenger"] / total, 4.5 * (0.3 * 0.7 / total) ** 0.5
    assert abs(share - 0.30) <= bound, (share, bound)


def test_shadow_copies_every_request_to_the_challenger_and_returns_only_the_champion(workers, run_dir):
    champion, challenger = workers("champion", "challenger")
    settings = base_settings(workers=[champion.address], challenger_workers=[challenger.address],
                             shadow={"enabled": True})
    bodies = [json.dumps({"records": [{"x": i}]}).encode() for i in range(40)]
    with running(settings, run_dir) as (gateway, client):
        responses = [client.post("/v1/models/m/predict", content=body, headers={"Content-Type": "application/json"})
                     for body in bodies]
        for _ in range(200):  # the copies travel on their own; wait (bounded) until all have arrived
            if challenger.count >= len(bodies):
                break
            time.sleep(0.05)
    assert [r.json()["worker"] for r in responses] == ["champion"] * len(bodies)
    assert {r.headers["x-looplab-variant"] for r in responses} == {"champion"}
    assert champion.count == len(bodies) and challenger.count == len(bodies)
    assert sorted(r["body"] for r in challenger.requests) == sorted(bodies)
    assert all(r["headers"].get("X-Looplab-Shadow") == "1" for r in challenger.requests)
    assert all(r["path"] == "/v1/models/m/predict" for r in challenger.requests)
    shadow_log = access_log(gateway, "shadow.log")
    assert len(shadow_log) == len(bodies) and {e["upstream_addr"] for e in shadow_log} == {challenger.address}


def test_api_keys(workers, run_dir):
    (worker,) = workers("w0")
    with running(base_settings(workers=[worker.address], api_keys=[KEY, "other-key-0123456789"]), run_dir) as (_, client):
        missing = client.get("/v1/ping")
        wrong = client.get("/v1/ping", headers={"X-API-Key": "wrong-key-0123456789abc"})
        wrong_case = client.get("/v1/ping", headers={"X-API-Key": KEY.upper()})
        right = client.get("/v1/ping", headers={"X-API-Key": KEY})
        health = client.get("/gateway/health")
    for refused in (missing, wrong, wrong_case):
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/json")
        assert refused.json() == {"detail": "missing or wrong API key (header X-API-Key)", "status": 401}
    assert right.status_code == 200 and right.json() == {"worker": "w0"}
    assert health.json() == {"status": "ok"}
    assert worker.count == 1, "refused requests must not reach a worker"
    assert "X-API-Key" not in worker.requests[0]["headers"], "the key is not passed on to the workers"


def test_metrics_stay_inside_and_docs_are_public_only_when_said(workers, run_dir):
    (worker,) = workers("w0")
    for public in (False, True):
        settings = base_settings(workers=[worker.address], api_keys=[KEY], docs_public=public)
        with running(settings, run_dir) as (_, client):
            metrics = client.get("/metrics", headers={"X-API-Key": KEY})
            assert metrics.status_code == 404 and "Prometheus scrapes" in metrics.json()["detail"], metrics.text
            for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
                answer = client.get(path)
                assert answer.status_code == (200 if public else 401), (public, path, answer.status_code)
            assert client.get("/v1/ping").status_code == 401  # everything else still needs the key
            assert client.get("/docsx").status_code == 401 and client.get("/docs/../v1/ping").status_code == 401
    assert all(request["path"] != "/metrics" for request in worker.requests), "a metrics request reached a worker"


def test_rate_limit(workers, run_dir):
    (worker,) = workers("w0")
    # one request a minute, no burst: the first passes, the next ones within the minute are refused
    settings = base_settings(workers=[worker.address], rate_limit={"requests_per_second": 1 / 60, "burst": 0})
    with running(settings, run_dir) as (_, client):
        responses = [client.get("/v1/ping") for _ in range(5)]
    assert responses[0].status_code == 200
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) >= 3
    assert refused[0].json() == {"detail": "too many requests: rate limit exceeded", "status": 429}


def test_body_size_limit_and_large_bodies_through_temp_files(workers, run_dir):
    (worker,) = workers("w0")
    with running(base_settings(workers=[worker.address], max_body_size="300k"), run_dir) as (_, client):
        too_large = client.post("/v1/models/m/predict", content=b"x" * 400_000)
        # larger than nginx's in-memory body buffer (16k): written to run_dir/temp by nginx's workers
        large = client.post("/v1/models/m/predict", content=b"y" * 200_000)
    assert too_large.status_code == 413
    assert too_large.json() == {"detail": "request body too large", "status": 413}
    assert large.status_code == 200 and worker.requests[-1]["body"] == b"y" * 200_000
    assert worker.count == 1


def test_a_slow_worker_times_out_with_504_and_the_post_is_not_resent(workers, run_dir):
    # both workers answer after 6 s; the gateway waits 1 s. Retrying a timed-out POST on the other
    # worker would run the same prediction twice (gateway.yml: no retry on timeouts).
    slow, other = workers("slow", "other", delay=6.0)
    settings = base_settings(workers=[slow.address, other.address], timeouts={"connect_seconds": 1, "read_seconds": 1})
    with running(settings, run_dir) as (gateway, client):
        started = time.monotonic()
        response = client.post("/v1/models/m/predict", json={"records": [{"x": 1}]})
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # a retry would reach the other worker at once; time for it (and the log line) to show up
        seen = slow.count + other.count
        log = access_log(gateway)
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": "a serving worker took too long to answer", "status": 504}
    assert 0.9 <= elapsed < 3.0, f"the gateway answered after {elapsed:.2f} s; its read timeout is 1 s"
    assert seen == 1, f"the POST reached the workers {seen} times: it was re-sent after the timeout"
    assert len(log) == 1 and log[0]["status"] == 504 and log[0]["upstream_status"] == "504"
    assert "," not in log[0]["upstream_addr"], "one upstream tried, no second attempt"


def test_the_default_body_limit_holds_a_request_of_max_records(workers, run_dir):
    "conf/base: gateway.max_body_size lets through serving.max_records records of the demo model (13 features) as JSON."
    from looplab.core import load_config

    max_records = load_config("serving")["serving"]["max_records"]
    features = load_config()["training"]["features"]
    assert len(features) == 13
    # the longest values of the demo data: its longest category, three-digit counts, a mean with 17 digits
    values = {"hr": 23, "weekday": 6, "workingday": 1, "holiday": 0, "season": 4, "weathersit": "heavy rain/snow",
              "temp": 0.8246, "atemp": 0.7879, "hum": 0.8848, "windspeed": 0.4627, "bikers_lag_24h": 327.0,
              "bikers_lag_168h": 325.0, "bikers_mean_same_hour_7d": 225.42857142857142}
    assert set(values) == set(features)
    body = json.dumps({"records": [values] * max_records}).encode()
    assert len(body) > 2 * 1024 * 1024, "the request is larger than the old 2m limit"
    (worker,) = workers("w0")
    # the default max_body_size (base_settings keeps it); the body goes through nginx's temp files (above 16k)
    with running(base_settings(workers=[worker.address]), run_dir) as (_, client):
        response = client.post("/v1/models/m/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert worker.count == 1 and worker.requests[0]["body"] == body


def _status_ids(pid: int) -> dict[str, list[int]]:
    "Uid, Gid and Groups of a process from /proc/<pid>/status."
    lines = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: [int(value) for value in lines[name].split()] for name in ("Uid", "Gid", "Groups")}


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # the fields after the command name, which is in parentheses: state, ppid, ...
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


@pytest.mark.skipif(os.geteuid() != 0, reason="not run as root: nginx runs as the caller and has no privilege to drop")
def test_started_as_root_every_nginx_process_runs_unprivileged(workers, run_dir):
    import pwd

    (worker,) = workers("w0")
    nobody = pwd.getpwnam("nobody")
    settings = base_settings(workers=[worker.address], worker_processes=2, user="nobody", max_body_size="1m")
    with running(settings, run_dir) as (gateway, client):
        master = int(gateway.pid_file.read_text())
        assert master == gateway.process.pid
        nginx_workers = _children(master)
        ids = {pid: _status_ids(pid) for pid in [master, *nginx_workers]}
        # a large body: written to run_dir/temp by the unprivileged workers
        answer = client.post("/v1/models/m/predict", content=b"z" * 100_000)
        config = gateway.config_path.read_text()
        for _ in range(100):  # nginx logs a request just after answering it: a bounded wait for the line
            if access_log(gateway):
                break
            time.sleep(0.05)
        log = access_log(gateway)
    assert len(nginx_workers) == 2, f"expected 2 nginx workers under the master {master}, found {nginx_workers}"
    for pid, found in ids.items():
        # real, effective, saved and filesystem ids
        assert found["Uid"] == [nobody.pw_uid] * 4, f"nginx process {pid} runs with uids {found['Uid']}"
        assert found["Gid"] == [nobody.pw_gid] * 4, f"nginx process {pid} runs with gids {found['Gid']}"
        assert set(found["Groups"]) <= {nobody.pw_gid}, f"nginx process {pid} keeps the groups {found['Groups']}"
    assert answer.status_code == 200 and worker.requests[-1]["body"] == b"z" * 100_000
    assert not any(line.strip().startswith("user ") for line in config.splitlines()), "no `user` directive for a non-root master"
    assert "the \"user\" directive" not in (run_dir / "logs" / "error.log").read_text()
    assert log and log[-1]["status"] == 200, "the caller reads nginx's access log"


def test_reload_applies_new_settings(workers, run_dir):
    (worker,) = workers("w0")
    settings = base_settings(workers=[worker.address], api_keys=[KEY])
    new_key = "new-key-0123456789abcdef"
    with running(settings, run_dir) as (gateway, client):
        assert client.get("/v1/ping", headers={"X-API-Key": KEY}).status_code == 200
        gateway.reload({**settings, "api_keys": [new_key]})

        def ping(key: str) -> int:
            # A new connection each time: on reload the old nginx workers close their idle
            # keep-alive connections, so a request on a kept connection may race that close.
            return httpx.get(f"{gateway.url}/v1/ping", headers={"X-API-Key": key}, timeout=10).status_code

        for _ in range(100):  # old nginx workers finish first; bounded wait for the new ones
            if ping(new_key) == 200:
                break
            time.sleep(0.05)
        assert ping(new_key) == 200
        assert ping(KEY) == 401
        with pytest.raises(GatewayError, match="nginx refused"):
            gateway.reload({**settings, "workers": ["no-such-host.invalid:8000"]})
        assert gateway.running and ping(new_key) == 200


def test_nginx_config_test_failure_is_a_clear_error(run_dir):
    gateway = Gateway(base_settings(workers=["no-such-host.invalid:8000"]), run_dir)
    with pytest.raises(GatewayError) as error:
        gateway.start()
    message = str(error.value)
    assert "nginx refused the gateway configuration" in message and "host not found in upstream" in message
    assert str(run_dir / "nginx.conf") in message
    assert not gateway.running


def test_port_taken_is_a_clear_error(workers, run_dir):
    (worker,) = workers("w0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GatewayError, match="Address already in use"):
            Gateway(base_settings(workers=[worker.address], listen=f"127.0.0.1:{port}"), run_dir).start()


def test_settings_errors_name_the_setting(tmp_path):
    settings = base_settings(workers=["127.0.0.1:9"])
    with pytest.raises(GatewayError, match="gateway.canary.challenger_weight"):
        render_nginx_config({**settings, "challenger_workers": ["127.0.0.1:10"],
                             "canary": {"enabled": True, "challenger_weight": 130}}, tmp_path)
    with pytest.raises(GatewayError, match="gateway.balancing"):
        render_nginx_config({**settings, "balancing": "random"}, tmp_path)
    with pytest.raises(GatewayError, match="gateway.rate_limit.requests_per_second"):
        render_nginx_config({**settings, "rate_limit": {"requests_per_second": 0}}, tmp_path)
    with pytest.raises(GatewayError, match="gateway.timeouts.read_seconds"):
        render_nginx_config({**settings, "timeouts": {"read_seconds": "soon"}}, tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the workers' user matters only when nginx starts as root")
def test_run_dir_the_workers_cannot_enter_is_refused(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(GatewayError, match="cannot enter"):
        check_reachable(private / "gateway", "nobody")
    with pytest.raises(GatewayError, match="cannot enter"):
        Gateway(base_settings(workers=["127.0.0.1:9"]), private / "gateway").start()


def test_cli_runs_the_gateway_until_terminated(run_dir, tool, quiet_env):
    import signal
    import subprocess

    port = free_port()
    # workers come from conf (serving ports); /gateway/health is answered by nginx itself
    process = subprocess.Popen([tool("looplab"), "gateway", "--run-dir", str(run_dir), "--listen", f"127.0.0.1:{port}"],
                               env=quiet_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line: list[str] = []  # the "gateway on ..." line, printed once nginx listens
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        assert first_line and first_line[0].startswith(f"gateway on http://127.0.0.1:{port}"), first_line
        health = httpx.get(f"http://127.0.0.1:{port}/gateway/health", timeout=5)
        assert health.json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, err
    assert "stopping the gateway" in err
    pid_file = run_dir / "run" / "nginx.pid"
    assert not pid_file.exists() or not _alive(int(pid_file.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
