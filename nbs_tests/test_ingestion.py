"""looplab.ingestion end to end: the nodes under Kedro with versioned Parquet datasets, failures that
must not move the watermarks, reruns that must not double rows, and sources that send odd times and types."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset

from looplab.core import load_config
from looplab.ingestion import StateStore, append_validated, commit_watermarks, ingest_sources, read_revisions
from looplab.sources import SourceError, replay_day, seed_demo_sources

from conftest import free_port


@pytest.fixture
def params(root, tmp_path) -> dict:
    "The project's data parameters, every written path under tmp_path; the demo trimmed to a week and two days."
    params = json.loads(json.dumps(load_config(root=root)["data"]))
    params["state_path"] = str(tmp_path / "state.db")
    params["validated_path"] = str(tmp_path / "validated_rides.parquet")
    params["sources"]["history"]["url"] = f"sqlite:///{tmp_path}/operational.db"
    params["sources"]["landing"]["path"] = str(tmp_path / "landing")
    params["demo"].update(raw_csv=str(root / "data" / "01_raw" / "Bikeshare.csv"), history_end="2011-01-08", landing_days=2)
    return params


def stand_in_validation(batch: pd.DataFrame, params: dict) -> pd.DataFrame:
    "Validation is another module: keep rows with a time, drop the raw-time column, as it would."
    return batch[batch[params["timestamp"]].notna()].drop(columns=["_raw_timestamp"])


def data_pipeline(validate=stand_in_validation) -> Pipeline:
    return Pipeline([
        Node(seed_demo_sources, "params:data", "demo_sources", name="seed"),
        Node(ingest_sources, ["demo_sources", "params:data"], ["ingested_batch", "pending_watermarks"], name="ingest"),
        Node(validate, ["ingested_batch", "params:data"], "validated_batch", name="validate"),
        Node(append_validated, ["validated_batch", "params:data"], ["validated_rides", "append_report"], name="append"),
        Node(commit_watermarks, ["pending_watermarks", "validated_rides", "params:data"], "committed_watermarks", name="commit"),
    ])


def run(params: dict, tmp_path: Path, validate=stand_in_validation) -> dict:
    "One Kedro run with the catalog's versioned Parquet datasets under tmp_path; the in-memory outputs."
    catalog = DataCatalog({
        "params:data": MemoryDataset(params),
        "ingested_batch": ParquetDataset(filepath=str(tmp_path / "ingested_batch.parquet"), version=Version(None, None)),
        "validated_rides": ParquetDataset(filepath=params["validated_path"], version=Version(None, None)),
        "append_report": MemoryDataset(),
        "committed_watermarks": MemoryDataset(),
    })
    SequentialRunner().run(data_pipeline(validate), catalog)
    return {name: catalog.load(name) for name in ("append_report", "committed_watermarks", "validated_rides")}


def test_pipeline_runs_incrementally_and_reruns_add_nothing(params, tmp_path):
    first = run(params, tmp_path)
    history_rows = int((pd.read_csv(params["demo"]["raw_csv"])["day"] < 8).sum())
    landing_rows = sum(len(pd.read_csv(p)) for p in (tmp_path / "landing").glob("*.csv"))
    assert first["append_report"]["added"] == history_rows + landing_rows
    assert first["committed_watermarks"]["sources"]["history"]["watermark"] == "2011-01-07 23:00:00"
    assert len(first["committed_watermarks"]["sources"]["landing"]["files"]) == 2

    second = run(params, tmp_path)  # nothing new anywhere
    assert second["append_report"]["added"] == 0 and second["append_report"]["rows_after"] == len(first["validated_rides"])
    assert second["committed_watermarks"]["sources"]["history"]["watermark"] == "2011-01-07 23:00:00"

    replayed = replay_day(params, "2011-01-11")
    third = run(params, tmp_path)
    assert third["append_report"]["added"] == len(pd.read_csv(replayed)) and third["append_report"]["rows_before"] == len(first["validated_rides"])
    table = third["validated_rides"]
    assert not table.duplicated(["region", "timestamp"]).any()
    assert table["timestamp"].is_monotonic_increasing and set(table["region"]) == {"dc"}
    assert len(list((tmp_path / "validated_rides.parquet").iterdir())) == 3  # Kedro kept each run's version


def test_a_run_failing_after_ingestion_commits_nothing_and_the_rerun_does_not_double(params, tmp_path):
    def failing_validation(batch, params):
        raise RuntimeError("validation crashed")

    seed_demo_sources(params)
    with pytest.raises(Exception, match="validation crashed"):
        run(params, tmp_path, validate=failing_validation)
    assert StateStore(params["state_path"]).snapshot() == {"watermarks": {}, "files": {}}
    first = run(params, tmp_path)
    rerun_batch, _ = ingest_sources({}, params)
    assert len(rerun_batch) == 0
    # a run that stored the table but died before the commit: the same rows come again, and add nothing
    store = StateStore(params["state_path"])
    with store.transaction() as connection:
        connection.execute("DELETE FROM watermarks")
        connection.execute("DELETE FROM taken_files")
    again = run(params, tmp_path)
    assert again["append_report"]["added"] == 0 and again["append_report"]["unchanged"] == len(first["validated_rides"])
    assert len(again["validated_rides"]) == len(first["validated_rides"])


def test_a_failing_source_leaves_the_state_unchanged_and_the_rerun_succeeds(params, tmp_path):
    seed_demo_sources(params)
    run(params, tmp_path)
    before = StateStore(params["state_path"]).snapshot()
    assert before["watermarks"]["history"] == "2011-01-07 23:00:00"

    replay_day(params, "2011-01-10")
    (tmp_path / "landing" / "rides_2011-01-11.csv").write_bytes("timestamp,hr\n2011-01-11 00:00:00,0\n".encode("utf-16"))
    with pytest.raises(SourceError, match=r"source 'landing': file rides_2011-01-11.csv is UTF-16"):
        ingest_sources({}, {**params, "on_bad_file": "fail"})  # bad files fail the run (the default moves them aside)
    assert StateStore(params["state_path"]).snapshot() == before

    params["sources"]["history"]["table"] = "no_such_table"
    (tmp_path / "landing" / "rides_2011-01-11.csv").unlink()
    with pytest.raises(SourceError, match=r"source 'history': table 'no_such_table' does not exist"):
        ingest_sources({}, params)  # not the whole run: seeding would create the table
    assert StateStore(params["state_path"]).snapshot() == before

    params["sources"]["history"]["table"] = "rides"
    after = run(params, tmp_path)
    assert after["append_report"]["added"] == len(pd.read_csv(tmp_path / "landing" / "rides_2011-01-10.csv"))
    state = StateStore(params["state_path"]).snapshot()
    assert len(state["files"]["landing"]) == 3 and state["watermarks"]["history"] == before["watermarks"]["history"]


def test_bad_database_url_stops_the_run_with_the_source_named(params, tmp_path):
    params["sources"]["history"]["url"] = f"sqlite:///{tmp_path}/missing/operational.db"
    params["demo"]["enabled"] = False
    (tmp_path / "landing").mkdir()
    with pytest.raises(SourceError, match=r"^source 'history': database sqlite:///.* is unreachable"):
        ingest_sources({}, params)
    assert StateStore(params["state_path"]).snapshot() == {"watermarks": {}, "files": {}}


class ZonedApi(BaseHTTPRequestHandler):
    "Two pages of rides with zone-aware times, numbers sometimes sent as text, one garbled time."
    pages = {
        None: {"records": [{"timestamp": "2011-03-13T06:00:00Z", "region": "dc", "hr": 1, "bikers": 3},
                           {"timestamp": "2011-03-13T07:00:00Z", "region": "dc", "hr": "3", "bikers": 4}], "next": "2"},
        "2": {"records": [{"timestamp": "2011-07-01T12:00:00+00:00", "region": "arlington", "hr": 8, "bikers": 50},
                          {"timestamp": "soon", "region": "dc", "hr": 9, "bikers": 1}], "next": None},
    }
    fail = False

    def do_GET(self):
        page = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if p).get("page")
        status, body = (503, b"{}") if ZonedApi.fail else (200, json.dumps(self.pages[page]).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def zoned_api():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), ZonedApi)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/rides"
    server.shutdown()
    server.server_close()
    ZonedApi.fail = False


def test_http_source_times_and_types_are_normalised(params, tmp_path, zoned_api):
    params["sources"] = {"api": {**params["sources"]["api"], "enabled": True, "url": zoned_api, "retries": 2, "backoff_seconds": 0.01}}
    batch, pending = ingest_sources({}, params)
    assert [str(t) for t in batch["timestamp"][:3]] == ["2011-03-13 01:00:00", "2011-03-13 03:00:00", "2011-07-01 08:00:00"]
    assert pd.isna(batch["timestamp"][3]) and batch["_raw_timestamp"][3] == "soon"  # kept, for quarantine
    assert list(batch["region"]) == ["dc", "dc", "arlington", "dc"]
    assert list(batch["hr"]) == ["1", "3", "8", "9"]  # mixed numbers and text: stored as text, as sent
    batch.to_parquet(tmp_path / "batch.parquet")  # one type per column: storable
    assert pending["sources"]["api"] == {"kind": "http", "rows": 4, "watermark": "2011-07-01T12:00:00+00:00",
                                         "previous_watermark": None, "files": [], "rejected": [], "stamps": {}}
    commit_watermarks(pending, batch, params)
    assert StateStore(params["state_path"]).watermark("api") == "2011-07-01T12:00:00+00:00"

    ZonedApi.fail = True
    with pytest.raises(SourceError, match=r"source 'api': .*failed after 2 attempt\(s\): HTTP 503"):
        ingest_sources({}, params)
    assert StateStore(params["state_path"]).watermark("api") == "2011-07-01T12:00:00+00:00"


def test_an_empty_run_still_has_the_canonical_columns(params, tmp_path):
    params["demo"]["enabled"] = False
    params["sources"] = {"landing": params["sources"]["landing"]}
    (tmp_path / "landing").mkdir()
    batch, pending = ingest_sources({}, params)
    assert len(batch) == 0 and pending["sources"]["landing"]["rows"] == 0
    assert {"timestamp", "region", *params["validation"]["schema"]["columns"], "_source", "_batch_id"} <= set(batch.columns)
    batch.to_parquet(tmp_path / "empty.parquet")


def test_append_validated_upserts_by_key(params, tmp_path):
    def rows(values: dict[str, int]) -> pd.DataFrame:
        return pd.DataFrame({"timestamp": pd.to_datetime(list(values)), "region": "dc", "bikers": list(values.values()),
                             "_source": "s", "_batch_id": "b", "_file": "x.csv"})

    def store(table: pd.DataFrame, version: str) -> None:
        ParquetDataset(filepath=params["validated_path"], version=Version(None, version)).save(table)

    table, report = append_validated(rows({"2011-01-01 00:00": 1, "2011-01-01 01:00": 2}), params)
    assert report == {"rows_before": 0, "added": 2, "updated": 0, "unchanged": 0, "kept_stored": 0, "rows_after": 2, "batch_rows": 2,
                      "version_read": None, "revisions": {"rows": 0, "rule": "update", "kept_in": None, "held": 0}}
    assert "_file" not in table.columns
    store(table, "2026-01-01T00.00.00.000Z")
    for _ in range(2):  # the same batch again and again: no new rows
        table, report = append_validated(rows({"2011-01-01 00:00": 1, "2011-01-01 01:00": 2}), params)
        assert (report["added"], report["unchanged"], len(table)) == (0, 2, 2)
    table, report = append_validated(rows({"2011-01-01 01:00": 7, "2010-12-31 23:00": 5}), params)
    assert (report["added"], report["updated"], report["unchanged"], report["rows_after"]) == (1, 1, 0, 3)
    assert table["bikers"].tolist() == [5, 1, 7] and table["timestamp"].is_monotonic_increasing
    assert report["revisions"]["rows"] == 1 and report["revisions"]["kept_in"]  # the revised value: 2 before, 7 now
    assert read_revisions(params)["bikers"].tolist() == [2]
    with pytest.raises(ValueError, match="lacks the key column"):
        append_validated(rows({"2011-01-01 00:00": 1}).drop(columns="region"), params)
