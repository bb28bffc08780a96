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
    second = kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    third = kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    return {"project": project, "params": params, "landing": landing, "rides": rides, "good": good, "repeated": repeated,
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
