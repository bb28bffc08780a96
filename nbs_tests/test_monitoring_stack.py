"""The monitoring stack (deploy/monitoring) with the real tools from Debian: promtool checks the
Prometheus config and rules and runs the rules' unit tests, amtool checks Alertmanager's config and
routing, the Grafana dashboards parse and ask only for metrics that exist; end to end, Prometheus
scrapes a running `looplab ops serve`, evaluates the rules and Alertmanager delivers the alert to
looplab's webhook, which hands it to the retraining trigger."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import copy_project, free_port, kedro_run, stop_process

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "looplab.rules.yml"
STREAM_RULES = MONITORING / "rules" / "stream.rules.yml"  # hand-written: the stream consumer's alerts
RULE_TESTS = MONITORING / "tests" / "looplab.rules.test.yml"
PROMTOOL, AMTOOL = "/usr/bin/promtool", "/usr/bin/amtool"
PROMETHEUS, ALERTMANAGER = "/usr/bin/prometheus", "/usr/bin/prometheus-alertmanager"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}


def run(*command: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    assert Path(command[0]).is_file(), f"{command[0]} is missing: make system-packages installs prometheus and prometheus-alertmanager"
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(check, what: str, timeout: float = 60, process: subprocess.Popen | None = None):
    "Poll `check` until it returns something true; fail naming `what` after `timeout` seconds."
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode}")
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, KeyError) as error:
            last = error
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last error: {last})")


# --- rendered from conf --------------------------------------------------------------------------------
def test_rendered_files_match_conf():
    from looplab.ops_config import ops_settings, render_all

    assert render_all(ops_settings(root=ROOT), write=False) == [], "deploy/ is out of date with conf: run `looplab ops render`"


def test_render_check_command_fails_on_a_stale_file(tmp_path, quiet_env):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    env = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}
    looplab = [sys.executable, "-m", "looplab.cli"]
    written = subprocess.run([*looplab, "ops", "render"], env=env, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    from looplab.ops_config import ops_settings, render_all

    assert render_all(ops_settings(root=project), write=False) == []
    parameters = project / "conf" / "base" / "parameters_monitoring.yml"
    parameters.write_text(parameters.read_text().replace("p99_latency_ms: 25", "p99_latency_ms: 40"))
    stale = subprocess.run([*looplab, "ops", "render", "--check"], env=env, capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "deploy/monitoring/rules/looplab.rules.yml" in stale.stderr
    printed = subprocess.run([*looplab, "ops", "render-rules"], env=env, capture_output=True, text=True, timeout=60)
    assert "looplab:request_latency_seconds:p99_5m > 0.04" in printed.stdout


# --- promtool and amtool -------------------------------------------------------------------------------
def test_promtool_checks_config_and_rules():
    config = run(PROMTOOL, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(PROMTOOL, "check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_cluster_configs_pass_the_same_checks(tmp_path):
    "deploy/monitoring/kubernetes: the configs of the cluster's Prometheus (with the rules beside it) and Alertmanager."
    (tmp_path / "rules").mkdir()
    shutil.copy(MONITORING / "kubernetes" / "prometheus.yml", tmp_path)
    rule_files = yaml.safe_load((MONITORING / "kubernetes" / "prometheus.yml").read_text())["rule_files"]
    assert "rules/stream.rules.yml" in rule_files, "the cluster's Prometheus does not load the stream consumer's alerts"
    for rule_file in rule_files:
        shutil.copy(MONITORING / rule_file, tmp_path / rule_file)
    config = run(PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    for rule_file in rule_files:  # promtool checked each rules file the config names
        assert rule_file in config.stdout + config.stderr, config.stdout + config.stderr
    manager = run(AMTOOL, "check-config", str(MONITORING / "kubernetes" / "alertmanager.yml"))
    assert manager.returncode == 0, manager.stdout + manager.stderr


def test_every_alert_fires_on_its_condition_and_stays_quiet_otherwise():
    result = run(PROMTOOL, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - fires == set(), f"no unit test shows these alerts firing: {sorted(alerts - fires)}"
    assert alerts - quiet == set(), f"no unit test shows these alerts quiet: {sorted(alerts - quiet)}"


def test_promtool_unit_tests_can_fail(tmp_path):
    "The same tests against rules whose latency threshold is wrong: promtool must report the failure."
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "looplab.rules.yml").write_text(RULES.read_text().replace("p99_5m > 0.025", "p99_5m > 0.5"))
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests")
    result = run(PROMTOOL, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name), cwd=tmp_path)
    assert result.returncode != 0 and "LooplabHighLatencyP99" in result.stdout + result.stderr


def test_amtool_checks_config_and_routes():
    result = run(AMTOOL, "check-config", "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    for labels, receiver in ((["alertname=LooplabDriftDetected", "action=retrain"], "looplab-retraining"),
                             (["alertname=LooplabModelStale", "action=retrain"], "looplab-retraining"),
                             (["alertname=LooplabHighErrorRate", "severity=page"], "operators")):
        routed = run(AMTOOL, "config", "routes", "test", "--config.file=alertmanager.yml", *labels)
        assert routed.returncode == 0 and routed.stdout.strip() == receiver, f"{labels} → {routed.stdout.strip()!r}, expected {receiver}"
    retrain = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
               if rule.get("labels", {}).get("action") == "retrain"}
    assert retrain == {"LooplabDriftDetected", "LooplabModelDegraded", "LooplabModelStale"}


# --- metric names: dashboards and rules ask only for what exists --------------------------------------------
def metric_names(expression: str) -> set[str]:
    "Metric names a PromQL expression reads (label matchers, groupings, ranges and functions left out)."
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        word = match.group(0)
        if following != "(" and word.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", word):
            names.add(word)
    return names


def exposed(families) -> set[str]:
    names = set()
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


class UnreachableBroker:
    "A stream source whose Redis never answers: the collector still names every family it exports."
    name, stream, group = "events", "looplab:rows", "looplab"

    def lag(self):
        raise ConnectionError("no Redis here")


def stream_families():
    from looplab.stream import StreamCollector, StreamTotals

    return list(StreamCollector(UnreachableBroker(), StreamTotals()).collect())


@pytest.fixture(scope="module")
def known_metrics(tmp_path_factory) -> set[str]:
    from looplab.ops import GatewayLog, RegistryFacts, store_metrics
    from looplab.serving import ServingMetrics

    serving = exposed(ServingMetrics().registry.collect())
    registry = RegistryFacts(None, [], refresh=1e9)
    registry.read_at = time.monotonic()  # no registry read: only the families' names are needed
    ops = exposed([*store_metrics({}), *registry.metrics(), *GatewayLog(None).metrics()])
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "record" in rule}
    return serving | ops | recorded | exposed(stream_families())


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(looplab_x_bucket{path=~"/v1/.+"}[5m])) / on(job) looplab:y:rate5m > 0.5') == \
        {"looplab_x_bucket", "looplab:y:rate5m"}
    assert metric_names("time() - looplab_t_seconds > 2592000") == {"looplab_t_seconds"}


def test_rules_read_only_existing_metrics(known_metrics):
    assert {"looplab_requests_total", "looplab_monitoring_window_mae", "looplab_gateway_requests_total"} <= known_metrics
    for group in yaml.safe_load(RULES.read_text())["groups"] + yaml.safe_load(STREAM_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known_metrics
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {sorted(unknown)}"


def test_dashboards_parse_and_read_only_existing_metrics(known_metrics):
    provisioned = [source for path in (MONITORING / "grafana" / "provisioning" / "datasources").glob("*.yml")
                   for source in yaml.safe_load(path.read_text())["datasources"]]
    uids = {source["uid"] for source in provisioned}
    loki = {source["uid"] for source in provisioned if source["type"] == "loki"}  # LogQL panels: checked in notebooks/48_logs.ipynb
    provider = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" / "looplab.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    dashboards = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
    assert {path.stem for path in dashboards} == {"serving", "model"}
    seen = set()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in seen and dashboard["panels"]
        seen.add(dashboard["uid"])
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{path.name}: panel {panel['title']!r} uses an unprovisioned datasource"
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
            if panel["datasource"]["uid"] in loki:
                continue
            for target in panel["targets"]:
                unknown = metric_names(target["expr"]) - known_metrics
                assert not unknown, f"{path.name}: panel {panel['title']!r} reads unknown metrics {sorted(unknown)}"
    text = " ".join(t["expr"] for path in dashboards for p in json.loads(path.read_text())["panels"] for t in p["targets"]
                    if p["datasource"]["uid"] not in loki)
    for needed in ("looplab_requests_total", "looplab:request_errors:ratio_rate5m", "looplab:request_latency_seconds:p99_5m",
                   "looplab_batch_rows", "looplab_monitoring_window_mae", "looplab_monitoring_baseline_mae",
                   "looplab_monitoring_drift_p_value", "looplab_monitoring_champion_version"):
        assert needed in text, f"no dashboard shows {needed}"
    # the stream consumer's gauges (lag, pending entries, broker up), named as its collector exports them
    gauges = {family.name for family in stream_families() if family.type == "gauge"}
    assert len(gauges) >= 2
    shown = {name for path in dashboards for p in json.loads(path.read_text())["panels"] for t in p["targets"]
             if p["datasource"]["uid"] not in loki for name in metric_names(t["expr"])}
    assert gauges <= shown, f"no dashboard shows the stream consumer's {sorted(gauges - shown)}"


def test_a_renamed_stream_metric_is_caught(known_metrics):
    "The dashboard check above can fail: a lag panel asking for a name the consumer does not export is unknown."
    [lag] = [family.name for family in stream_families() if family.type == "gauge" and "lag" in family.name]
    model = json.loads((MONITORING / "grafana" / "dashboards" / "model.json").read_text())
    expressions = [t["expr"] for p in model["panels"] for t in p["targets"] if lag in metric_names(t["expr"])]
    assert expressions, f"no panel of the model dashboard shows the stream consumer's lag ({lag})"
    assert not metric_names(expressions[0]) - known_metrics
    renamed = lag.rsplit("_", 1)[0]
    assert metric_names(expressions[0].replace(lag, renamed)) - known_metrics == {renamed}


# --- end to end: Prometheus scrapes looplab, Alertmanager calls the webhook ---------------------------------
@pytest.fixture(scope="module")
def ops_server(tmp_path_factory, quiet_env, tool):
    """`looplab ops serve --env test` on a project copy with validated data and no model yet, whose
    monitoring store shows drift in its latest window."""
    project = copy_project(ROOT, tmp_path_factory.mktemp("ops") / "project")
    (project / "conf" / "local").mkdir(exist_ok=True)
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")  # the retraining trigger reads the validated data
    store = project / "data" / "08_reporting" / "monitoring"
    store.mkdir(parents=True)
    pd.DataFrame({"window_start": pd.to_datetime(["2011-03-01", "2011-03-08"]), "window_end": pd.to_datetime(["2011-03-08", "2011-03-15"]),
                  "model_name": "bike-demand", "model_version": ["1", "1"], "predictions": [168, 168], "labelled": [168, 168],
                  "mae": [31.5, 47.25], "baseline_mae": [52.0, 63.0], "evaluation_mae": [30.0, 30.0], "degradation": [0.05, 0.575],
                  "drift": [False, True], "drift_features": [0, 3]}).to_parquet(store / "windows.parquet")
    pd.DataFrame({"window_start": pd.to_datetime(["2011-03-08"] * 2), "window_end": pd.to_datetime(["2011-03-15"] * 2),
                  "feature": ["temp", "hum"], "test": "ks", "p_value": [0.0001, 0.3], "distance": [0.4, 0.1], "drift": [True, False],
                  "model_version": "1"}).to_parquet(store / "drift.parquet")
    # the gateway's run folder outside pytest's private tmp, so nginx's unprivileged workers can enter it
    gateway_dir = Path(tempfile.mkdtemp(prefix="looplab-ops-gateway-"))
    gateway_dir.chmod(0o755)
    (project / "data" / "06_models").mkdir(parents=True, exist_ok=True)
    (project / "data" / "06_models" / "gateway").symlink_to(gateway_dir)
    log = gateway_dir / "logs" / "access.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"status": status, "request_time": 0.004, "variant": "champion", "upstream_status": str(status)}) + "\n"
                           for status in (200, 200, 200, 429)))
    port = free_port()
    output = open(project / "ops.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "looplab.cli", "ops", "serve", "--port", str(port), "--env", "test"], cwd=project,
                               env={**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: get_json(f"http://127.0.0.1:{port}/health")["status"] == "ok", "looplab ops serve", process=process)
        yield {"project": project, "port": port, "url": f"http://127.0.0.1:{port}", "store": store, "gateway_dir": gateway_dir}
    finally:
        stop_process(process)
        output.close()
        shutil.rmtree(gateway_dir, ignore_errors=True)


def test_webhook_hands_the_notification_to_handle_alert(ops_server):
    "A resolved notification goes through the real trigger, which records a decision that the exporter then shows."
    pytest.importorskip("looplab.retraining")
    from looplab import retraining

    if not hasattr(retraining, "handle_alert"):
        pytest.skip("looplab.retraining.handle_alert does not exist yet")
    payload = {"version": "4", "groupKey": "{}:{alertname=\"LooplabModelStale\"}", "status": "resolved", "receiver": "looplab-retraining",
               "groupLabels": {"alertname": "LooplabModelStale"}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
               "alerts": [{"status": "resolved", "labels": {"alertname": "LooplabModelStale", "action": "retrain"},
                           "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-01T01:00:00Z", "fingerprint": "f0"}]}
    request = urllib.request.Request(ops_server["url"] + "/v1/alerts", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
    handled = wait_for(lambda: [h for h in get_json(ops_server["url"] + "/v1/alerts")["handled"] if "LooplabModelStale" in h["alertnames"]],
                       "the webhook's result")
    assert handled[0]["error"] is None, handled[0]["error"]
    decision = handled[0]["decision"]
    assert decision["source"] == "alert" and decision["fired"] is False
    lines = [json.loads(line) for line in (ops_server["store"] / "decisions.jsonl").read_text().splitlines()]
    assert any(line.get("source") == "alert" for line in lines)
    metrics = urllib.request.urlopen(ops_server["url"] + "/metrics", timeout=5).read().decode()
    assert re.search(r'looplab_monitoring_retraining_decisions_total\{fired="false",source="alert"\} [1-9]', metrics), metrics[:2000]
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(urllib.request.Request(ops_server["url"] + "/v1/alerts", data=b'{"alerts": [{"status": "firing"}]}',
                                                      method="POST", headers={"Content-Type": "application/json"}), timeout=5)
    assert bad.value.code == 422 and "alerts[0].labels.alertname" in bad.value.read().decode()


def test_gateway_numbers_come_from_the_real_nginx_access_log(ops_server):
    "nginx (the real gateway) in front of the ops server itself: its access log lines become looplab_gateway_* counts."
    from looplab.gateway import Gateway, load_gateway_settings

    project = ops_server["project"]
    settings = load_gateway_settings(env="test", root=project)
    port = free_port()
    settings.update(listen=f"127.0.0.1:{port}", workers=[f"127.0.0.1:{ops_server['port']}"], api_keys=[], auth="none")
    run_dir = ops_server["gateway_dir"]  # = the project's gateway.run_dir (a link to it), where the ops server reads the log
    assert (project / settings.get("run_dir", "data/06_models/gateway")).resolve() == run_dir.resolve()

    def count(status: str) -> float:
        text = urllib.request.urlopen(ops_server["url"] + "/metrics", timeout=5).read().decode()
        found = re.search(r'looplab_gateway_requests_total\{status="' + status + r'",variant="champion"\} ([0-9.]+)', text)
        return float(found.group(1)) if found else 0.0

    before_ok, before_missing = count("200"), count("404")
    with Gateway(settings, run_dir.resolve()) as gateway:
        for path in ("/health", "/health", "/health", "/no-such-route"):
            try:
                urllib.request.urlopen(gateway.url + path, timeout=5).read()
            except urllib.error.HTTPError as error:
                assert error.code == 404
        # nginx writes its access log in blocks, at least every second
        wait_for(lambda: count("200") - before_ok == 3 and count("404") - before_missing == 1,
                 "the gateway's requests in looplab_gateway_requests_total", timeout=20)
    text = urllib.request.urlopen(ops_server["url"] + "/metrics", timeout=5).read().decode()
    assert 'looplab_gateway_request_duration_seconds_bucket{le="+Inf",variant="champion"}' in text


def test_prometheus_scrapes_looplab_and_alertmanager_calls_the_webhook(ops_server, tmp_path):
    from looplab.ops_config import ops_settings, render_alertmanager_config

    prometheus_port, alertmanager_port = free_port(), free_port()
    settings = ops_settings(root=ops_server["project"])
    settings["ops"] = {**settings["ops"], "port": ops_server["port"]}
    (tmp_path / "alertmanager.yml").write_text(render_alertmanager_config(settings, group_wait="1s"))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": "looplab-ops", "static_configs": [{"targets": [f"127.0.0.1:{ops_server['port']}"]}]}],
    }))
    assert run(PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")).returncode == 0
    logs = open(tmp_path / "servers.log", "w")
    alertmanager = subprocess.Popen([ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
                                     f"--web.listen-address=127.0.0.1:{alertmanager_port}", "--cluster.listen-address="],
                                    stdout=logs, stderr=subprocess.STDOUT)
    prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prometheus_port}"], stdout=logs, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    try:
        wait_for(lambda: any(target["health"] == "up" for target in get_json(api + "/targets")["data"]["activeTargets"]),
                 "Prometheus to scrape looplab ops", process=prometheus)

        def query(expression: str) -> list:
            return get_json(api + "/query?" + urllib.parse.urlencode({"query": expression}))["data"]["result"]

        [mae] = wait_for(lambda: query("looplab_monitoring_window_mae"), "looplab_monitoring_window_mae in Prometheus")
        assert mae["metric"]["model_version"] == "1" and float(mae["value"][1]) == 47.25
        p_values = {sample["metric"]["feature"]: float(sample["value"][1]) for sample in query("looplab_monitoring_drift_p_value")}
        assert p_values == {"temp": 0.0001, "hum": 0.3}
        [gateway] = query('looplab_gateway_requests_total{status="429"}')
        assert float(gateway["value"][1]) == 1
        firing = wait_for(lambda: {alert["labels"]["alertname"] for alert in get_json(api + "/alerts")["data"]["alerts"]
                                   if alert["state"] == "firing"} >= {"LooplabDriftDetected", "LooplabModelDegraded"} and True,
                          "the drift and degradation alerts to fire", process=prometheus)
        assert firing
        # Alertmanager groups them (group_wait 1 s) and posts to looplab's webhook
        handled = wait_for(lambda: [h for h in get_json(ops_server["url"] + "/v1/alerts")["handled"]
                                    if "LooplabDriftDetected" in h["alertnames"] or "LooplabModelDegraded" in h["alertnames"]],
                           "Alertmanager to call the webhook", timeout=60, process=alertmanager)
        assert handled[0]["status"] == "firing" and "action=\"retrain\"" in (handled[0]["group_key"] or "")
        # one notification for the model, with both reasons
        handled = wait_for(lambda: [h for h in get_json(ops_server["url"] + "/v1/alerts")["handled"]
                                    if {"LooplabDriftDetected", "LooplabModelDegraded"} <= set(h["alertnames"])],
                           "one notification with both alerts", timeout=30)
        assert len([h for h in get_json(ops_server["url"] + "/v1/alerts")["handled"] if h["status"] == "firing"]) == 1
        # the trigger decided — by the same policy as monitoring: no champion is serving yet, so no retraining
        assert handled[0]["error"] is None, handled[0]["error"]
        assert handled[0]["decision"]["source"] == "alert" and handled[0]["decision"]["fired"] is False
        received = urllib.request.urlopen(ops_server["url"] + "/metrics", timeout=5).read().decode()
        assert re.search(r'looplab_ops_alerts_received_total\{alertname="LooplabDriftDetected",status="firing"\} [1-9]', received)
        assert not re.search(r'alertname="LooplabHighErrorRate"', received), "an operators' alert reached the retraining webhook"
    finally:
        stop_process(prometheus)
        stop_process(alertmanager)
        logs.close()
