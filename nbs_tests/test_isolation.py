"""Tests never read what a user's runs left in the checkout: every project copy starts as a fresh clone.

`make run` leaves landing files, stores, reports, a served-model cache and perhaps `conf/local` files in
the working tree; `make test` afterwards must see none of it (README: `make run`, then `make test`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from looplab.core import copy_project_files, load_config, mlflow_settings, project_files
from looplab.versioning import load_version

from conftest import COPIED, OUTSIDE_SETTINGS, REPOSITORY, ROOT, copy_project, kedro_run


def landing_day(day: str) -> str:
    "One day of hourly rides in the landing folder's format: what `looplab replay` writes there."
    header = "timestamp,season,hr,holiday,weekday,workingday,weathersit,temp,atemp,hum,windspeed,casual,registered,bikers"
    rows = [f"{pd.Timestamp(day) + pd.Timedelta(hours=hour)},2,{hour},0,6,0,clear,0.44,0.4394,0.54,0.2537,10,50,60"
            for hour in range(24)]
    return "\n".join([header, *rows]) + "\n"


# What a user's `make run`, `make serve` and own settings leave in the working tree (all git-ignored).
LEFT_BEHIND = {
    "data/01_raw/landing/rides_2011-04-30.csv": landing_day("2011-04-30"),
    "data/01_raw/operational.db": "SQLite format 3\0 a user's history database",
    "data/02_intermediate/ingestion_state.db": "SQLite format 3\0 what was already taken",
    "data/03_primary/validated_rides.parquet/2026-12-01T10.00.00.000Z/validated_rides.parquet": "PAR1",
    "data/06_models/serving_cache/bike-demand/3/model.skops": "a served model",
    "data/08_reporting/deployment.json": json.dumps({"model_name": "bike-demand", "version": "3"}),
    "mlflow.db": "SQLite format 3\0 the user's registry",
    "mlartifacts/1/models/m-1/artifacts/model.skops": "a registered model",
    "conf/local/mlflow.yml": "mlflow:\n  tracking_uri: http://127.0.0.1:9/the-users-server\n",
    "conf/local/parameters.yml": "data:\n  demo:\n    landing_days: 1\n",
}


def dirty_checkout(folder: Path, with_git: bool) -> Path:
    "A checkout of the project (a git clone, or a plain copy of the files) after a user's runs."
    checkout = copy_project_files(ROOT, folder)
    if with_git:
        git = ["git", "-C", str(checkout), "-c", "user.name=looplab", "-c", "user.email=looplab@localhost"]
        subprocess.run([*git, "init", "-q"], check=True, timeout=60)
        subprocess.run([*git, "add", "-A"], check=True, timeout=60)
        subprocess.run([*git, "commit", "-q", "-m", "clone"], check=True, timeout=60)
    for name, text in LEFT_BEHIND.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)
    return checkout


@pytest.mark.parametrize("with_git", [True, False], ids=["git-checkout", "plain-folder"])
def test_a_project_copy_of_a_dirty_checkout_is_a_fresh_clone(tmp_path, with_git):
    checkout = dirty_checkout(tmp_path / "checkout", with_git)
    copy = copy_project(checkout, tmp_path / "copy")
    left = [name for name in LEFT_BEHIND if (copy / name).exists()]
    assert not left, f"a user's run leaked into the test project: {left}"
    files = {path.relative_to(copy).as_posix() for path in copy.rglob("*") if path.is_file()}
    assert {name for name in files if name.startswith("data/")} <= {
        "data/01_raw/Bikeshare.csv", "data/01_raw/README.md", *(f"data/{layer}/.gitkeep" for layer in os.listdir(ROOT / "data"))
    }
    assert sorted((copy / "conf" / "local").iterdir()) == [copy / "conf" / "local" / ".gitkeep"]
    # the settings the copy runs with are the committed ones, its stores its own
    assert mlflow_settings(root=copy)["tracking_uri"] == f"sqlite:///{copy.resolve()}/mlflow.db"
    assert load_config(root=copy)["data"]["demo"] == load_config(root=ROOT)["data"]["demo"]


def test_a_run_in_a_copy_of_a_dirty_checkout_ingests_only_the_committed_data(tmp_path, tool, quiet_env):
    "The failure a user met: `make run`'s landing files reached the test project's `kedro run`."
    checkout = dirty_checkout(tmp_path / "checkout", with_git=True)
    project = copy_project(checkout, tmp_path / "project")
    kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test")
    demo = load_config(env="test", root=project)["data"]["demo"]
    validated = load_version(project / load_config(env="test", root=project)["data"]["validated_path"])
    expected_end = pd.Timestamp(demo["history_end"]) + pd.Timedelta(days=demo["landing_days"])
    assert validated["timestamp"].max() == expected_end - pd.Timedelta(hours=1)
    assert not (validated["timestamp"] >= pd.Timestamp("2011-04-30")).any()


def test_the_session_works_in_a_fresh_clone_of_the_checkout(quiet_env):
    "Whatever the checkout holds beside its own files, none of it is in the session's project."
    assert set(project_files(REPOSITORY)) <= {path.relative_to(ROOT) for path in ROOT.rglob("*") if path.is_file()}
    if (REPOSITORY / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(REPOSITORY), "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"],
                                 capture_output=True, check=True, timeout=120).stdout.decode().split("\0")
        # caches the session's own tools write into its working directory (.hypothesis/, __pycache__/) are not the checkout's
        produced_here = lambda name: name.startswith(".") or "__pycache__" in name or ".egg-info" in name  # noqa: E731
        # what the checkout's runs left there, found in the copy as it was made (not what this session's tests wrote since)
        leaked = [name for name in ignored if name and not produced_here(name)
                  and any(copied == name.rstrip("/") or copied.startswith(name) for copied in COPIED)]
        assert not leaked, f"the checkout's own run outputs reached the session's project: {leaked}"
    assert Path.cwd() == ROOT, "defaults (load_config() without a root) must find the clean copy"
    assert not [name for name in OUTSIDE_SETTINGS if name in quiet_env], "child processes get no project, env or store from outside"
