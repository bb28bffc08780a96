"""The `data` pipeline end to end with `kedro run`, in a copy of the project: incremental, idempotent, nothing lost."""

from __future__ import annotations

import json
import sqlite3
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


def test_rerun_without_new_data_adds_nothing(project, tool, quiet_env):
    params = load_config(env="test", root=project)["data"]
    table = project / params["validated_path"]
    before = load_version(table)
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    after = load_version(table)
    assert len(list_versions(table)) == 2
    pd.testing.assert_frame_equal(before, after)
    report = latest_json(project / "data" / "08_reporting" / "validation_report.json")
    assert report["rows_in"] == 0


def test_a_new_landing_day_is_appended_once(project, tool, quiet_env):
    from looplab.sources import replay_day

    params = load_config(env="test", root=project)["data"]
    table = project / params["validated_path"]
    before = load_version(table)
    day = (before["timestamp"].max() + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    replay_day(params, day, root=project)
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    after = load_version(table)
    added = after[after["timestamp"].dt.strftime("%Y-%m-%d") == day]
    assert len(after) == len(before) + len(added) and len(added) > 20
    # The landing file is taken once: another run finds nothing new.
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    assert len(load_version(table)) == len(after)


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
