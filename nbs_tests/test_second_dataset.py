"""A second dataset through the same `data` pipeline, changing only conf/ and data/: hourly air-quality readings of three sensors.

Nothing of the bike data is left in the copy: another source (an SQLite table with its own time
column, then daily landing CSV files with UTC times and an extra column), another entity
(`sensor`), timestamp column (`measured_at`), time zone, schema, row checks, classification target
(`alert`), feature lists, lags and Feast project. The test runs `kedro run -p data` twice and checks
that nothing is lost, keys are unique, quarantine explains itself, features look back by time,
Feast serves the newest readings and every run's data versions are recorded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from looplab.core import load_config
from looplab.versioning import list_versions, load_version

from conftest import copy_project, kedro_run, latest_json

SENSORS = ("centre", "harbour", "north")
TIMEZONE = "Europe/Berlin"
START = pd.Timestamp("2024-05-06")  # naive local wall clock; no DST change in these three weeks
HISTORY_DAYS, LANDING_DAYS = 14, 7
WIND_DIRECTIONS = ("N", "E", "S", "W")
HARBOUR_OUTAGE = pd.date_range("2024-05-10 03:00", periods=5, freq="h")  # hours the harbour sensor did not report
HARBOUR_LAST = START + pd.Timedelta(days=HISTORY_DAYS + LANDING_DAYS) - pd.Timedelta(hours=7)  # it went quiet before the end

# The whole dataset-specific configuration: nothing here names the bike data.
PARAMETERS = """
data:
  dataset: airquality
  timestamp: measured_at
  timezone: Europe/Berlin
  entity:
    name: sensor
    column: sensor
  target: alert
  state_path: data/02_intermediate/ingestion_state.db
  ingested_path: ${globals:paths.ingested}
  validated_path: ${globals:paths.validated}
  features_path: ${globals:paths.features}
  feast_source_path: ${globals:paths.feast_source}
  feature_store_path: ${globals:paths.feature_store}
  versions_log: ${globals:paths.versions_log}
  sources:
    archive:
      kind: sql
      url: sqlite:///data/01_raw/sensors.db
      table: readings
      timestamp_column: ts
    stream:
      kind: files
      path: data/01_raw/incoming
      patterns: ["readings_*.csv"]
  demo:
    enabled: false
  validation:
    max_invalid_share: 0.1
    extra_columns: drop
    schema:
      columns:
        temperature: {dtype: float64, min: -30, max: 50}
        humidity:    {dtype: float64, min: 0, max: 100}
        wind_speed:  {dtype: float64, min: 0, max: 60}
        wind_dir:    {dtype: str, allowed: [N, E, S, W]}
        pm25:        {dtype: float64, min: 0, max: 1000}
        pm10:        {dtype: float64, min: 0, max: 1000}
        alert:       {dtype: int64, allowed: [0, 1]}
      checks:
        fine_within_coarse: "pm25 <= pm10"
        alert_means_pm25_over_35: "(pm25 > 35) == (alert == 1)"
      max_null_fraction: 0.05
      nullable: [wind_dir]     # calm hours have no wind direction
  features:
    repo_path: conf/feature_repo
    project: airquality
    groups:
      weather: [temperature, humidity, wind_speed, wind_dir]
    lags_hours: [1, 24]
    rolling_same_hour_days: [3]
    ttl_days: 7
