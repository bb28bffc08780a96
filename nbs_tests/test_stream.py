"""The stream source against a real redis-server: a consumer killed after reading a batch (and again after storing
one, before acknowledging it) leaves every row stored exactly once after a restart; poison messages land in the
quarantine with their stream id and never block the stream; the consumer's lag and pending entries reach
Prometheus at /metrics, and the lag alert rule passes promtool's unit tests; a second dataset without times (scikit-learn's
diabetes) goes through the stream once, redelivery included."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import copy_project, free_port, project_with_models, stop_process, wait_until

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
PROMTOOL = "/usr/bin/promtool"
ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "rules" / "stream.rules.yml"
RULE_TESTS = ROOT / "deploy" / "monitoring" / "tests" / "stream.rules.test.yml"
BATCH = 20

pytestmark = pytest.mark.skipif(not Path(REDIS).is_file(), reason="redis-server is not installed (make system-packages)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    "A redis-server on a free port of 127.0.0.1, writing nothing to disk."
    import redis

    folder, port = tmp_path_factory.mktemp("redis"), free_port()
    process = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_until(lambda: process.poll() is None and _pings(redis.Redis(port=port, socket_timeout=1)), 20, "redis-server answering", poll=0.05)
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(process, timeout=10)


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture
def project(tmp_path, redis_url, request):
    "A project copy whose `events` stream source is a fresh stream of the test's Redis."
    project = copy_project(ROOT, tmp_path / "project")
    settings = {"url": redis_url, "stream": f"rows:{request.node.name}", "batch_size": BATCH, "block_ms": 100,
                "metrics_port": None}  # a port of its own only where a test asks for one (--metrics-port)
    (project / "conf" / "test" / "parameters_stream.yml").write_text(yaml.safe_dump({"data": {"sources": {"events": settings}}}))
    return project


def source_of(project: Path):
    from looplab.core import load_config
    from looplab.stream import pick_stream_source

    return pick_stream_source(load_config("parameters", env="test", root=project)["data"], "events")


def demo_rows(project: Path, count: int) -> pd.DataFrame:
    from looplab.core import load_config
    from looplab.sources import demo_rides, with_text_times

    return with_text_times(demo_rides(load_config("parameters", env="test", root=project)["data"], project)).head(count)


def consumer(project: Path, env: dict, *options: str) -> subprocess.Popen:
    "`looplab data stream --env test` as its own process."
    command = [sys.executable, "-m", "looplab.cli", "data", "stream", "--env", "test", "--source", "events", *options]
    return subprocess.Popen(command, env={**env, "LOOPLAB_PROJECT_ROOT": str(project)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def reach(pause: Path, point: str, process: subprocess.Popen) -> list[str]:
    "Wait (bounded) until the consumer stops at `point`; the ids of its batch."
    def paused():
        assert process.poll() is None, f"the consumer exited ({process.returncode}): {process.stdout.read()}"
        return pause.is_file() and pause.read_text().splitlines()
    lines = wait_until(paused, 90, f"the consumer pausing at {point}", poll=0.05)
    assert lines[0] == point, lines
    return lines[1:]


def go_on(pause: Path) -> None:
    pause.unlink()


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=20)


def stored_table(project: Path, path: str = "data/03_primary/validated_rides.parquet") -> pd.DataFrame:
    "The latest stored version of the validated table; empty before the first."
    from looplab.ingestion import latest_version_file

    stored = latest_version_file(project / path)
    return pd.read_parquet(stored) if stored is not None else pd.DataFrame(columns=["timestamp"])


def quarantine(project: Path) -> pd.DataFrame:
    from looplab.ingestion import quarantined_rows

    return quarantined_rows(project / "data" / "03_primary" / "rides_quarantine.parquet")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(("looplab_stream_lag", "looplab_stream_pending"))}


def test_every_row_stored_once_through_two_kills_with_poison_messages(project, quiet_env):
    source = source_of(project)
    source.ensure_group()
    rows = demo_rows(project, 60)
    source.publish(rows.iloc[:25])
    not_json = source.client().xadd(source.stream, {"row": "{not json"})
    wrong = source.client().xadd(source.stream, {"row": json.dumps({**rows.iloc[25].to_dict(), "hr": "noon", "casual": -1})})
    source.publish(rows.iloc[26:])  # 61 messages: 59 rows, one poison, one of the wrong schema (row 25, never sent right)
    pause = project / "pause"

    # 1st consumer: batch 1 stored and acknowledged; batch 2 stored, killed before its acknowledgement
    first = consumer(project, quiet_env, "--pause-file", str(pause), "--pause-at", "store,ack")
    try:
        batch_1 = reach(pause, "store", first)
        go_on(pause)
        assert reach(pause, "ack", first) == batch_1
        go_on(pause)
        batch_2 = reach(pause, "store", first)
        assert not_json in batch_2 and wrong in batch_2
        go_on(pause)
        assert reach(pause, "ack", first) == batch_2
        kill(first)
    finally:
        if first.poll() is None:
            stop_process(first, timeout=5)
    pause.unlink()
    assert len(stored_table(project)) == 2 * BATCH - 2 and len(quarantine(project)) == 2
    assert source.lag()["pending"] == BATCH

    # 2nd consumer: gets batch 2 back first (its pending entries), killed after reading it, before storing;
    # its /metrics meanwhile shows the unacknowledged batch and the unread rest
    port = free_port()
    second = consumer(project, quiet_env, "--pause-file", str(pause), "--metrics-port", str(port))
    try:
        assert reach(pause, "store", second) == batch_2
        seen = wait_until(lambda: _scrape(port), 30, "the consumer's /metrics")
        assert seen == {"looplab_stream_lag_messages": 61 - 2 * BATCH, "looplab_stream_pending_messages": BATCH}, seen
        kill(second)
    finally:
        if second.poll() is None:
            stop_process(second, timeout=5)
    pause.unlink()

    # 3rd consumer, no pause: everything left, then it stops on an idle stream
    third = consumer(project, quiet_env, "--until-idle")
    output, _ = third.communicate(timeout=180)
    assert third.returncode == 0, output
    assert "(redelivered)" in output and "41 message(s) in 3 batch(es)" in output, output

    table = stored_table(project)
    expected = rows.drop(index=25)
    assert len(table) == len(expected) == 59
    assert table["timestamp"].is_unique
    assert sorted(table["timestamp"].astype(str)) == sorted(pd.to_datetime(expected["timestamp"]).astype(str))
    refused = quarantine(project)
    assert sorted(refused["_stream_id"]) == sorted([not_json, wrong]), refused[["_reason", "_stream_id"]]
    reasons = dict(zip(refused["_stream_id"], refused["_reason"], strict=True))
    assert reasons[not_json].startswith(f"stream message id={not_json}: not JSON")
    assert reasons[wrong].startswith(f"stream message id={wrong}: rejected") and "casual" in reasons[wrong]
    assert source.lag() == {"lag": 0, "pending": 0}


def _scrape(port: int) -> dict | None:
    try:
        return metrics(port)
    except OSError:
        return None


def test_unreachable_redis_is_one_line_naming_it(tmp_path, quiet_env):
    project = copy_project(ROOT, tmp_path / "project")
    url = f"redis://127.0.0.1:{free_port()}/0"
    (project / "conf" / "test" / "parameters_stream.yml").write_text(yaml.safe_dump({"data": {"sources": {"events": {"url": url}}}}))
    process = consumer(project, quiet_env, "--until-idle")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1].startswith(f"Error: source 'events': Redis is not reachable at {url}"), output
    assert "Traceback" not in output


@pytest.mark.skipif(not Path(PROMTOOL).is_file(), reason="promtool is not installed (make system-packages)")
def test_lag_alert_rule_passes_promtool():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], cwd=RULE_TESTS.parent, capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    tested_alerts = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test.get("alert_rule_test", [])}
    assert alerts and alerts <= tested_alerts, alerts - tested_alerts


def test_a_dataset_without_times_arrives_once_through_the_stream(tmp_path, redis_url):
    "scikit-learn's diabetes data (no time column) in an environment of its own: each row's time is its message's, the same when redelivered."
    from sklearn.datasets import load_diabetes

    from looplab.core import load_config
    from looplab.scaffold import init_environment
    from looplab.stream import RedisStreamSource, consume, pick_stream_source

    project = copy_project(ROOT, tmp_path / "project")
    data = tmp_path / "diabetes.csv"
    rows = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"}).head(90)
    rows.to_csv(data, index=False)
    init_environment("diabetes", data, "progression", root=project)
    conf = project / "conf" / "diabetes" / "parameters_data.yml"
    written = yaml.safe_load(conf.read_text())
    written["data"]["sources"]["events"] = {"kind": "stream", "url": redis_url, "stream": "rows:diabetes", "batch_size": 40, "block_ms": 100}
    conf.write_text(yaml.safe_dump(written, sort_keys=False))
    params = load_config("parameters", env="diabetes", root=project)["data"]
    source = pick_stream_source(params, "events")
    source.ensure_group()
    source.publish(rows)
    source.client().xadd(source.stream, {"row": "[1, 2]"})
    source.client().xadd(source.stream, {"row": b"\xc3\x28"})  # not UTF-8: quarantined, never a read that fails for ever

    crashed = RedisStreamSource("events", url=redis_url, stream="rows:diabetes", batch_size=40)
    assert len(crashed.read_batch()[1]) == 40  # read, never stored: it comes back
    totals = consume(source, params, env="diabetes", root=project, until_idle=True)
    assert (totals.messages, totals.redelivered, totals.poison) == (92, 40, 2)
    table = stored_table(project, params["validated_path"])
    assert len(table) == len(rows) and table[params["timestamp"]].is_unique
    assert sorted(table["progression"]) == sorted(rows["progression"])
    assert source.lag() == {"lag": 0, "pending": 0}


def test_a_stop_signal_finishes_the_batch_in_hand(project, quiet_env):
    "TERM (or Ctrl-C) while a batch is being stored: it is stored and acknowledged, then the consumer exits 0."
    source = source_of(project)
    source.ensure_group()
    source.publish(demo_rows(project, 5))
    pause = project / "pause"
    process = consumer(project, quiet_env, "--pause-file", str(pause), "--pause-at", "ack")
    try:
        reach(pause, "ack", process)
        process.send_signal(signal.SIGTERM)
        go_on(pause)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            stop_process(process, timeout=5)
    assert process.returncode == 0, output
    assert "SIGTERM: stopping after the batch in hand" in output and "5 message(s) in 1 batch(es)" in output, output
    assert source.lag() == {"lag": 0, "pending": 0} and len(stored_table(project)) == 5


def test_a_data_run_waits_while_a_consumer_holds_the_table_lock(project, tool, quiet_env, tmp_path):
    "A `kedro run -p data` started while a writer holds the validated table's lock stores nothing until it is released, and says who holds it."
    from looplab.core import load_config
    from looplab.stream import table_lock

    params = load_config("parameters", env="test", root=project)["data"]
    log = tmp_path / "kedro.log"
    with table_lock(params, project, holder="the test's writer"), log.open("w") as output:
        run = subprocess.Popen([tool("kedro"), "run", "-p", "data", "--env", "test"], cwd=project, env=quiet_env,
                               stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: run.poll() is not None or "held by the test's writer (pid" in log.read_text(), 600,
                       "the data run waiting for the lock")
            assert run.poll() is None, log.read_text()
            assert stored_table(project).empty  # nothing stored while the lock is held
        except BaseException:
            stop_process(run)
            raise
    assert run.wait(timeout=600) == 0, log.read_text()
    assert len(stored_table(project)) > 0


def test_a_replay_through_the_stream_stores_what_a_landing_replay_does(root, tool, quiet_env, redis_url, tmp_path):
    "`looplab replay --via stream` publishes each day to the stream and stores it through its consumer: the same table, requests and MAE as days landed as files."

    projects = {via: project_with_models(root, tmp_path / via, tool, quiet_env) for via in ("landing", "stream")}
    settings = {"url": redis_url, "stream": "rows:replay", "batch_size": BATCH, "block_ms": 1000, "metrics_port": None}
    (projects["stream"] / "conf" / "test" / "parameters_stream.yml").write_text(yaml.safe_dump({"data": {"sources": {"events": settings}}}))
    outputs = {}
    for via, project in projects.items():
        run = subprocess.run([tool("looplab"), "replay", "--start", "2011-01-24", "--end", "2011-01-25", "--env", "test", "--no-progress",
                              "--via", via], cwd=project, env={**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)},
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs[via] = run.stdout
    tables = {via: stored_table(project) for via, project in projects.items()}
    days = int((tables["landing"]["timestamp"] >= pd.Timestamp("2011-01-24")).sum())  # the hours the bundled file has on those days
    assert days > 40
    line = f"through stream source 'events': {days} message(s), {days} row(s) stored ({days} new), 0 quarantined"
    assert line in outputs["stream"], outputs["stream"]
    assert "through stream source" not in outputs["landing"]
    assert not list((projects["stream"] / "data" / "01_raw" / "landing").glob("*2011-01-2[45]*"))  # nothing landed as a file

    columns = [column for column in tables["landing"].columns if not column.startswith("_")]  # lineage (file, batch, message) differs
    landed, streamed = (tables[via][columns].sort_values(["region", "timestamp"]).reset_index(drop=True) for via in ("landing", "stream"))
    assert streamed["timestamp"].max() == pd.Timestamp("2011-01-25 23:00")
    pd.testing.assert_frame_equal(streamed, landed)
    summaries = {via: json.loads((project / "data" / "08_reporting" / "replay" / "summary.json").read_text()) for via, project in projects.items()}
    assert summaries["stream"]["via"] == "stream" and summaries["stream"]["stream"]["stored"] == days
    for key in ("requests", "policy_mae", "static_mae", "windows"):
        assert summaries["stream"][key] == summaries["landing"][key], key

    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.xlen("rows:replay") == days
    (group,) = client.xinfo_groups("rows:replay")
    assert (group["lag"], group["pending"]) == (0, 0)


def test_a_replay_through_an_unreachable_stream_names_it(root, tool, quiet_env, tmp_path):

    project = project_with_models(root, tmp_path / "project", tool, quiet_env)
    settings = {"url": f"redis://127.0.0.1:{free_port()}/0", "metrics_port": None}
    (project / "conf" / "test" / "parameters_stream.yml").write_text(yaml.safe_dump({"data": {"sources": {"events": settings}}}))
    run = subprocess.run([tool("looplab"), "replay", "--start", "2011-01-24", "--end", "2011-01-24", "--env", "test", "--no-progress",
                          "--via", "stream"], cwd=project, env={**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 1
    assert "replay: the stream failed on 2011-01-24: source 'events': Redis is not reachable at redis://127.0.0.1:" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
