"""The data layer on Dask: ingestion, validation and features on a dask.distributed LocalCluster give the pandas path's data exactly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from looplab.core import load_config
from looplab.scale import features_on_engine, ingest_on_engine, validate_on_engine
from looplab.sources import demo_rides, with_text_times

from conftest import copy_project, kedro_run

REGIONS = ("dc", "va", "md", "de", "nj")


@pytest.fixture(scope="module")
def cluster():
    "Two worker processes: tasks, data and errors cross process boundaries as on a real cluster."
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                      dashboard_address="127.0.0.1:0", host="127.0.0.1") as local, Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def landing(tmp_path_factory, root):
    "Five regions over four weeks in four landing files (Parquet and CSV), with bad rows of every kind."
    folder = tmp_path_factory.mktemp("landing")
    params = load_config("parameters", root=root)["data"]
    month = demo_rides(params, root)
    month = month[month["timestamp"] < "2011-01-29"].reset_index(drop=True)
    generator = np.random.default_rng(7)
    frames = []
    for region in REGIONS:
        frame = month.assign(region=region)
        scale = generator.lognormal(0, 0.2, len(frame))
        frame["casual"] = np.round(frame["casual"] * scale).astype("int64")
        frame["registered"] = np.round(frame["registered"] * scale).astype("int64")
        frame["bikers"] = frame["casual"] + frame["registered"]
        frames.append(frame.astype({"hr": object, "weathersit": object, "casual": object}))
    rides = pd.concat(frames, ignore_index=True)
    rides.loc[[5, 900], "hr"] = 27                        # out of range
    rides.loc[40, "weathersit"] = "hail"                   # not allowed
    rides.loc[77, "casual"] = -3                           # negative, and the counts no longer add up
    rides.loc[1500, "casual"] = "many"                     # not a number
    rides = pd.concat([rides, rides.iloc[[300, 2200]]], ignore_index=True)  # repeated keys
    parts = np.array_split(np.arange(len(rides)), 4)
    for index, rows in enumerate(parts):
        part = with_text_times(rides.iloc[rows].reset_index(drop=True))
        if index == 2:
            part.to_csv(folder / f"rides-{index}.csv", index=False)
        else:
            part.astype({"hr": str, "weathersit": str, "casual": str}).to_parquet(folder / f"rides-{index}.parquet", index=False)
    return folder, len(rides)


def run_params(root, tmp_path, landing_folder, engine: str) -> dict:
    "The project's `data` parameters, state under `tmp_path`, the landing folder the only source."
    params = copy.deepcopy(load_config("parameters", root=root)["data"])
    params["state_path"] = str(tmp_path / engine / "state.db")
    params["sources"] = {"landing": {**params["sources"]["landing"], "path": str(landing_folder)}}
    params["demo"] = {**params["demo"], "enabled": False}
    params["engine"] = engine
    params["dask"] = {"partitions": 3}
    return params


def data_layer(params: dict) -> tuple:
    batch, pending = ingest_on_engine(None, params)
    validated, quarantine, report = validate_on_engine(batch, params)
    return batch, pending, validated, quarantine, report, features_on_engine(validated, params)


def test_dask_path_gives_the_pandas_data(root, tmp_path, landing, cluster, monkeypatch):
    "Ingested, validated, quarantined and feature data identical on both engines; the report too."
    folder, rows = landing
    for module in ("looplab.ingestion", "looplab.scale"):  # one batch id on both engines
        monkeypatch.setattr(f"{module}.new_batch_id", lambda: "20260101T000000Z-test00")
    expected = data_layer(run_params(root, tmp_path, folder, "pandas"))
    got = data_layer(run_params(root, tmp_path, folder, "dask"))

    batch, pending, validated, quarantine, report, features = expected
    assert len(batch) == rows and len(quarantine) >= 6 and not report["rejected"], report
    assert report["reasons"]["duplicate key"] == 2 and len(validated) + len(quarantine) == rows  # of each repeated key, one row kept
    assert set(validated["region"]) == set(REGIONS) and features["bikers_lag_168h"].notna().sum() > 1000
    for name, mine, theirs in zip(("ingested", "pending", "validated", "quarantine", "report", "features"), got, expected, strict=True):
        if isinstance(theirs, pd.DataFrame):
            assert len(theirs), name
            pd.testing.assert_frame_equal(mine, theirs, obj=name)
        elif name == "report":
            assert mine.pop("engine") == "dask"
            mine.pop("created_at"), theirs.pop("created_at")
            assert json.dumps(mine, sort_keys=True, default=str) == json.dumps(theirs, sort_keys=True, default=str)
        else:
            assert mine == theirs, name
    # the cluster did the work: its workers ran validation and feature tasks
    names = {key.split("-")[0] for key in cluster.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))}
    assert any("check_partition" in name for name in names) and any("build_features" in name for name in names), names


def test_a_rejected_batch_is_rejected_the_same_way(root, tmp_path, landing, cluster, monkeypatch):
    folder, _ = landing
    for module in ("looplab.ingestion", "looplab.scale"):  # one batch id on both engines
        monkeypatch.setattr(f"{module}.new_batch_id", lambda: "20260101T000000Z-test00")
    outputs = {}
    for engine in ("pandas", "dask"):
        params = run_params(root, tmp_path, folder, engine)
        params["validation"] = {**params["validation"], "max_invalid_share": 0.0001}
        batch, _ = ingest_on_engine(None, params)
        outputs[engine] = validate_on_engine(batch, params)
    # each landing file with an invalid row is rejected on its own (the unit of acceptance), the others pass
    assert outputs["dask"][2]["rejected_units"] and outputs["dask"][2]["rejected_units"] == outputs["pandas"][2]["rejected_units"]
    assert all(unit.startswith("file ") for unit in outputs["pandas"][2]["rejected_units"])
    assert outputs["dask"][2]["rejection_reasons"] == outputs["pandas"][2]["rejection_reasons"]
    pd.testing.assert_frame_equal(outputs["dask"][0], outputs["pandas"][0])
    pd.testing.assert_frame_equal(outputs["dask"][1], outputs["pandas"][1])


def test_files_with_other_columns_are_joined_first_as_on_pandas(root, tmp_path, landing, cluster, monkeypatch):
    "A file without the entity column: its rows get no default entity (on both engines they are quarantined)."
    folder, _ = landing
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first = pd.read_parquet(folder / "rides-0.parquet").head(300)
    first.to_parquet(mixed / "a.parquet", index=False)
    first.iloc[100:200].drop(columns=["region"]).assign(timestamp=lambda f: f["timestamp"].str.replace("2011", "2012")).to_csv(mixed / "b.csv", index=False)
    for module in ("looplab.ingestion", "looplab.scale"):  # one batch id on both engines
        monkeypatch.setattr(f"{module}.new_batch_id", lambda: "20260101T000000Z-test00")
    outputs = {}
    for engine in ("pandas", "dask"):
        params = run_params(root, tmp_path, mixed, engine)
        batch, pending = ingest_on_engine(None, params)
        outputs[engine] = (batch, pending, *validate_on_engine(batch, params))
    pd.testing.assert_frame_equal(outputs["dask"][0], outputs["pandas"][0])
    assert outputs["dask"][1] == outputs["pandas"][1]
    pd.testing.assert_frame_equal(outputs["dask"][2], outputs["pandas"][2])
    pd.testing.assert_frame_equal(outputs["dask"][3], outputs["pandas"][3])
    assert outputs["pandas"][4]["reasons"]["region: missing"] == 100


def test_bad_engine_settings_are_named(root, tmp_path, landing):
    folder, _ = landing
    params = run_params(root, tmp_path, folder, "spark")
    with pytest.raises(ValueError, match="data.engine must be one of pandas, dask, got 'spark'"):
        ingest_on_engine(None, params)
    params = run_params(root, tmp_path, folder, "dask")
    params["dask"] = {"scheduler": "tcp://127.0.0.1:9", "connect_timeout_seconds": 1}
    with pytest.raises(ValueError, match=r"data.dask.scheduler tcp://127.0.0.1:9 is unreachable"):
        ingest_on_engine(None, params)
    params["dask"] = {"workers": 3}
    with pytest.raises(ValueError, match=r"data.dask: unknown setting\(s\) workers"):
        validate_on_engine(pd.DataFrame(), params)


def test_kedro_data_pipeline_on_dask(root, tmp_path, tool, quiet_env):
    "`kedro run -p data` with `data.engine=dask` (a LocalCluster in the Kedro process) stores the pandas run's tables."
    stored = {}
    for engine in ("pandas", "dask"):
        project = copy_project(root, tmp_path / engine)
        kedro_run(tool, quiet_env, project, "-p", "data", "--env", "test", "--params", f"data.engine={engine}")
        tables = {}
        for name, path in (("validated", "data/03_primary/validated_rides.parquet"), ("features", "data/04_feature/features.parquet")):
            versions = sorted((project / path).iterdir())
            tables[name] = pd.read_parquet(versions[-1] / (project / path).name)
        stored[engine] = tables
    for name in ("validated", "features"):
        dask, pandas = stored["dask"][name], stored["pandas"][name]
        assert len(pandas) > 400
        columns = [c for c in pandas.columns if c != "_batch_id"]  # each run has its own batch id
        pd.testing.assert_frame_equal(dask[columns], pandas[columns], obj=name)
