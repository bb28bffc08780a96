"""Your own data by conf alone: `looplab init` → `kedro run --env NAME` → a registered champion, beside the demo.

Four real datasets of different shapes, none written for looplab's conf, each through `looplab init`
→ `kedro run --env NAME` → `looplab status --env NAME --json`:

- `bikes`: the bundled bike data, six weeks of it as one CSV with a time column (time-series regression);
- `diabetes`: disease progression, scikit-learn's bundled copy (regression, no time column);
- `wine`: three cultivars, labels as text (multi-class classification, no time column);
- `cancer`: a Yes/No diagnosis column in a CSV without a time column (binary classification).

A regression champion is served by `looplab serve --env NAME` and answers a request. `conf/base` and
the demo stay untouched, and every file the runs write is under `data/NAME/`.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from looplab.core import load_config
from looplab.sources import demo_rides

from conftest import copy_project, free_port, kedro_run, running_server

# name -> (file, target, --timestamp or None, task, gate metric)
DATASETS = {
    "bikes": ("bikes.csv", "bikers", "timestamp", "regression", "mae"),
    "diabetes": ("diabetes.csv", "progression", None, "regression", "mae"),
    "wine": ("wine.csv", "cultivar", None, "classification", "log_loss"),
    "cancer": ("cancer.csv", "malignant", None, "classification", "log_loss"),
}


def identifiers(frame: pd.DataFrame) -> pd.DataFrame:
    "Column names as a user renames them for looplab (`mean radius` → `mean_radius`)."
    return frame.rename(columns=lambda column: re.sub(r"\W+", "_", column).strip("_"))


def write_datasets(root: Path, folder: Path) -> None:
    "The four CSV files, as a user would bring them."
    rides = demo_rides(load_config(root=root)["data"], root=root)
    rides = rides[rides["timestamp"] < "2011-02-12"].drop(columns=["casual", "registered"])  # counts that add up to the target
    rides.to_csv(folder / "bikes.csv", index=False)
    diabetes = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    diabetes.to_csv(folder / "diabetes.csv", index=False)
    wine = load_wine(as_frame=True)
    identifiers(wine.frame).assign(target=np.asarray(wine.target_names)[wine.target]).rename(
        columns={"target": "cultivar"}).to_csv(folder / "wine.csv", index=False)
    cancer = load_breast_cancer(as_frame=True)
    identifiers(cancer.frame).assign(target=np.where(cancer.target == 0, "Yes", "No")).rename(
        columns={"target": "malignant"}).to_csv(folder / "cancer.csv", index=False)


def looplab(tool, env: dict, project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("looplab"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def champion(tool, env: dict, project: Path, name: str) -> dict:
    "The model `name` of `looplab status --env name --json`, with its champion's version."
    result = looplab(tool, env, project, "status", "--env", name, "--json")
    assert result.returncode == 0, result.stderr
    model = next(m for m in json.loads(result.stdout)["models"] if m["name"] == name)
    return {**model, "champion": model["aliases"].get("champion")}


@pytest.fixture(scope="module")
def project(root, tmp_path_factory, tool, quiet_env):
    "A project copy in which `looplab init` wrote the four environments and `kedro run --env` ran each."
    folder = tmp_path_factory.mktemp("init")
    project = copy_project(root, folder / "project")
    (project / "conf" / "local").mkdir(exist_ok=True)
    base = {path.name: path.read_text() for path in (project / "conf" / "base").glob("*.yml")}
    write_datasets(project, folder)
    outputs = {}
    for name, (data, target, timestamp, _, _) in DATASETS.items():
        init = looplab(tool, quiet_env, project, "init", name, "--data", str(folder / data), "--target", target,
                       *(["--timestamp", timestamp] if timestamp else []))
        assert init.returncode == 0, init.stderr
        run = kedro_run(tool, quiet_env, project, "--env", name)
        outputs[name] = {"init": init.stdout, "run": run.stdout + run.stderr}
    return {"project": project, "folder": folder, "base": base, "outputs": outputs}


def test_init_says_what_it_wrote_and_what_to_run_next(project):
    said = project["outputs"]["wine"]["init"]
    assert "wrote conf/wine/" in said and "data/wine/01_raw/landing/wine.csv (178 rows)" in said
    assert "task: classification, target cultivar (3 classes: class_0, class_1, class_2)" in said
    assert "no time column: each row is timed by its arrival, a random fifth of the rows evaluates" in said
    assert "kedro run --env wine" in said and "looplab serve --env wine" in said
    assert "task: regression, target progression" in project["outputs"]["diabetes"]["init"]
    assert "split by time" in project["outputs"]["bikes"]["init"]


def test_each_dataset_replaces_the_demo_s_definition_in_its_environment(project):
    for name, (_, target, timestamp, task, _) in DATASETS.items():
        parameters = load_config(env=name, root=project["project"])
        data = parameters["data"]
        assert (data["target"], parameters["training"]["task"]) == (target, task), name
        assert data["event_time"] == ("column" if timestamp else "arrival"), name
        assert parameters["training"]["window"].get("split", "time") == ("time" if timestamp else "random"), name
        if name != "bikes":
            assert "bikers" not in json.dumps(parameters) and "weathersit" not in json.dumps(parameters), name
    wine = load_config(env="wine", root=project["project"])
    assert wine["data"]["validation"]["schema"]["columns"]["cultivar"]["allowed"] == ["class_0", "class_1", "class_2"]
    assert wine["evaluation"]["baseline"] == "prior"
    assert len(wine["training"]["features"]) == 13


def test_the_demo_and_conf_base_are_untouched(project):
    assert {path.name: path.read_text() for path in (project["project"] / "conf" / "base").glob("*.yml")} == project["base"]
    assert load_config(root=project["project"])["data"]["target"] == "bikers"
    # every run output of the environments is under data/NAME/: nothing in the demo's layer folders but .gitkeep
    for layer in ("02_intermediate", "03_primary", "04_feature", "06_models", "07_model_output", "08_reporting"):
        folder = project["project"] / "data" / layer
        assert not [path.name for path in folder.iterdir() if not path.name.startswith(".")], layer
    for name in DATASETS:
        assert list((project["project"] / "data" / name / "03_primary").glob("validated_*")), name


def test_every_row_is_validated_and_a_champion_beats_its_baseline(project, tool, quiet_env):
    for name, (data, _, _, _, metric) in DATASETS.items():
        run = project["outputs"][name]["run"]
        assert f"registered {name} version 1 (gate passed)" in run, run[-3000:]
        rows = len(pd.read_csv(project["folder"] / data))
        stored = pd.read_parquet(sorted((project["project"] / "data" / name / "03_primary").glob("validated_*/*/*"))[-1])
        assert len(stored) == rows, (name, len(stored), rows)  # every row valid: the schema was inferred from them
        model = champion(tool, quiet_env, project["project"], name)
        assert model["champion"] == "1", model
        version = next(v for v in model["versions"] if v["version"] == "1")
        assert version["metrics"][metric] < version["metrics"][f"baseline_{metric}"], (name, version["metrics"])
    assert "take their arrival as event time" in project["outputs"]["wine"]["run"]
    wine = next(v for v in champion(tool, quiet_env, project["project"], "wine")["versions"] if v["version"] == "1")
    assert json.loads(wine["tags"]["model.classes"]) == ["class_0", "class_1", "class_2"]  # the label mapping, on the version


def test_a_regression_champion_is_served(project, tool, quiet_env):
    port = free_port()
    record = pd.read_csv(project["folder"] / "diabetes.csv").drop(columns="progression").iloc[0].to_dict()
    with running_server([tool("looplab"), "serve", "--env", "diabetes", "--workers", "1", "--port", str(port)],
                        project["project"], quiet_env, f"http://127.0.0.1:{port}/ready", project["folder"] / "serve.log"):
        answer = requests.post(f"http://127.0.0.1:{port}/v1/models/diabetes/predict", json={"records": [record]}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 1 and 25 <= predictions[0] <= 346, predictions  # within the target's range


def test_a_classifier_is_served_with_its_class_and_every_class_s_probability(project, tool, quiet_env):
    port = free_port()
    rows = pd.read_csv(project["folder"] / "cancer.csv")
    records = rows.drop(columns="malignant").iloc[:40].to_dict("records")
    with running_server([tool("looplab"), "serve", "--env", "cancer", "--workers", "1", "--port", str(port)],
                        project["project"], quiet_env, f"http://127.0.0.1:{port}/ready", project["folder"] / "serve-cancer.log"):
        answer = requests.post(f"http://127.0.0.1:{port}/v1/models/cancer/predict", json={"records": records}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["classes"] == ["No", "Yes"] and len(body["predictions"]) == len(body["probabilities"]) == 40
    for label, probabilities in zip(body["predictions"], body["probabilities"], strict=True):
        assert abs(sum(probabilities) - 1) < 1e-9 and label == body["classes"][int(np.argmax(probabilities))]
    agreement = np.mean(np.asarray(body["predictions"]) == rows["malignant"].iloc[:40].to_numpy())
    assert agreement >= 0.9, agreement  # rows it learnt from, mostly: it answers in the labels' own words
    logged = [json.loads(line) for path in (project["project"] / "data" / "cancer" / "07_model_output" / "predictions").glob("*.jsonl")
              for line in path.read_text().splitlines()]
    assert sorted({entry["prediction"] for entry in logged}) <= ["No", "Yes"] and len(logged) == 40


def test_user_mistakes_get_one_line_errors(project, tool, quiet_env):
    data = str(project["folder"] / "wine.csv")
    for args, message in (
        (["init", "grapes", "--data", data, "--target", "variety"], "--target 'variety' is not a column"),
        (["init", "wine", "--data", data, "--target", "cultivar"], "conf/wine exists already"),
        (["init", "grapes", "--data", data + ".xlsx", "--target", "cultivar"], "no such file"),
        (["init", "Grapes!", "--data", data, "--target", "cultivar"], "NAME 'Grapes!'"),
        (["init", "grapes", "--data", data, "--target", "cultivar", "--timestamp", "alcohol"], "holds numbers, not times"),
        (["init", "grapes", "--data", data, "--target", "cultivar", "--task", "regression"], "is not numeric"),
    ):
        result = looplab(tool, quiet_env, project["project"], *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project["project"] / "conf" / "grapes").exists()


def test_data_that_does_not_fit_its_conf_ends_the_run_with_one_line(project, tool, quiet_env):
    "A landing file without a column the schema names: the run stops with the column and the conf key, not exit 0."
    data = project["folder"] / "wine.csv"
    init = looplab(tool, quiet_env, project["project"], "init", "grapes", "--data", str(data), "--target", "cultivar")
    assert init.returncode == 0, init.stderr
    landing = project["project"] / "data" / "grapes" / "01_raw" / "landing" / "wine.csv"
    pd.read_csv(landing).drop(columns="alcohol").to_csv(landing, index=False)
    run = kedro_run(tool, quiet_env, project["project"], "--env", "grapes", "-p", "data", check=False)
    assert run.returncode != 0, run.stdout[-2000:]
    assert "none of its 178 row(s) has the column(s) alcohol that data.validation.schema.columns names" in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    quarantined = sorted((project["project"] / "data" / "grapes" / "03_primary").glob("rides_quarantine.parquet/*/*"))
    assert quarantined and len(pd.read_parquet(quarantined[-1])) == 178  # every row kept, with its reason
    from looplab.ingestion import StateStore

    state = project["project"] / "data" / "grapes" / "02_intermediate" / "ingestion_state.db"
    assert not StateStore(state).taken_files("landing"), "nothing is committed: once the conf is fixed, the next run takes the file again"


def test_the_rest_of_the_loop_takes_the_environment(project, tool, quiet_env, root):
    "`looplab reproduce`, `looplab data versions` and a papermill training run, each given the environment."
    reproduced = looplab(tool, quiet_env, project["project"], "reproduce", "wine@champion", "--env", "wine")
    assert reproduced.returncode == 0 and "reproduced: every metric matches" in reproduced.stdout, reproduced.stdout + reproduced.stderr
    versions = looplab(tool, quiet_env, project["project"], "data", "versions", "--env", "diabetes", "--json")
    assert versions.returncode == 0, versions.stderr
    assert json.loads(versions.stdout)["validated_rides"]["versions"][0]["rows"] == 442
    output = project["folder"] / "train-diabetes.ipynb"
    run = subprocess.run([tool("papermill"), str(root / "notebooks" / "runs" / "train.ipynb"), str(output), "-k", "looplab",
                          "-p", "env", "diabetes", "-p", "root", str(project["project"]), "-p", "model_family", "linear"],
                         cwd=project["project"], env=quiet_env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    from mlflow import MlflowClient

    tracking = f"sqlite:///{project['project'] / 'mlflow.db'}"
    client = MlflowClient(tracking, registry_uri=tracking)
    experiment = client.get_experiment_by_name("diabetes-training")  # the environment's own experiment (its mlflow.yml)
    families = [r.data.params.get("training.model.family") for r in client.search_runs([experiment.experiment_id])]
    assert sorted(families) == ["hist_gradient_boosting", "linear"], families
    model = champion(tool, quiet_env, project["project"], "diabetes")
    assert [v["version"] for v in model["versions"]] == ["1"], "an exploratory run leaves the registry alone"
