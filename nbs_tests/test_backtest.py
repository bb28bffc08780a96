"""`looplab backtest`: one replay per retraining policy, each in a copy of the project, in parallel processes.

A test-environment project with champion version 1 (data through 2011-01-23) backtests a week of the bundled
days with the static model, the drift-triggered policy and a daily schedule. The project itself is left as it
was; each policy's workspace (kept with --keep) holds its own registry, decisions and log.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from conftest import project_with_models

START, END = "2011-01-24", "2011-01-30"
TIMEOUT = 1500  # seconds: two replays and the oracle on a busy machine of two cores


@pytest.fixture(scope="module")
def backtested(root, tmp_path_factory, tool, quiet_env):
    folder = tmp_path_factory.mktemp("backtest")
    project = project_with_models(root, folder / "project", tool, quiet_env)
    before = (project / "mlflow.db").read_bytes()
    run = subprocess.run([tool("looplab"), "backtest", "--policies", "static,drift,scheduled:1d", "--start", START, "--end", END,
                          "--env", "test", "--keep", str(folder / "workspaces"), "--no-progress"],
                         cwd=project, env=quiet_env, capture_output=True, text=True, timeout=TIMEOUT)
    return {"project": project, "run": run, "workspaces": folder / "workspaces", "mlflow_before": before}


def test_the_table_names_every_policy_and_the_oracle(backtested):
    run = backtested["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert {"static", "drift", "scheduled:1d", "oracle"} <= set(lines), run.stdout
    assert f"backtest {START} – {END} (MAE; lower is better)" in run.stdout and "best policy: " in run.stdout
    folder = backtested["project"] / "data" / "08_reporting" / "backtest"
    result = json.loads((folder / "backtest.json").read_text())
    assert [row["name"] for row in result["policies"]] == ["static", "drift", "scheduled:1d"]
    assert result["champion_start"] == "1" and result["metric"] == "mae" and result["workers"] >= 1
    for row in result["policies"]:
        assert row["mae"] > 0 and set(row["mae_by_month"]) == {"2011-01"}, row
        assert row["retrains"] >= row["promotions"] >= 0 and row["train_seconds"] >= 0, row
    static = result["policies"][0]
    assert (static["retrains"], static["train_seconds"]) == (0, 0.0)
    for row in result["policies"][1:]:  # nothing promoted: the policy served the static model's answers
        if row["promotions"] == 0:
            assert row["mae"] == pytest.approx(static["mae"]), row
    oracle = result["oracle"]
    assert oracle["mae"] > 0 and oracle["retrains"] == oracle["promotions"] >= 0 and set(oracle["mae_by_month"]) == {"2011-01"}, oracle
    assert "<pre id='looplab-backtest-table'>" in (folder / "backtest.html").read_text()


def test_each_policy_replayed_in_its_own_copy(backtested):
    project, workspaces = backtested["project"], backtested["workspaces"]
    assert (project / "mlflow.db").read_bytes() == backtested["mlflow_before"]  # the project's registry: untouched
    assert not (project / "data" / "08_reporting" / "replay").exists()
    for name in ("drift", "scheduled_1d"):
        workspace = workspaces / name
        assert "monitoring: window" in (workspace / "backtest.log").read_text()  # the replay's own lines, kept in its workspace
        with sqlite3.connect(workspace / "mlflow.db") as connection:
            locations = [row[0] for row in connection.execute("SELECT artifact_location FROM experiments")]
        assert locations and not any(str(project) + "/" in location for location in locations), locations
    # the schedule reached the trigger in its copy only: the champion's data ends before the week replayed
    def reasons(name: str) -> list[str]:  # none when the trigger was never asked (drift: only once a window is scored)
        log = workspaces / name / "data" / "08_reporting" / "monitoring" / "decisions.jsonl"
        return [reason for line in (log.read_text().splitlines() if log.exists() else []) for reason in json.loads(line).get("reasons") or []]

    assert any(reason.startswith("schedule: the champion's data ends 2011-01-2") for reason in reasons("scheduled_1d")), reasons("scheduled_1d")
    assert not any(reason.startswith("schedule") for reason in reasons("drift"))


def test_an_unknown_policy_is_one_line(backtested, tool, quiet_env):
    run = subprocess.run([tool("looplab"), "backtest", "--policies", "static,weekly", "--env", "test"], cwd=backtested["project"],
                         env=quiet_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Error: unknown policy 'weekly' in 'weekly': use static, scheduled:Nd" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
