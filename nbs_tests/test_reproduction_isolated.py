"""`looplab reproduce --isolated` rebuilds a version with the code of its own commit and the packages of its own
lock; plain `reproduce` rebuilds with today's code; `promote --verify` refuses a version it cannot rebuild.

The project is a copy made into a git repository of its own. Version 1 is trained at a first commit; a second
commit changes the training code so that it predicts differently. The lock is the one this environment was
installed from, so the isolated rebuild takes uv's *shared* route (the recorded commit's looplab on top of the
current environment's packages): nothing is downloaded while the tests run (`--fresh-env`, uv's *lock* route,
would download the whole lock into a cold cache, so only its command line is checked here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from looplab.core import copy_project_files, load_config

from conftest import PROJECT_FOR_RUNS, kedro_run

PROJECT_FILES = (*PROJECT_FOR_RUNS, "requirements.lock", ".gitignore", "README.md")
ORIGINAL_FIT = "return estimator.fit(features, label)"
CHANGED_FIT = "return estimator.fit(features, label * 2)"  # a change of the training code that changes every prediction
TIMEOUT = 1200  # seconds per command: generous, for a busy machine of two cores


def git(project: Path, *args: str) -> str:
    identity = ["-c", "user.name=looplab tests", "-c", "user.email=tests@looplab.invalid"]
    done = subprocess.run(["git", "-C", str(project), *identity, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def looplab(history: dict, *args: str) -> subprocess.CompletedProcess:
    "`looplab ARGS --env test` as a user of the copy runs it: with the copy's own code (its src first on the path)."
    return subprocess.run([history["looplab"], *args, "--env", "test"], cwd=history["project"], env=history["env"],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def history(root, tmp_path_factory, tool, quiet_env):
    "bike-demand version 1 trained at the first commit; the second commit doubles the label the training fits."
    project = copy_project_files(root, tmp_path_factory.mktemp("isolated") / "project", only=PROJECT_FILES)
    git(project, "init", "--quiet")
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "-m", "the code that trains version 1")
    first = git(project, "rev-parse", "HEAD")
    environment = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project), "PYTHONPATH": str(project / "src")}
    kedro_run(tool, environment, project, "-p", "data", "--env", "test")
    kedro_run(tool, environment, project, "-p", "training", "--env", "test")
    training = project / "src" / "looplab" / "training.py"
    code = training.read_text(encoding="utf-8")
    assert code.count(ORIGINAL_FIT) == 1, "fit_model changed: update ORIGINAL_FIT"
    training.write_text(code.replace(ORIGINAL_FIT, CHANGED_FIT), encoding="utf-8")
    git(project, "commit", "--quiet", "-am", "training fits twice the label")
    return {"project": project, "env": environment, "looplab": tool("looplab"), "first": first, "second": git(project, "rev-parse", "HEAD")}


def test_plain_reproduce_reports_the_changed_code(history):
    result = looplab(history, "reproduce", "bike-demand/1", "--json")
    assert result.returncode == 1 and result.stdout, result.stdout + result.stderr
    reproduction = json.loads(result.stdout)
    assert not reproduction["matches"]
    assert {key: reproduction["commit"][key] for key in ("recorded", "current", "same")} == {
        "recorded": history["first"], "current": history["second"], "same": False}
    assert any(not row["matches"] for row in reproduction["metrics"] if row["name"] == "mae"), reproduction["metrics"]


def test_isolated_reproduce_rebuilds_the_recorded_commit(history):
    "With --keep: the worktree of the first commit and its environment stay for a look (one rebuild serves both checks)."
    from looplab.reproduction import format_reproduction

    project = history["project"]
    result = looplab(history, "reproduce", "bike-demand/1", "--isolated", "--keep", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    reproduction = json.loads(result.stdout)
    assert reproduction["matches"] and reproduction["tolerance"] == 0.0
    assert {"mae", "rmse", "r2", "baseline_mae"} <= {row["name"] for row in reproduction["metrics"]}
    assert all(row["logged"] == row["reproduced"] for row in reproduction["metrics"]), reproduction["metrics"]
    predictions = reproduction["predictions"]
    assert predictions["identical"] and predictions["rows"] > 0 and predictions["differing"] == 0, predictions
    isolated = reproduction["isolated"]
    assert isolated["commit"] == reproduction["commit"]["recorded"] == history["first"]
    assert isolated["route"] == "shared" and "the recorded lock" in isolated["why"]
    assert set(isolated["seconds"]) == {"checkout", "environment", "rebuild"}
    # The schema and the feature views, hashed from the first commit's files by its own looplab, are the recorded ones.
    definitions = {row["tag"]: row for row in reproduction["definitions"]}
    assert set(definitions) == {"data.schema.hash", "data.feature_views.hash"}, definitions
    assert all(row["same"] and len(row["rebuilt"]) == 64 for row in definitions.values()), definitions
    for step in ("checking out commit", "route shared", "at the recorded commit: hashing the schema and the feature view definitions",
                 "at the recorded commit: refitting on", "kept: the worktree"):
        assert step in result.stderr, result.stderr  # progress, on stderr
    readable = format_reproduction(reproduction)  # what the command prints without --json
    assert "reproduced: every metric identical, every prediction bit-identical" in readable, readable
    assert "rows, bit-identical (registered model vs rebuild)" in readable, readable
    # What --keep left: the worktree at the first commit and its environment; the project's own checkout has the second commit's code.
    kept = [line.removeprefix("worktree ") for line in git(project, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")][1:]
    assert len(kept) == 1 and isolated["kept"], (kept, isolated["kept"])
    checkout = Path(kept[0])
    assert ORIGINAL_FIT in (checkout / "src" / "looplab" / "training.py").read_text(encoding="utf-8")
    assert (checkout.parent / "environment" / "bin" / "python").exists()
    assert CHANGED_FIT in (project / "src" / "looplab" / "training.py").read_text(encoding="utf-8")
    git(project, "worktree", "remove", "--force", str(checkout))
    shutil.rmtree(checkout.parent)  # the environment, the runner and its answer


def test_fresh_env_goes_with_isolated(history):
    "--fresh-env (uv installs the recorded lock even when the shared route would do) means nothing without --isolated."
    result = looplab(history, "reproduce", "bike-demand/1", "--fresh-env")
    assert result.returncode == 2 and "--fresh-env builds the environment of an isolated rebuild" in result.stderr, result.stderr
    shown = " ".join(looplab(history, "reproduce", "--help").stdout.split())
    assert "--fresh-env With --isolated: install the recorded requirements.lock with uv" in shown, shown


def test_a_version_from_a_dirty_tree_is_not_vouched_for(history, tool):
    project = history["project"]
    training = project / "src" / "looplab" / "training.py"
    training.write_text(training.read_text(encoding="utf-8").replace(CHANGED_FIT, ORIGINAL_FIT), encoding="utf-8")
    try:  # uncommitted: version 2 is trained from a dirty tree
        kedro_run(tool, history["env"], project, "-p", "training", "--env", "test")
    finally:
        git(project, "checkout", "--", "src/looplab/training.py")
    champion_before = json.loads(looplab(history, "status", "--json").stdout)["models"][0]["aliases"].get("champion")
    result = looplab(history, "reproduce", "bike-demand/2", "--isolated")
    assert result.returncode == 1
    assert "cannot vouch for bike-demand version 2" in result.stderr and "uncommitted changes" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("Error: cannot vouch"), result.stderr
    refused = looplab(history, "promote", "bike-demand", "2", "--verify")
    assert refused.returncode == 1 and "refusing to promote bike-demand 2: cannot vouch" in refused.stderr, refused.stderr
    after = json.loads(looplab(history, "status", "--json").stdout)["models"][0]["aliases"].get("champion")
    assert after == champion_before
    verified = looplab(history, "promote", "bike-demand", "1", "--verify")  # version 1 rebuilds bit for bit: promoted
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"verified: bike-demand version 1 rebuilt at commit {history['first'][:12]}" in verified.stderr
    assert "champion of bike-demand: " in verified.stdout
    assert json.loads(looplab(history, "status", "--json").stdout)["models"][0]["aliases"]["champion"] == "1"
    assert git(project, "worktree", "list").count("\n") == 0  # without --keep the rebuild leaves no worktree behind


def test_the_version_records_what_a_rebuild_needs(history, tmp_path):
    import mlflow

    from looplab.training import feature_definitions_hash, log_executed_notebook, schema_hash

    project = history["project"]
    version = next(version for version in json.loads(looplab(history, "status", "--json").stdout)["models"][0]["versions"]
                   if version["version"] == "1")
    tags, data_params = version["tags"], load_config(env="test", root=project)["data"]
    assert (tags["code.commit"], tags["code.dirty"], tags["run.seed"]) == (history["first"], "false", "42")
    assert len(tags["env.lock_hash"]) == 64 and {"data.validated.hash", "data.features.hash"} <= set(tags)
    assert tags["data.schema.hash"] == schema_hash(data_params)
    assert tags["data.feature_views.hash"] == feature_definitions_hash(data_params, project)
    # The lab record's hash goes on the version too, when a run's executed notebook is logged.
    notebook = tmp_path / "train.ipynb"
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n', encoding="utf-8")
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        log_executed_notebook(version["run_id"], notebook)
        client = mlflow.MlflowClient()
        digest = client.get_run(version["run_id"]).data.tags["notebook_sha256"]
        assert client.get_model_version("bike-demand", "1").tags["run.notebook_sha256"] == digest
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def test_promote_verifies_by_default_in_prod():
    assert load_config("parameters", env="prod")["registry"]["promote_verify"] is True
    assert load_config("parameters")["registry"]["promote_verify"] is False


def test_feature_definitions_the_commit_does_not_hold_are_not_vouched_for(history, tool):
    """A git-ignored file in the Feast repository changes what defines the feature views and leaves the tree clean:
    the version records a feature-definitions hash that its commit does not hold, and the isolated rebuild says so."""
    project = history["project"]
    stray = project / "conf" / "feature_repo" / "stale.pyc"
    stray.write_bytes(b"left behind by an older checkout")
    try:
        kedro_run(tool, history["env"], project, "-p", "training", "--env", "test")
    finally:
        stray.unlink()
    versions = json.loads(looplab(history, "status", "--json").stdout)["models"][0]["versions"]
    latest = max(versions, key=lambda version: int(version["version"]))
    assert (latest["tags"]["code.commit"], latest["tags"]["code.dirty"]) == (history["second"], "false"), latest["tags"]
    result = looplab(history, "reproduce", f"bike-demand/{latest['version']}", "--isolated", "--json")
    assert result.returncode == 1 and result.stdout, result.stdout + result.stderr
    reproduction = json.loads(result.stdout)
    definitions = {row["tag"]: row for row in reproduction["definitions"]}
    assert definitions["data.schema.hash"]["same"], definitions
    views = definitions["data.feature_views.hash"]
    assert not views["same"] and views["recorded"] == latest["tags"]["data.feature_views.hash"] != views["rebuilt"], views
    assert not reproduction["matches"]
    # The model itself rebuilds bit for bit: only the definitions stand in the way.
    assert reproduction["predictions"]["identical"] and all(row["matches"] for row in reproduction["metrics"]), reproduction
