"""Data that fights back: a landing folder with a mix of good and bad files, through `kedro run -p data`.

Truncated, mis-encoded and empty files, a file with a stray column, a file repeating a key, a file
dated in the future and good files arrive together. Every good row must be stored, every bad file
moved aside with its reason and every bad row quarantined with its reason; the next run must be
clean at once; and after a fix `looplab data retry` takes a rejected file back.
"""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looplab.core import load_config
from looplab.sources import demo_rides
from looplab.versioning import load_version

from conftest import copy_project, kedro_run


def looplab(tool, env: dict, project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("looplab"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(root, tmp_path_factory, tool, quiet_env):
    "A project copy after one `kedro run -p data --env test`, then a landing folder full of faults and a second run."
    project = copy_project(root, tmp_path_factory.mktemp("faults") / "project")
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    params = load_config(env="test", root=project)["data"]
    landing = project / params["sources"]["landing"]["path"]
    rides = demo_rides(params, root=project)
    day = lambda text: rides[rides["timestamp"].dt.strftime("%Y-%m-%d") == text].drop(columns=[])  # noqa: E731
    text = lambda frame: frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S"))  # noqa: E731
    good = {"rides_2011-02-01.csv": day("2011-02-01"), "rides_2011-02-02.csv": day("2011-02-02")}
    for name, frame in good.items():
        text(frame).to_csv(landing / name, index=False)
    text(day("2011-02-03")).to_csv(landing / "rides_2011-02-03.csv", index=False)
    truncated = (landing / "rides_2011-02-03.csv").read_bytes()[:-7]
    (landing / "rides_2011-02-03.csv").write_bytes(truncated)                                  # truncated mid-row
    (landing / "rides_2011-02-04.csv").write_bytes(text(day("2011-02-04")).to_csv(index=False).encode("utf-16"))  # another encoding
    (landing / "rides_2011-02-05.csv").write_bytes(b"")                                        # empty
    repeated = day("2011-02-06")
    repeated = pd.concat([repeated, repeated.iloc[[3]].assign(bikers=repeated["bikers"].iloc[3] + 1,
                                                              casual=repeated["casual"].iloc[3] + 1)], ignore_index=True)
    text(repeated).to_csv(landing / "rides_2011-02-06.csv", index=False)                      # a key sent twice, the later corrected
    future = day("2011-02-07").head(3).assign(timestamp=pd.Timestamp.now().normalize() + pd.Timedelta(days=400))
    future["timestamp"] = future["timestamp"] + pd.to_timedelta(range(3), unit="h")
    text(pd.concat([day("2011-02-07"), future], ignore_index=True)).to_csv(landing / "rides_2011-02-07.csv", index=False)
    text(day("2011-02-08").assign(firmware="v2")).to_csv(landing / "rides_2011-02-08.csv", index=False)  # a stray column
    stored_row = day("2011-01-05").head(1)  # stored by the first run; re-sent corrected (a late correction)
    text(stored_row.assign(bikers=stored_row["bikers"] + 2, casual=stored_row["casual"] + 2)).to_csv(landing / "rides_2011-02-09-fix.csv", index=False)
    second = kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    third = kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    return {"project": project, "params": params, "landing": landing, "rides": rides, "good": good, "repeated": repeated, "corrected": stored_row,
            "second": second.stdout + second.stderr, "third": third.stdout + third.stderr}


def stored(run) -> pd.DataFrame:
    return load_version(run["project"] / run["params"]["validated_path"])


def test_every_good_row_is_stored(run):
    table = stored(run)
    days = table["timestamp"].dt.strftime("%Y-%m-%d")
    for name, frame in run["good"].items():
        assert (days == name[6:16]).sum() == len(frame), name
    assert (days == "2011-02-07").sum() == (run["rides"]["timestamp"].dt.strftime("%Y-%m-%d") == "2011-02-07").sum()
    assert not table.duplicated(["region", "timestamp"]).any()


def test_files_that_cannot_be_read_are_moved_aside_with_their_reason(run):
    rejected = run["landing"].parent / "rejected"
    reasons = {path.name.removesuffix(".reason.json"): json.loads(path.read_text())["reason"] for path in rejected.glob("*.reason.json")}
    assert set(reasons) == {"rides_2011-02-03.csv", "rides_2011-02-04.csv", "rides_2011-02-05.csv"}, reasons
    assert "truncated or malformed" in reasons["rides_2011-02-03.csv"] and "UTF-16" in reasons["rides_2011-02-04.csv"]
    assert "is empty (0 bytes)" in reasons["rides_2011-02-05.csv"]
    for name in reasons:
        assert f"{name}" in run["second"] and "moved to" in run["second"]


def test_bad_rows_and_a_bad_file_are_quarantined_with_reasons_and_good_files_pass(run, tool, quiet_env):
    result = looplab(tool, quiet_env, run["project"], "data", "quarantine", "--env", "test", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    reasons = facts["reasons"]
    assert any("later than now + 1 day (data.max_future)" in kind for kind in reasons), reasons
    assert any(kind.startswith("duplicate key") for kind in reasons), reasons
    assert any("rides_2011-02-08.csv rejected: extra column(s) firmware" in kind for kind in reasons), reasons
    assert len(facts["rejected_files"]) == 3
    # the repeated key: the later, corrected row is the one stored
    table = stored(run).set_index("timestamp")
    moment = run["repeated"]["timestamp"].iloc[3]
    assert table.loc[moment, "bikers"] == run["repeated"]["bikers"].iloc[-1]


def test_the_next_run_is_clean_at_once(run):
    assert "0 new row(s)" in run["third"] and "rejected" not in run["third"].split("source 'landing'")[-1].split("\n")[0]


def test_a_rejected_file_comes_back_after_a_fix(run, tool, quiet_env):
    rejected = run["landing"].parent / "rejected" / "rides_2011-02-05.csv"
    day = run["rides"][run["rides"]["timestamp"].dt.strftime("%Y-%m-%d") == "2011-02-05"]
    day.assign(timestamp=day["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(rejected, index=False)  # fixed in place
    result = looplab(tool, quiet_env, run["project"], "data", "retry", "--env", "test", "--file", "rides_2011-02-05.csv")
    assert result.returncode == 0 and "next: kedro run -p data --env test" in result.stdout, result.stdout + result.stderr
    kedro_run(tool, quiet_env, run["project"], "-p", "data", "--env", "test")
    table = stored(run)
    assert (table["timestamp"].dt.strftime("%Y-%m-%d") == "2011-02-05").sum() == len(day)
    again = looplab(tool, quiet_env, run["project"], "data", "retry", "--env", "test", "--file", "rides_2011-02-05.csv")
    assert again.returncode == 1 and "no rejected file 'rides_2011-02-05.csv'" in again.stderr


def test_the_report_accounts_for_every_line_and_shows_files_and_revisions(run):
    from looplab.ingestion import read_revisions

    reports = run["project"] / "data" / "08_reporting"
    versions = sorted((reports / "validation_report.json").glob("*/validation_report.json"))
    report = json.loads(versions[1].read_text())  # the fixture's second run: the one with the faults
    assert [record["file"] for record in report["rejected_files"]] == ["rides_2011-02-03.csv", "rides_2011-02-04.csv", "rides_2011-02-05.csv"]
    assert report["rows_read"] == report["rows_in"] + report["lines_in_rejected_files"] > report["rows_in"]
    assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"]
    assert list(report["rejected_units"]) == ["file rides_2011-02-08.csv"]
    revisions = read_revisions(run["params"], root=run["project"])
    assert revisions["bikers"].tolist() == run["corrected"]["bikers"].tolist() and revisions["_changed_columns"][0] == "casual, bikers"
    table = stored(run).set_index("timestamp")
    assert table.loc[run["corrected"]["timestamp"].iloc[0], "bikers"] == run["corrected"]["bikers"].iloc[0] + 2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["good", "truncated", "empty", "utf16", "stray", "bad_rows"]), min_size=1, max_size=6))
def test_any_mix_of_files_is_accounted_for_and_a_rerun_is_clean(root, tmp_path_factory, kinds):
    "Rows read = stored + quarantined + lines of the files moved aside; then nothing is new."
    from looplab.ingestion import normalise_batch
    from looplab.sources import FileSource
    from looplab.validation import count_rejected, validate_batch

    params = load_config(env="test", root=root)["data"]
    rides = demo_rides(params, root=root)
    folder = tmp_path_factory.mktemp("mix") / "landing"
    folder.mkdir()
    readable = 0
    for number, kind in enumerate(kinds):
        frame = rides.iloc[24 * number: 24 * number + 24].copy()
        frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
        path = folder / f"rides_{number:02d}.csv"
        if kind == "bad_rows":
            frame.loc[frame.index[:12], "hr"] = 99
        if kind == "stray":
            frame["firmware"] = "v2"
        data = frame.to_csv(index=False).encode()
        data = {"truncated": data[:-9], "empty": b"", "utf16": frame.to_csv(index=False).encode("utf-16")}.get(kind, data)
        path.write_bytes(data)
        readable += len(frame) if kind in ("good", "stray", "bad_rows") else 0
    source = FileSource("landing", folder)
    batch = source.read()
    frame = normalise_batch(batch.frame, "landing", "b1", params) if batch.rows else batch.frame
    validated, quarantine, report = validate_batch(frame, params) if batch.rows else (frame, frame, {"rows_in": 0})
    report = count_rejected(report, {"sources": {"landing": {"rejected": batch.rejected}}})
    assert report["rows_in"] == readable == len(validated) + len(quarantine)
    assert len(batch.rejected) == sum(kind in ("truncated", "empty", "utf16") for kind in kinds)
    assert report["rows_read"] == readable + sum(record["lines"] for record in batch.rejected)
    assert len(validated) == 24 * kinds.count("good")  # one file's faults never reach another file's rows
    assert source.read(taken_files=set(batch.files)).rows == 0 and not source.read(taken_files=set(batch.files)).rejected


def test_a_resent_row_held_under_on_conflict_quarantine_comes_back_by_retry(run, tool, quiet_env):
    "data.on_conflict: quarantine keeps the stored row and holds the re-sent one; after review, retry under update applies it."
    row = run["rides"][run["rides"]["timestamp"] == pd.Timestamp("2011-01-06 08:00:00")]
    sent = row.assign(bikers=row["bikers"] + 5, registered=row["registered"] + 5)
    sent.assign(timestamp=sent["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(run["landing"] / "rides_2011-02-10-fix.csv", index=False)
    held = kedro_run(tool, quiet_env, run["project"], "-p", "data", "--env", "test", "--params", "data.on_conflict=quarantine")
    assert "held in" in held.stdout + held.stderr
    when = row["timestamp"].iloc[0]
    assert stored(run).set_index("timestamp").loc[when, "bikers"] == row["bikers"].iloc[0]  # the stored value stays
    listed = looplab(tool, quiet_env, run["project"], "data", "quarantine", "--env", "test", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["reasons"]["re-sent with other values than the stored row (registered, bikers)"] == 1
    retried = looplab(tool, quiet_env, run["project"], "data", "retry", "--env", "test", "--reason", "re-sent")
    assert retried.returncode == 0 and "1 quarantined row(s) written" in retried.stdout, retried.stdout + retried.stderr
    kedro_run(tool, quiet_env, run["project"], "-p", "data", "--env", "test")  # the default rule, update: the re-sent value applies
    assert stored(run).set_index("timestamp").loc[when, "bikers"] == row["bikers"].iloc[0] + 5