"""


def readings() -> pd.DataFrame:
    """Three weeks of hourly readings of three sensors, deterministic; canonical names, naive local times.

    Fine dust is learnable from the features, not a coin toss: it rises with humidity, falls with wind, is
    higher with an easterly wind (from the harbour) and carries a persistent unobserved part (an hourly
    AR(1) process), so the hour before says much and the same hour a day before little. `alert` is
    pm2.5 above 35 µg/m³, as the row check demands.
    """
    rng = np.random.default_rng(20240506)
    times = pd.date_range(START, periods=24 * (HISTORY_DAYS + LANDING_DAYS), freq="h")
    frames = []
    for number, sensor in enumerate(SENSORS):
        hour, size = times.hour.to_numpy(), len(times)
        humidity = np.clip(65 - 15 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 5, size), 5, 100).round(1)
        wind_speed = rng.gamma(2.0, 2.0, size).round(2)
        wind_dir = rng.choice(WIND_DIRECTIONS, size)
        shocks = rng.normal(0, 0.35, size)
        persistent = np.empty(size)
        persistent[0] = shocks[0] / 0.6  # started from its stationary spread
        for position in range(1, size):
            persistent[position] = 0.8 * persistent[position - 1] + shocks[position]
        log_pm25 = (np.log(14 + 6 * number) + 0.025 * (humidity - 65) - 0.18 * (wind_speed - 4)
                    + 0.35 * (wind_dir == "E") + persistent)
        pm25 = np.clip(np.exp(log_pm25), 1, 600).round(1)
        frames.append(pd.DataFrame({
            "measured_at": times,
            "sensor": sensor,
            "temperature": (15 + 6 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 1, size)).round(2),
            "humidity": humidity,
            "wind_speed": wind_speed,
            "wind_dir": wind_dir,
            "pm25": pm25,
            "pm10": (pm25 * 1.6 + rng.uniform(0, 5, size)).round(1),
            "alert": (pm25 > 35).astype("int64"),
        }))
    data = pd.concat(frames, ignore_index=True)
    harbour = data["sensor"] == "harbour"
    data = data[~(harbour & (data["measured_at"].isin(HARBOUR_OUTAGE) | (data["measured_at"] > HARBOUR_LAST)))]
    calm = data.index[[5, 400, 900]]
    data.loc[calm, ["wind_speed", "wind_dir"]] = [0.0, None]
    return data.reset_index(drop=True)


def write_sources(project: Path, data: pd.DataFrame) -> dict:
    "The archive (SQLite table `readings`, time column `ts`) and daily landing CSVs, with known invalid rows."
    history_end = START + pd.Timedelta(days=HISTORY_DAYS)
    archive = data[data["measured_at"] < history_end].copy()
    stream = data[data["measured_at"] >= history_end].copy()

    def spoil(frame: pd.DataFrame, position: int, **values) -> None:
        frame.loc[frame.index[position], list(values)] = list(values.values())

    spoil(archive, 30, humidity=130.0)                   # out of range
    spoil(archive, 700, pm25=80.0, pm10=40.0, alert=1)   # fails the row check pm25 <= pm10
    archive = archive.rename(columns={"measured_at": "ts"})
    archive["ts"] = archive["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")  # naive local text, as the database keeps it
    database = project / "data" / "01_raw" / "sensors.db"
    with sqlite3.connect(database) as connection:
        archive.to_sql("readings", connection, index=False)
    connection.close()

    stream["firmware"] = "v2.3"  # a column the schema does not know: dropped (extra_columns: drop)
    stream.loc[stream.index[40], "wind_dir"] = "NNX"  # not an allowed value
    stream["pm25"] = stream["pm25"].astype(object)
    stream.loc[stream.index[90], "pm25"] = "12,5"  # a decimal comma
    # Times leave the stations in UTC, zone-aware; ingestion turns them back into Berlin wall-clock time.
    stream["measured_at"] = stream["measured_at"].dt.tz_localize(TIMEZONE).dt.tz_convert("UTC").map(lambda t: t.isoformat())
    stream["measured_at"] = stream["measured_at"].astype(object)
    stream.loc[stream.index[120], "measured_at"] = "yesterday noon"  # no time
    stream.loc[stream.index[150], "sensor"] = None                   # no entity
    stream = pd.concat([stream.iloc[:201], stream.iloc[[200]], stream.iloc[201:]])  # a row sent twice: the later copy is kept
    landing = project / "data" / "01_raw" / "incoming"
    landing.mkdir(parents=True)
    local_day = pd.to_datetime(stream["measured_at"], utc=True, errors="coerce").dt.tz_convert(TIMEZONE).dt.strftime("%Y-%m-%d")
    local_day = local_day.fillna(local_day.ffill())
    for day, rows in stream.groupby(local_day):
        rows.to_csv(landing / f"readings_{day}.csv", index=False)
    (landing / "README.txt").write_text("not data: matches no pattern, ignored with a warning\n")
    return {"archive_rows": len(archive), "stream_rows": len(stream), "invalid_rows": 2 + 4 + 1}


def use_second_dataset(project: Path) -> None:
    "Point conf/ at the air-quality data: its own parameters, other file names for its tables."
    conf = project / "conf"
    (conf / "local").mkdir(exist_ok=True)
    (conf / "base" / "parameters_data.yml").write_text(PARAMETERS.lstrip())
    globals_file = conf / "base" / "globals.yml"
    paths = yaml.safe_load(globals_file.read_text())
    paths["paths"]["validated"] = "data/03_primary/validated_readings.parquet"
    globals_file.write_text(yaml.safe_dump(paths, sort_keys=False))
    catalog_file = conf / "base" / "catalog.yml"
    catalog = yaml.safe_load(catalog_file.read_text())
    catalog["rides_quarantine"]["filepath"] = "data/03_primary/readings_quarantine.parquet"
    catalog_file.write_text(yaml.safe_dump(catalog, sort_keys=False))


@pytest.fixture(scope="module")
def runs(root, tmp_path_factory, tool, quiet_env):
    "A project copy with only conf/ and data/ changed, after a first and a second `kedro run -p data`."
    project = copy_project(root, tmp_path_factory.mktemp("second-dataset") / "project")
    (project / "data" / "01_raw" / "Bikeshare.csv").unlink()  # nothing of the bike data is left to lean on
    use_second_dataset(project)
    data = readings()
    written = write_sources(project, data)
    params = load_config(root=project)["data"]
    validated_path = project / params["validated_path"]

    kedro_run(tool, quiet_env, project, "-p", "data")
    first = {
        "report": latest_json(project / "data" / "08_reporting" / "validation_report.json"),
        "validated": load_version(validated_path),
        "features": load_version(project / params["features_path"]),
        "state": (project / params["state_path"]).read_bytes(),
    }
    kedro_run(tool, quiet_env, project, "-p", "data")
    second = {
        "report": latest_json(project / "data" / "08_reporting" / "validation_report.json"),
        "validated": load_version(validated_path),
        "features": load_version(project / params["features_path"]),
        "append": json.loads((project / "data" / "08_reporting" / "append_report.json").read_text()),
    }
    return {"project": project, "params": params, "data": data, "written": written, "first": first, "second": second}


def test_every_row_in_is_validated_or_quarantined(runs):
    report, written = runs["first"]["report"], runs["written"]
    assert report["dataset"] == "airquality"
    assert report["rows_in"] == written["archive_rows"] + written["stream_rows"]
    assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"]
    assert report["rows_quarantined"] == written["invalid_rows"], report["reasons"]
    assert report["sources"] == {"archive": written["archive_rows"], "stream": written["stream_rows"]}
    assert not report["rejected"] and report["extra_columns"] == ["firmware"]
    assert len(runs["first"]["validated"]) == report["rows_valid"]


def test_validated_table_is_the_canonical_frame_of_the_new_schema(runs):
    validated, params = runs["first"]["validated"], runs["params"]
    assert list(validated.columns[:2]) == ["measured_at", "sensor"]
    assert set(validated.columns) == {"measured_at", "sensor", *params["validation"]["schema"]["columns"], "_source", "_batch_id"}
    assert not validated.duplicated(["sensor", "measured_at"]).any()
    assert sorted(validated["sensor"].unique()) == list(SENSORS)
    # UTC times of the landing files are back on the Berlin wall clock: they meet the archive's hours exactly.
    expected = runs["data"].set_index(["sensor", "measured_at"])
    stored = validated.set_index(["sensor", "measured_at"])
    assert stored.index.isin(expected.index).all()
    common = stored.index
    pd.testing.assert_series_equal(stored["temperature"], expected.loc[common, "temperature"], check_names=False)
    assert validated["wind_dir"].isna().sum() == 3, "calm hours keep their null wind direction (nullable)"


def test_quarantine_holds_the_invalid_rows_with_reasons(runs):
    project, params = runs["project"], runs["params"]
    path = project / "data" / "03_primary" / "readings_quarantine.parquet"
    quarantine = load_version(path, list_versions(path)[0])
    reasons = " | ".join(quarantine["_reason"])
    for expected in ("humidity=130.0 outside 0..100", "fine_within_coarse failed", "wind_dir='NNX' not one of",
                     "pm25='12,5' is not a finite number", "measured_at='yesterday noon' is not a valid time",
                     "sensor is missing", "duplicate key"):
        assert expected in reasons, (expected, reasons)
    duplicates = quarantine["_reason"][quarantine["_reason"].str.contains("duplicate key")]
    assert len(duplicates) == 1 and duplicates.iloc[0].endswith("of the batch kept (validation.duplicates: last)"), duplicates
    assert set(quarantine["_source"]) == {"archive", "stream"}
    assert {"_row", "_reason", "_batch_id", *params["validation"]["schema"]["columns"]} <= set(quarantine.columns)


def test_features_per_sensor_look_back_by_time(runs):
    features, validated, params = runs["first"]["features"], runs["first"]["validated"], runs["params"]
    expected_columns = {"sensor", "event_timestamp", *params["features"]["groups"]["weather"],
                        "alert_lag_1h", "alert_lag_24h", "alert_mean_same_hour_3d", "alert"}
    assert set(features.columns) == expected_columns
    assert len(features) == len(validated) and not features.duplicated(["sensor", "event_timestamp"]).any()
    by_key = validated.set_index(["sensor", "measured_at"])["alert"]
    for hours in params["features"]["lags_hours"]:
        wanted = pd.MultiIndex.from_arrays([features["sensor"], features["event_timestamp"] - pd.Timedelta(hours=hours)])
        earlier = by_key.reindex(wanted).to_numpy(dtype="float64")
        np.testing.assert_array_equal(features[f"alert_lag_{hours}h"].to_numpy(dtype="float64"), earlier)
    # After the harbour outage the previous row is hours away: its 1-hour lag is missing, not that row's value.
    after_outage = features[(features["sensor"] == "harbour") & (features["event_timestamp"] == HARBOUR_OUTAGE[-1] + pd.Timedelta(hours=1))]
    assert len(after_outage) == 1 and after_outage["alert_lag_1h"].isna().all()


def test_feast_serves_the_newest_readings_per_sensor(runs):
    from looplab.features import online_features

    project, params, validated = runs["project"], runs["params"], runs["first"]["validated"]
    report = json.loads((project / "data" / "08_reporting" / "feature_store_report.json").read_text())
    assert report["materialized"] and report["project"] == "airquality" and report["entities"] == len(SENSORS)
    assert "alert_label" not in report["online_views"] and "alert_label" in report["feature_views"]
    served = online_features(list(SENSORS), params, root=project).set_index("sensor")
    newest = validated.sort_values("measured_at").groupby("sensor").tail(1).set_index("sensor")
    assert newest.loc["harbour", "measured_at"] == HARBOUR_LAST, "the harbour sensor's newest reading is older"
    for sensor in SENSORS:
        assert served.loc[sensor, "event_timestamp"] == newest.loc[sensor, "measured_at"], sensor
        for column in params["features"]["groups"]["weather"]:
            assert served.loc[sensor, column] == newest.loc[sensor, column] or (
                pd.isna(served.loc[sensor, column]) and pd.isna(newest.loc[sensor, column])), (sensor, column)
    assert "alert" not in served.columns, "the label is never served"


def test_data_versions_are_recorded_for_each_run(runs):
    project, params = runs["project"], runs["params"]
    records = [json.loads(line) for line in (project / params["versions_log"]).read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        datasets = record["datasets"]
        assert set(datasets) == {"ingested_batch", "validated_rides", "features"}
        assert datasets["validated_rides"]["path"] == "data/03_primary/validated_readings.parquet"
        assert all(entry["version"] and entry["content_hash"] for entry in datasets.values()), datasets
        assert "measured_at" in datasets["validated_rides"]["columns"] and "sensor" in datasets["features"]["columns"]
    first, second = (record["datasets"] for record in records)
    assert first["validated_rides"]["content_hash"] == second["validated_rides"]["content_hash"]
    assert first["ingested_batch"]["rows"] == runs["first"]["report"]["rows_in"] and second["ingested_batch"]["rows"] == 0


def test_a_second_run_is_idempotent(runs):
    first, second = runs["first"], runs["second"]
    assert second["report"]["rows_in"] == 0
    assert second["append"]["added"] == second["append"]["updated"] == 0
    pd.testing.assert_frame_equal(first["validated"], second["validated"])
    pd.testing.assert_frame_equal(first["features"], second["features"])
    state = runs["project"] / runs["params"]["state_path"]
    with sqlite3.connect(state) as connection:
        watermarks = dict(connection.execute("select source, watermark from watermarks"))
        files = [row[0] for row in connection.execute("select file from taken_files where source = 'stream'")]
    connection.close()
    assert watermarks["archive"] == f"{START + pd.Timedelta(days=HISTORY_DAYS) - pd.Timedelta(hours=1):%Y-%m-%d %H:%M:%S}"
    assert len(files) == LANDING_DAYS and all(name.startswith("readings_") for name in files)
