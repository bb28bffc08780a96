"""The `data` pipeline end to end with `kedro run`, in a copy of the project: incremental, idempotent, nothing lost."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from looplab.core import load_config
from looplab.versioning import list_versions, load_version

from conftest import copy_project, kedro_run, latest_json


@pytest.fixture(scope="module")
def project(root, tmp_path_factory, tool, quiet_env):
    "A project copy after one `kedro run -p data --env test`."
    project = copy_project(root, tmp_path_factory.mktemp("data-pipeline") / "project")
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    return project


def test_first_run_takes_history_and_landing_days(project):
    params = load_config(env="test", root=project)["data"]
    validated = load_version(project / params["validated_path"])
    history_end = pd.Timestamp(params["demo"]["history_end"])
    landing_end = history_end + pd.Timedelta(days=params["demo"]["landing_days"])
    assert validated["timestamp"].min() == pd.Timestamp(params["demo"]["year_start"])
    assert validated["timestamp"].max() < landing_end
    assert validated["timestamp"].max() >= history_end, "the landing files were ingested too"
    assert not validated.duplicated(["region", "timestamp"]).any()
    report = latest_json(project / "data" / "08_reporting" / "validation_report.json")
    assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"]
    assert report["rows_valid"] == len(validated)


def stored_files(project: Path, params: dict) -> dict[str, int]:
    "Every file the data layer stores (the versioned tables, the Feast source, registry and online store), with its mtime."
    folders = [project / params[key] for key in ("validated_path", "features_path", "feature_store_path")]
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    files.append(project / params["feast_source_path"])
    return {str(path.relative_to(project)): path.stat().st_mtime_ns for path in files}


def test_rerun_without_new_data_writes_no_stored_data(project, tool, quiet_env):
    params = load_config(env="test", root=project)["data"]
    table, features = project / params["validated_path"], project / params["features_path"]
    before, before_files = load_version(table), stored_files(project, params)
    versions = {"validated_rides": list_versions(table), "features": list_versions(features)}
    log = project / params["versions_log"]
    records = log.read_text().splitlines()
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    # nothing rewritten: the same versions, every stored file untouched (Feast was not materialised again)
    assert {"validated_rides": list_versions(table), "features": list_versions(features)} == versions
    assert stored_files(project, params) == before_files
    pd.testing.assert_frame_equal(before, load_version(table))
    report = latest_json(project / "data" / "08_reporting" / "validation_report.json")
    assert report["rows_in"] == 0
    append = json.loads((project / "data" / "08_reporting" / "append_report.json").read_text())
    assert append["kept_version"] == versions["validated_rides"][-1] and append["rows_after"] == len(before)
    store = json.loads((project / "data" / "08_reporting" / "feature_store_report.json").read_text())
    assert store["unchanged"] is True and store["materialized"] is True
    # the versions log says nothing changed, naming the versions kept and the run that recorded them
    last, previous = json.loads(log.read_text().splitlines()[-1]), json.loads(records[-1])
    assert len(log.read_text().splitlines()) == len(records) + 1 and last["unchanged"] is True
    for name in ("validated_rides", "features"):
        assert last["datasets"][name]["version"] == versions[name][-1]
        assert last["datasets"][name]["content_hash"] == previous["datasets"][name]["content_hash"]
    assert last["mlflow_run_id"] == previous["mlflow_run_id"]
    shown = subprocess.run([tool("looplab"), "data", "versions", "--env", "test", "--json"], cwd=project, env=quiet_env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)
    for name in ("validated_rides", "features"):  # the kept version, described by the run that stored it
        newest = history[name]["versions"][-1]
        assert newest["version"] == versions[name][-1] and newest["batch_id"] == previous["batch_id"] and newest["batch_id"]
        assert newest["content_hash"] == previous["datasets"][name]["content_hash"]


def test_a_new_landing_day_is_appended_once(project, tool, quiet_env):
    from looplab.sources import replay_day

    params = load_config(env="test", root=project)["data"]
    table, features = project / params["validated_path"], project / params["features_path"]
    before, feature_versions = load_version(table), list_versions(features)
    day = (before["timestamp"].max() + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    replay_day(params, day, root=project)
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    after = load_version(table)
    added = after[after["timestamp"].dt.strftime("%Y-%m-%d") == day]
    assert len(after) == len(before) + len(added) and len(added) > 20
    # the features are built again from the new table, and materialised
    assert len(list_versions(features)) == len(feature_versions) + 1
    rebuilt = load_version(features)
    assert len(rebuilt) == len(after) and rebuilt["event_timestamp"].max() == after["timestamp"].max()
    store = json.loads((project / "data" / "08_reporting" / "feature_store_report.json").read_text())
    assert store["materialized"] is True and "unchanged" not in store and store["end"] == str(after["timestamp"].max())
    # The landing file is taken once: another run finds nothing new, and writes no new version.
    stored = {"validated_rides": list_versions(table), "features": list_versions(features)}
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    assert len(load_version(table)) == len(after)
    assert {"validated_rides": list_versions(table), "features": list_versions(features)} == stored


def test_versions_are_recorded_with_hashes(project):
    lines = (project / "data" / "08_reporting" / "data_versions.jsonl").read_text().splitlines()
    assert lines
    record = json.loads(lines[-1])
    assert "validated" in json.dumps(record) and "features" in json.dumps(record)


def test_features_reach_the_online_store(project):
    report = json.loads((project / "data" / "08_reporting" / "feature_store_report.json").read_text())
    assert report["rows"] > 0 and report["online_views"], report
    online = Path(report["online_store_path"])
    assert online.is_file() and online.is_relative_to(project), online
    with sqlite3.connect(online) as connection:
        tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
    assert any(view in table for view in report["online_views"] for table in tables), tables
    # Online lookup by entity serves the newest hour that was stored.
    from looplab.features import online_features

    params = load_config(env="test", root=project)["data"]
    served = online_features(["dc"], params, root=project)
    newest = load_version(project / params["validated_path"])["timestamp"].max()
    assert served["event_timestamp"].iloc[0] == newest


def test_a_failing_source_stops_the_run_and_keeps_the_watermark(project, tool, quiet_env):
    params = load_config(env="test", root=project)["data"]
    state = project / params["state_path"]
    before = state.read_bytes()
    landing = project / params["sources"]["landing"]["path"]
    (landing / "rides_broken.csv").write_bytes(b"timestamp,season,hr\n2011-05-01 00:00,1,")
    (landing / "rides_broken.csv").write_bytes(b"")  # an empty file: refused with its name when bad files fail the run
    result = kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test", "--params", "data.on_bad_file=fail", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error: source 'landing': file rides_broken.csv is empty (0 bytes)" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in output and "│" not in result.stderr, "a known error ends the run with its message, no stack trace"
    assert state.read_bytes() == before, "a failed ingestion must not advance the watermark"
    (landing / "rides_broken.csv").unlink()


def test_a_file_that_cannot_be_read_is_moved_aside_and_the_run_goes_on(project, tool, quiet_env):
    from looplab.ingestion import StateStore
    from looplab.sources import replay_day

    params = load_config(env="test", root=project)["data"]
    landing = project / params["sources"]["landing"]["path"]
    replay_day(params, "2011-01-26", root=project)  # a good day's file
    (landing / "rides_2011-01-27.csv").write_bytes(b"timestamp,season,hr\n2011-01-27 00:00:00,1")  # truncated mid-row
    result = kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    assert "rides_2011-01-27.csv line 2 has 2 field(s)" in result.stderr and "moved to" in result.stderr, result.stderr[-3000:]
    rejected = landing.parent / "rejected"
    assert (rejected / "rides_2011-01-27.csv").is_file() and (rejected / "rides_2011-01-27.csv.reason.json").is_file()
    taken = {entry.split("@")[0] for entry in StateStore(project / params["state_path"]).taken_files("landing")}
    assert "rides_2011-01-26.csv" in taken and "rides_2011-01-27.csv" not in taken
    validated = load_version(project / params["validated_path"])
    sent = len(pd.read_csv(landing / "rides_2011-01-26.csv"))  # (the bike data has gaps: not always 24 hours)
    assert (validated["timestamp"].dt.strftime("%Y-%m-%d") == "2011-01-26").sum() == sent > 0, "the good file's rows are stored"
    committed = json.loads((project / "data" / "08_reporting" / "committed_watermarks.json").read_text())
    assert [record["file"] for record in committed["sources"]["landing"]["rejected"]] == ["rides_2011-01-27.csv"]
