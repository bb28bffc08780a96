"""Data versions in a temporary project: Kedro's versioned layout, content hashes, diffs, MLflow lineage and `looplab data`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from kedro.io import Version
from kedro_datasets.pandas import ParquetDataset
from mlflow import MlflowClient

from looplab.cli import cli
from looplab.core import PROJECT_ROOT_VARIABLE, load_config, mlflow_settings
from looplab.versioning import (
    DATASETS,
    content_hash,
    dataset_paths,
    describe_ingested,
    diff_frames,
    diff_versions,
    list_versions,
    load_version,
    log_data_inputs,
    read_versions_log,
    record_data_versions,
)

FIRST, SECOND = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"


def rides(hours: int, start: str = "2011-01-01") -> pd.DataFrame:
    "A small canonical frame: one row per hour."
    generator = np.random.default_rng(7)
    return pd.DataFrame({
        "timestamp": pd.date_range(start, periods=hours, freq="h"),
        "region": "dc",
        "weathersit": generator.choice(["clear", "cloudy/misty", "light rain/snow"], hours),
        "temp": generator.uniform(0, 1, hours).round(2),
        "hr": np.arange(hours) % 24,
        "bikers": generator.integers(0, 300, hours),
    })


def outputs_of_a_run(validated: pd.DataFrame, batch_id: str) -> dict[str, pd.DataFrame]:
    "What the data layer stores in one run: the batch, the validated table, the features."
    features = validated[["timestamp", "region", "hr"]].assign(bikers_lag_24h=validated["bikers"].shift(24))
    batch = validated.tail(24).reset_index(drop=True).assign(_source="landing", _batch_id=batch_id)
    return {"ingested_batch": batch, "validated_rides": validated, "features": features}


@pytest.fixture(scope="module")
def project(root, tmp_path_factory) -> Path:
    "A project copy (conf + pyproject.toml) holding two stored runs of the data layer, written by Kedro's dataset."
    copy = tmp_path_factory.mktemp("versioning") / "project"
    copy.mkdir()
    shutil.copy(root / "pyproject.toml", copy)
    shutil.copytree(root / "conf", copy / "conf")
    (copy / "conf" / "local").mkdir(exist_ok=True)
    params = load_config(root=copy)["data"]
    first = rides(48)
    second = pd.concat([first, rides(24, "2011-01-03")], ignore_index=True)
    second.loc[5, "bikers"] = 999
    second["hum"] = 0.5
    second = second.drop(columns="region").astype({"hr": "float64"})
    runs = {FIRST: outputs_of_a_run(first.assign(region="dc"), "b-1"), SECOND: outputs_of_a_run(second.assign(region="dc"), "b-2")}
    runs[SECOND]["validated_rides"] = second  # the validated table of run two lost `region`
    for version, frames in runs.items():
        for name, path in dataset_paths(params, copy).items():
            ParquetDataset(filepath=str(path), version=Version(None, version)).save(frames[name])
    return copy


@pytest.fixture
def in_project(project, monkeypatch):
    "Run inside the project copy, with MLflow pointed back where it was afterwards."
    monkeypatch.setenv(PROJECT_ROOT_VARIABLE, str(project))
    monkeypatch.chdir(project)
    previous = mlflow.get_tracking_uri()
    yield project
    mlflow.set_tracking_uri(previous)


def params_of(project: Path) -> dict:
    return load_config(root=project)["data"]


def test_versions_are_listed_and_loaded_from_kedros_layout(project):
    paths = dataset_paths(params_of(project), project)
    validated = paths["validated_rides"]
    assert validated == project / "data" / "03_primary" / "validated_rides.parquet"
    assert (validated / FIRST / validated.name).is_file(), "Kedro's layout: <path>/<version>/<basename>"
    assert list_versions(validated) == [FIRST, SECOND]
    first, latest = load_version(validated, FIRST), load_version(validated)
    assert len(first) == 48 and len(latest) == 72
    pd.testing.assert_frame_equal(load_version(validated, "latest"), latest)
    pd.testing.assert_frame_equal(load_version(validated, "previous"), first)
    assert list_versions(project / "data" / "nothing.parquet") == []


def test_content_hash_names_the_content_not_the_layout(project):
    frame = rides(48)
    reference = content_hash(frame)
    assert content_hash(rides(48)) == reference, "same data, same hash"
    changed = frame.copy()
    changed.loc[10, "temp"] += 0.01
    assert content_hash(changed) != reference, "one changed value, another hash"

    relabelled = frame.set_axis(pd.RangeIndex(1000, 1048))
    blocks = pd.DataFrame({name: frame[name].to_numpy().copy() for name in frame.columns})
    numeric = frame[["temp", "bikers"]].astype("float64")
    fortran = pd.DataFrame(np.asfortranarray(numeric.to_numpy()), columns=numeric.columns)
    assert fortran.to_numpy().flags.f_contiguous
    assert content_hash(relabelled) == reference
    assert content_hash(blocks) == reference
    assert content_hash(fortran) == content_hash(numeric)

    stored = load_version(dataset_paths(params_of(project), project)["validated_rides"], FIRST)
    assert content_hash(stored) == content_hash(rides(48).assign(region="dc")), "a parquet round trip keeps the hash"
    assert content_hash(frame.iloc[::-1]) != reference, "row order counts"


def test_diff_reports_rows_schema_and_statistics(project):
    path = dataset_paths(params_of(project), project)["validated_rides"]
    difference = diff_versions(path, "previous", "latest", name="validated_rides")
    assert difference["before"]["version"] == FIRST and difference["after"]["version"] == SECOND
    assert difference["rows"] == {"before": 48, "after": 72, "change": 24}
    assert difference["columns"] == {
        "added": {"hum": "float64"},
        "removed": {"region": "object"},
        "retyped": {"hr": {"before": "int64", "after": "float64"}},
    }
    statistics = difference["statistics"]
    assert statistics["bikers"]["max"] == {"before": float(rides(48)["bikers"].max()), "after": 999.0}
    assert set(statistics["timestamp"]) == {"max"}
    assert "top" in statistics["weathersit"] or "distinct" in statistics["weathersit"]
    assert not difference["identical"]
    json.dumps(difference)

    frame = rides(48)
    nulls = frame.assign(temp=frame["temp"].where(frame.index % 4 > 0))
    assert diff_frames(frame, nulls)["statistics"]["temp"]["null_share"] == {"before": 0.0, "after": 0.25}
    relabelled = diff_frames(frame, frame.set_axis(range(48, 96)))
    assert relabelled["identical"] and relabelled["statistics"] == {} and relabelled["columns"]["retyped"] == {}
    categories = diff_frames(frame, frame.assign(weathersit="clear"))["statistics"]["weathersit"]
    assert categories["distinct"] == {"before": 3, "after": 1}
    assert categories["top"]["after"] == {"clear": 1.0}


def test_record_data_versions_logs_digests_to_mlflow_and_the_log(in_project):
    project = in_project
    params = params_of(project)
    paths = dataset_paths(params, project)
    frames = {name: load_version(path) for name, path in paths.items()}
    versions = record_data_versions(frames["ingested_batch"], frames["validated_rides"], frames["features"], params)

    assert versions["batch_id"] == "b-2"
    for name, record in versions["datasets"].items():
        assert record["version"] == SECOND, name
        assert record["content_hash"] == content_hash(frames[name])
        assert record["rows"] == len(frames[name])
        assert record["columns"] == {column: str(dtype) for column, dtype in frames[name].dtypes.items()}

    client = MlflowClient(tracking_uri=mlflow_settings(root=project)["tracking_uri"])
    assert client.get_experiment_by_name("looplab-data") is not None
    run = client.get_run(versions["mlflow_run_id"])
    logged = {item.dataset.name: item for item in run.inputs.dataset_inputs}
    assert set(logged) == set(DATASETS)
    for name, item in logged.items():
        record = versions["datasets"][name]
        assert item.dataset.digest == record["content_hash"]
        assert json.loads(item.dataset.source)["uri"] == f"{record['path']}/{SECOND}/{Path(record['path']).name}"
        tags = {tag.key: tag.value for tag in item.tags}
        assert tags["mlflow.data.context"] == DATASETS[name] and tags["version"] == SECOND

    log = read_versions_log(project / params["versions_log"])
    assert log[-1] == versions

    with mlflow.start_run(run_name="training") as training:
        log_data_inputs(versions)
    seen = {item.dataset.name: item.dataset.digest for item in client.get_run(training.info.run_id).inputs.dataset_inputs}
    assert seen == {name: record["content_hash"] for name, record in versions["datasets"].items()}


def test_the_ingested_batch_described_early_is_recorded_as_the_batch_itself(in_project):
    "The data pipeline describes the batch right after ingestion (so it can go once validated): the record is the same."
    project = in_project
    params = params_of(project)
    frames = {name: load_version(path) for name, path in dataset_paths(params, project).items()}
    described = json.loads(json.dumps(describe_ingested(frames["ingested_batch"], params)))  # as the production catalog stores it
    from_frame = record_data_versions(frames["ingested_batch"], frames["validated_rides"], frames["features"], params)
    from_description = record_data_versions(described, frames["validated_rides"], frames["features"], params)
    assert from_description["batch_id"] == from_frame["batch_id"] == "b-2"
    assert from_description["datasets"] == from_frame["datasets"]
    assert from_description["datasets"]["ingested_batch"]["version"] == SECOND

    client = MlflowClient(tracking_uri=mlflow_settings(root=project)["tracking_uri"])
    logged = {item.dataset.name: item.dataset for item in client.get_run(from_description["mlflow_run_id"]).inputs.dataset_inputs}
    raw = logged["ingested_batch"]
    assert raw.digest == from_frame["datasets"]["ingested_batch"]["content_hash"]
    assert [column["name"] for column in json.loads(raw.schema)["mlflow_colspec"]] == list(frames["ingested_batch"].columns)


def test_data_kept_in_memory_is_recorded_without_a_version(in_project):
    "The newest stored file is another run's data: naming it would be false lineage."
    project = in_project
    params = params_of(project)
    fresh = rides(5)
    versions = record_data_versions(fresh.assign(_batch_id="b-3"), fresh, fresh, params)
    assert {record["version"] for record in versions["datasets"].values()} == {None}
    assert versions["datasets"]["features"]["source"] == params["features_path"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_lists_versions_as_a_table_and_as_json(in_project):
    table = invoke("data", "versions")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["DATASET", "VERSION", "ROWS", "COLUMNS"]
    assert any(line.split()[:3] == ["validated_rides", SECOND, "72"] and line.endswith("latest") for line in lines), table.output

    as_json = invoke("data", "versions", "--dataset", "validated", "--json")
    assert as_json.exit_code == 0, as_json.output
    history = json.loads(as_json.output)
    assert list(history) == ["validated_rides"]
    assert [v["version"] for v in history["validated_rides"]["versions"]] == [FIRST, SECOND]
    assert history["validated_rides"]["versions"][1]["note"] == "latest"

    newest = invoke("data", "versions", "--dataset", "validated", "--last", "1")
    assert newest.exit_code == 0, newest.output
    assert SECOND in newest.output and FIRST not in newest.output, newest.output
    assert "older versions not shown (--last 0 shows all): validated_rides 1" in newest.output
    every = invoke("data", "versions", "--dataset", "validated", "--last", "0")
    assert FIRST in every.output and SECOND in every.output and "not shown" not in every.output


def test_cli_diff_between_versions(in_project):
    text = invoke("data", "diff", FIRST, "latest")
    assert text.exit_code == 0, text.output
    assert f"validated_rides: {FIRST} -> {SECOND}" in text.output
    assert "rows: 48 -> 72 (+24)" in text.output
    assert "added hum (float64); removed region (object); retyped hr (int64 -> float64)" in text.output

    as_json = invoke("data", "diff", "previous", "latest", "--dataset", "features", "--json")
    assert as_json.exit_code == 0, as_json.output
    difference = json.loads(as_json.output)
    assert difference["dataset"] == "features" and difference["rows"]["change"] == 24


def test_cli_names_the_available_versions_for_a_bad_id(in_project):
    result = invoke("data", "diff", "2025-12-31T00.00.00.000Z", "latest")
    assert result.exit_code == 1
    assert "no version '2025-12-31T00.00.00.000Z'" in result.output
    assert f"available (newest first): {SECOND}, {FIRST}; or 'latest', 'previous'" in result.output
    unknown = invoke("data", "versions", "--dataset", "gold")
    assert unknown.exit_code == 1 and "unknown dataset 'gold'" in unknown.output


def test_cli_entry_point_fails_without_a_stack_trace(tool, quiet_env, project):
    result = subprocess.run(
        [tool("looplab"), "data", "diff", "nope", "latest", "--dataset", "raw"],
        cwd=project, env={**quiet_env, PROJECT_ROOT_VARIABLE: str(project)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Error:" in result.stderr and "no version 'nope'" in result.stderr and FIRST in result.stderr
    assert "Traceback" not in result.stderr
    info = subprocess.run([tool("looplab"), "info", "--json"], cwd=project, env={**quiet_env, PROJECT_ROOT_VARIABLE: str(project)},
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and json.loads(info.stdout)["project_root"] == str(project), info.stderr
