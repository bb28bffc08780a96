"""Validation on bad input: every row ends valid or quarantined with a reason, batches are rejected whole by conf's rules, and reports reach MLflow."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from looplab.core import load_config
from looplab.validation import build_schema, validate_batch
from looplab.validation_report import log_validation_report, report_validation, validation_report_html

CANONICAL_DTYPES = {
    "timestamp": "datetime64[ns]", "region": "object", "season": "int64", "hr": "int64", "holiday": "int64",
    "weekday": "int64", "workingday": "int64", "weathersit": "object", "temp": "float64", "atemp": "float64",
    "hum": "float64", "windspeed": "float64", "casual": "int64", "registered": "int64", "bikers": "int64",
    "_source": "object", "_batch_id": "object",
}


@pytest.fixture(scope="module")
def params() -> dict:
    return load_config("parameters", env="test")["data"]


def with_validation(params: dict, **changes) -> dict:
    changed = copy.deepcopy(params)
    for key, value in changes.items():
        if key in ("nullable", "max_null_fraction"):
            changed["validation"]["schema"][key] = value
        else:
            changed["validation"][key] = value
    return changed


def clean_batch(rows: int) -> pd.DataFrame:
    "`rows` valid canonical rows, one per hour; `_source` marks each row so it can be followed through."
    hours = np.arange(rows)
    casual, registered = hours % 7, 20 + hours % 11
    return pd.DataFrame({
        "timestamp": pd.date_range("2011-03-01", periods=rows, freq="h"), "region": "dc",
        "season": 1, "hr": hours % 24, "holiday": 0, "weekday": (hours // 24 + 2) % 7, "workingday": 1,
        "weathersit": "cloudy/misty", "temp": 0.3, "atemp": 0.31, "hum": 0.5, "windspeed": 0.2,
        "casual": casual, "registered": registered, "bikers": casual + registered,
        "_source": [f"row{i}" for i in hours], "_batch_id": "batch-1",
    })


def reason_of(quarantine: pd.DataFrame, row: int) -> str:
    return quarantine.set_index("_row").loc[row, "_reason"]


def assert_split(batch: pd.DataFrame, validated: pd.DataFrame, quarantine: pd.DataFrame, report: dict) -> None:
    "The invariants of every validation: each row in exactly one output, reasons given, counts and dtypes right."
    rows_in = len(batch)
    assert report["rows_in"] == rows_in == len(validated) + len(quarantine)
    assert (report["rows_valid"], report["rows_quarantined"]) == (len(validated), len(quarantine))
    assert quarantine["_row"].is_unique and set(quarantine["_row"]) <= set(range(rows_in))
    assert quarantine["_reason"].map(lambda reason: isinstance(reason, str) and reason.strip() != "").all()
    markers = batch["_source"].tolist()
    valid_markers, quarantined_markers = set(validated["_source"]), set(quarantine["_source"])
    assert not valid_markers & quarantined_markers, "a row is both valid and quarantined"
    assert valid_markers | quarantined_markers == set(markers)
    assert quarantine["_source"].tolist() == [markers[row] for row in quarantine["_row"]]
    assert validated.dtypes.astype(str).to_dict() == CANONICAL_DTYPES
    if report["rejected"]:
        assert validated.empty and len(quarantine) == rows_in
        assert quarantine["_reason"].str.startswith("batch rejected: ").all()
    json.dumps(report)


def test_clean_batch_passes_whole(params):
    batch = clean_batch(48).assign(_raw_timestamp=None)
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert (len(validated), len(quarantine), report["rejected"], report["invalid_share"]) == (48, 0, False, 0.0)
    assert "_raw_timestamp" not in validated.columns
    pd.testing.assert_series_equal(validated["bikers"], batch["bikers"].astype("int64"))
    build_schema(params).validate(validated)


def test_nans_go_to_quarantine_with_the_column_named(params):
    batch = clean_batch(20)
    batch.loc[3, "temp"] = np.nan
    batch.loc[7, "weathersit"] = None
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert quarantine["_row"].tolist() == [3, 7]
    assert reason_of(quarantine, 3) == "temp is missing"
    assert reason_of(quarantine, 7) == "weathersit is missing"
    assert report["null_fractions"]["temp"] == pytest.approx(0.05)
    assert report["reasons"] == {"temp: missing": 1, "weathersit: missing": 1}


def test_out_of_range_and_unknown_values(params):
    batch = clean_batch(30)
    batch.loc[1, "hr"] = 27
    batch.loc[2, "casual"], batch.loc[2, "bikers"] = -4, batch.loc[2, "registered"] - 4
    batch.loc[3, "holiday"] = 2
    batch.loc[4, "weathersit"] = "sunny"
    batch.loc[5, "hum"] = 1.2
    batch.loc[6, "bikers"] = 999
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert reason_of(quarantine, 1) == "hr=27 outside 0..23"
    assert reason_of(quarantine, 2) == "casual=-4 below 0"
    assert reason_of(quarantine, 3) == "holiday=2 not one of 0, 1"
    assert reason_of(quarantine, 4).startswith("weathersit='sunny' not one of 'clear'")
    assert reason_of(quarantine, 5) == "hum=1.2 outside 0..1"
    assert reason_of(quarantine, 6).startswith("counts_add_up failed: casual + registered == bikers (casual=6, ")
    assert report["invalid_share"] == pytest.approx(6 / 30)
    assert not report["rejected"]


def test_wrong_types_are_coerced_or_quarantined(params):
    batch = clean_batch(30).astype({"hr": object, "temp": object, "season": object})
    for column in ("casual", "registered", "bikers"):
        batch[column] = batch[column].astype(str)  # numbers as text: fine
    batch.loc[0, "hr"] = "abc"
    batch.loc[1, "hr"] = 1.5
    batch.loc[2, "hr"] = "2.0"
    batch.loc[3, "temp"] = "warm"
    batch.loc[4, "temp"] = "0.75"
    batch.loc[5, "temp"] = np.inf
    batch.loc[6, "season"] = "1"
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert quarantine["_row"].tolist() == [0, 1, 3, 5]
    assert reason_of(quarantine, 0) == "hr='abc' is not an integer"
    assert reason_of(quarantine, 1) == "hr=1.5 is not an integer"
    assert reason_of(quarantine, 3) == "temp='warm' is not a finite number"
    assert reason_of(quarantine, 5) == "temp=inf is not a finite number"
    assert quarantine.set_index("_row").loc[0, "hr"] == "abc", "the quarantine keeps the original value"
    kept = validated.set_index("_source")
    assert kept.loc["row2", "hr"] == 2 and kept.loc["row4", "temp"] == 0.75 and kept.loc["row6", "season"] == 1


def test_unparseable_and_zone_aware_timestamps(params):
    batch = clean_batch(20)
    batch["_raw_timestamp"] = None
    batch.loc[2, "timestamp"] = pd.NaT
    batch.loc[2, "_raw_timestamp"] = "31/02/2011 25:00"
    batch.loc[3, "timestamp"] = pd.NaT
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert reason_of(quarantine, 2) == "timestamp='31/02/2011 25:00' is not a valid time"
    assert reason_of(quarantine, 3) == "timestamp is missing"
    assert quarantine.set_index("_row").loc[2, "_raw_timestamp"] == "31/02/2011 25:00"

    aware = clean_batch(3)
    aware["timestamp"] = aware["timestamp"].dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    validated, _, _ = validate_batch(aware, params)
    assert validated["timestamp"].tolist() == clean_batch(3)["timestamp"].tolist()


def test_a_repeated_key_keeps_one_row_by_the_rule_and_quarantines_the_others(params):
    batch = clean_batch(20)
    batch.loc[[4, 8], "timestamp"] = batch.loc[2, "timestamp"]
    validated, quarantine, report = validate_batch(batch, params)  # duplicates: last (base conf)
    assert_split(batch, validated, quarantine, report)
    assert quarantine["_row"].tolist() == [2, 4]
    assert set(quarantine["_reason"]) == {"duplicate key (region='dc', timestamp=2011-03-01 02:00:00) in 3 rows: "
                                          "row 8 of the batch kept (validation.duplicates: last)"}
    assert report["reasons"] == {"duplicate key": 2} and not report["rejected"]
    assert validated["timestamp"].is_unique and batch.loc[8, "hr"] in validated["hr"].tolist()
    first = {**params, "validation": {**params["validation"], "duplicates": "first"}}
    assert validate_batch(batch, first)[1]["_row"].tolist() == [4, 8]
    none = {**params, "validation": {**params["validation"], "duplicates": "none", "max_invalid_share": 0.5}}
    _, quarantine, report = validate_batch(batch, none)
    assert quarantine["_row"].tolist() == [2, 4, 8] and report["reasons"] == {"duplicate key": 3}
    with pytest.raises(ValueError, match="data.validation.duplicates must be one of last, first, none"):
        validate_batch(batch, {**params, "validation": {**params["validation"], "duplicates": "newest"}})


def test_one_bad_file_never_takes_another_file_s_rows_with_it(params):
    good, bad = clean_batch(10).assign(_file="good.csv"), clean_batch(20).iloc[10:].assign(_file="bad.csv")
    bad.loc[bad.index[:5], "hr"] = 99  # half the file invalid: over max_invalid_share for this file alone
    validated, quarantine, report = validate_batch(pd.concat([good, bad], ignore_index=True), params)
    assert len(validated) == 10 and set(validated["timestamp"]) == set(good["timestamp"])
    assert len(quarantine) == 10 and quarantine["_reason"].str.startswith("file bad.csv rejected: 50.0% of rows invalid").all()
    assert report["rejected_units"] == {"file bad.csv": ["50.0% of rows invalid, over max_invalid_share 20.0%"]}
    assert not report["rejected"]  # the batch as a whole was not


def test_missing_columns_reject_the_batch(params):
    batch = clean_batch(8).drop(columns=["hum", "region"])
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert report["rejected"] and report["missing_columns"] == ["region", "hum"]
    assert report["rejection_reasons"] == ["missing column(s) region, hum"]
    assert reason_of(quarantine, 0) == "batch rejected: missing column(s) region, hum"


def test_extra_columns_reject_or_drop_as_conf_says(params):
    batch = clean_batch(8).assign(comment="late", station=3)
    validated, quarantine, report = validate_batch(batch, with_validation(params, extra_columns="reject"))
    assert_split(batch, validated, quarantine, report)
    assert report["rejected"] and report["extra_columns"] == ["comment", "station"]
    assert reason_of(quarantine, 0) == "batch rejected: extra column(s) comment, station (extra_columns: reject)"
    assert quarantine["station"].tolist() == ["3"] * 8

    validated, quarantine, report = validate_batch(batch, with_validation(params, extra_columns="drop"))
    assert_split(batch, validated, quarantine, report)
    assert not report["rejected"] and len(validated) == 8
    assert report["extra_columns"] == ["comment", "station"] and report["extra_columns_policy"] == "drop"
    assert not {"comment", "station"} & set(validated.columns)

    with pytest.raises(ValueError, match="extra_columns must be 'reject' or 'drop'"):
        validate_batch(batch, with_validation(params, extra_columns="keep"))


def test_empty_batch_is_valid_and_typed(params):
    for batch in (clean_batch(0), pd.DataFrame()):
        validated, quarantine, report = validate_batch(batch, params)
        assert (report["rows_in"], report["rows_valid"], report["rows_quarantined"]) == (0, 0, 0)
        assert not report["rejected"] and report["invalid_share"] == 0.0
        assert validated.dtypes.astype(str).to_dict() == CANONICAL_DTYPES
        assert {"_row", "_reason", "_source", "_batch_id"} <= set(quarantine.columns)
        json.dumps(report)
    assert report["missing_columns"][:2] == ["timestamp", "region"], "the report still says what an empty frame lacks"


def test_invalid_share_over_threshold_keeps_the_whole_batch(params):
    batch = clean_batch(10)
    batch.loc[[0, 1, 2], "hr"] = 99   # 30% invalid, over the 20% allowed
    validated, quarantine, report = validate_batch(batch, params)
    assert_split(batch, validated, quarantine, report)
    assert report["rejected"] and report["invalid_share"] == pytest.approx(0.3)
    assert report["rejection_reasons"] == ["30.0% of rows invalid, over max_invalid_share 20.0%"]
    assert reason_of(quarantine, 0) == "batch rejected: 30.0% of rows invalid, over max_invalid_share 20.0%; hr=99 outside 0..23"
    assert reason_of(quarantine, 5) == "batch rejected: 30.0% of rows invalid, over max_invalid_share 20.0%"

    batch.loc[[1, 2], "hr"] = [1, 2]  # 10%: only the bad row stays back
    validated, quarantine, report = validate_batch(batch, params)
    assert not report["rejected"] and quarantine["_row"].tolist() == [0]


def test_nullable_columns_are_limited_by_max_null_fraction(params):
    batch = clean_batch(10)
    batch.loc[[0, 1], "windspeed"] = np.nan
    loose = with_validation(params, nullable=["windspeed"], max_null_fraction=0.25)
    validated, quarantine, report = validate_batch(batch, loose)
    assert_split(batch, validated, quarantine, report)
    assert len(validated) == 10 and validated["windspeed"].isna().sum() == 2

    strict = with_validation(params, nullable=["windspeed"], max_null_fraction=0.1)
    validated, quarantine, report = validate_batch(batch, strict)
    assert_split(batch, validated, quarantine, report)
    assert report["rejection_reasons"] == ["column windspeed is 20.0% null, over max_null_fraction 10.0%"]


def test_quarantine_stores_as_parquet(params, tmp_path):
    batch = clean_batch(10).astype({"hr": object})
    batch.loc[0, "hr"] = "abc"
    batch.loc[1, "temp"] = np.nan
    _, quarantine, _ = validate_batch(batch, with_validation(params, max_invalid_share=1.0))
    quarantine.to_parquet(tmp_path / "quarantine.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "quarantine.parquet"), quarantine)


def test_conf_mistakes_are_named(params):
    broken = copy.deepcopy(params)
    broken["validation"]["schema"]["checks"] = {"sums": "casual + riders == bikers"}
    with pytest.raises(ValueError, match="checks.sums: cannot evaluate"):
        build_schema(broken)
    broken = copy.deepcopy(params)
    broken["validation"]["schema"]["columns"]["hr"] = {"dtype": "integer"}
    with pytest.raises(ValueError, match="columns.hr: dtype must be one of"):
        validate_batch(clean_batch(2), broken)


def test_html_page_reads_and_escapes(params):
    batch = clean_batch(10)
    batch.loc[0, "weathersit"] = "<script>alert(1)</script>"
    _, _, report = validate_batch(batch, params)
    page = validation_report_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    for fact in ("accepted", "weathersit: isin", "10", "Quarantined rows", "null fraction"):
        assert fact in page, fact


# --- property test ---------------------------------------------------------------------------

FAULTS = ("none", "nan", "out_of_range", "not_a_number", "number_as_text", "duplicate", "no_time", "sum")


@st.composite
def malformed_batches(draw):
    rows = draw(st.integers(0, 25))
    batch = clean_batch(rows).astype({"hr": object, "temp": object, "casual": object})
    batch["_raw_timestamp"] = None
    for row in range(rows):
        fault = draw(st.sampled_from(FAULTS + ("none",) * 14))  # mostly clean rows, so batches also split
        if fault == "nan":
            batch.loc[row, draw(st.sampled_from(["temp", "weathersit", "hr", "region"]))] = None
        elif fault == "out_of_range":
            batch.loc[row, "hr"] = draw(st.sampled_from([-1, 24, 1000]))
        elif fault == "not_a_number":
            batch.loc[row, draw(st.sampled_from(["hr", "temp", "casual"]))] = draw(st.sampled_from(["abc", "", "1,5", "1.5"]))
        elif fault == "number_as_text":
            batch.loc[row, "temp"] = str(batch.loc[row, "temp"])
        elif fault == "duplicate" and rows > 1:
            batch.loc[row, "timestamp"] = batch.loc[draw(st.integers(0, rows - 1)), "timestamp"]
        elif fault == "no_time":
            batch.loc[row, "timestamp"] = pd.NaT
            batch.loc[row, "_raw_timestamp"] = draw(st.sampled_from([None, "tomorrow"]))
        elif fault == "sum":
            batch.loc[row, "bikers"] = -1
    if draw(st.integers(0, 3)) == 0:
        batch = batch.drop(columns=[draw(st.sampled_from(["hum", "season", "bikers", "region"]))])
    if draw(st.integers(0, 3)) == 0:
        batch["unexpected"] = draw(st.sampled_from(["x", 1.0]))
    policy = draw(st.sampled_from(["reject", "drop"]))
    share = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    return batch, policy, share


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_batches())
def test_every_row_ends_in_exactly_one_output(params, case):
    batch, policy, share = case
    validated, quarantine, report = validate_batch(batch, with_validation(params, extra_columns=policy, max_invalid_share=share))
    assert_split(batch, validated, quarantine, report)
    if not report["rejected"]:
        build_schema(params).validate(validated)


# --- MLflow ----------------------------------------------------------------------------------

@pytest.fixture
def scratch_project(root, tmp_path, monkeypatch) -> Path:
    "A temporary project root with the real conf, so MLflow writes its store there."
    project = tmp_path / "project"
    shutil.copytree(root / "conf", project / "conf")
    (project / "conf" / "local").mkdir(exist_ok=True)
    (project / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "looplab"\n')
    monkeypatch.setenv("LOOPLAB_PROJECT_ROOT", str(project))
    previous = mlflow.get_tracking_uri()
    yield project
    mlflow.set_tracking_uri(previous)


def test_report_is_logged_to_the_data_experiment(params, scratch_project):
    batch = clean_batch(10)
    batch.loc[[0, 1, 2], "hr"] = 99
    _, _, report = validate_batch(batch, params)
    run_id = log_validation_report(report, params, root=scratch_project)

    client = MlflowClient(f"sqlite:///{scratch_project.resolve()}/mlflow.db")
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == load_config("mlflow", root=scratch_project)["mlflow"]["experiments"]["data"]
    assert run.data.metrics == {"rows_in": 10.0, "rows_valid": 0.0, "rows_quarantined": 10.0, "invalid_share": pytest.approx(0.3)}
    assert run.data.tags["rejected"] == "true" and run.data.tags["batch_id"] == "batch-1"
    assert run.info.status == "FINISHED"
    artifacts = {item.path for item in client.list_artifacts(run_id, "validation")}
    assert artifacts == {"validation/validation_report.json", "validation/validation_report.html"}
    logged = json.loads(Path(client.download_artifacts(run_id, "validation/validation_report.json", str(scratch_project))).read_text())
    assert logged["rows_quarantined"] == 10 and logged["rejection_reasons"] == report["rejection_reasons"]
    assert str(scratch_project.resolve()) in experiment.artifact_location, "artifacts stay in the temporary project"


def test_kedro_node_returns_html_and_logs(params, scratch_project):
    _, _, report = validate_batch(clean_batch(5), params)
    page = report_validation(report, params)
    assert page.startswith("<!DOCTYPE html>") and "accepted" in page
    client = MlflowClient(f"sqlite:///{scratch_project.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name(load_config("mlflow", root=scratch_project)["mlflow"]["experiments"]["data"])
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["rejected"] == "false" and runs[0].data.metrics["rows_valid"] == 5.0
    _, _, empty = validate_batch(clean_batch(5).iloc[:0], params)  # a run that read nothing: the page, no MLflow run
    assert report_validation(empty, params).startswith("<!DOCTYPE html>")
    assert len(client.search_runs([experiment.experiment_id])) == 1
