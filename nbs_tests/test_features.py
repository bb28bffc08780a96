"""The feature store in a copy of the project: lags look only back, Feast joins point-in-time, serves the latest, stays offline."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looplab.core import copy_project_files, load_config
from looplab.features import (
    build_features,
    feature_store_paths,
    materialize_features,
    online_features,
    store_config,
    training_set,
)

START = pd.Timestamp("2011-03-01")
HOURS = 24 * 12


@pytest.fixture
def project(root, tmp_path) -> Path:
    "A copy of the project's conf/ (with the Feast repository) and an empty data/: the store is built in it."
    copy_project_files(root, tmp_path, only=("pyproject.toml", "conf"))
    (tmp_path / "data" / "01_raw").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def params(project) -> dict:
    return load_config(root=project)["data"]


def rides_frame(times: pd.DatetimeIndex, region: str = "dc", scale: int = 1) -> pd.DataFrame:
    "Canonical rows whose target names its own hour (hours since START, times `scale`), so a joined value shows where it came from."
    rng = np.random.default_rng(len(times))
    hours_since_start = ((times - START) // pd.Timedelta(hours=1)).to_numpy()
    return pd.DataFrame({
        "timestamp": times,
        "region": region,
        "season": 1,
        "hr": times.hour,
        "holiday": 0,
        "weekday": (times.dayofweek + 1) % 7,
        "workingday": (times.dayofweek < 5).astype("int64"),
        "weathersit": rng.choice(["clear", "cloudy/misty", "light rain/snow"], len(times)),
        "temp": rng.uniform(0, 1, len(times)),
        "atemp": rng.uniform(0, 1, len(times)),
        "hum": rng.uniform(0, 1, len(times)),
        "windspeed": rng.uniform(0, 1, len(times)),
        "casual": 0,
        "registered": hours_since_start * scale,
        "bikers": hours_since_start * scale,
        "_source": "test",
        "_batch_id": "b1",
    })


def with_gaps(missing: list[int]) -> pd.DatetimeIndex:
    "Twelve days of hours from START without the given hour offsets."
    every_hour = pd.date_range(START, periods=HOURS, freq="h")
    return every_hour.delete(sorted(set(missing)))


@pytest.fixture
def two_regions() -> pd.DataFrame:
    "Two regions with different missing hours."
    return pd.concat(
        [rides_frame(with_gaps([5, 30, 31, 100, 200]), "dc"), rides_frame(with_gaps([0, 48, 49, 50]), "arlington", scale=1000)],
        ignore_index=True,
    )


# --- build_features: lags by time -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(missing=st.lists(st.integers(0, HOURS - 1), max_size=60))
def test_lags_are_the_target_exactly_h_hours_earlier_or_missing(missing):
    params = load_config()["data"]
    rides = rides_frame(with_gaps(missing))
    features = build_features(rides, params).set_index("event_timestamp")
    by_time = rides.set_index("timestamp")["bikers"]
    for hours in params["features"]["lags_hours"]:
        for time, value in features[f"bikers_lag_{hours}h"].items():
            earlier = time - pd.Timedelta(hours=hours)
            if earlier in by_time.index:
                assert value == by_time[earlier], (time, hours)
            else:
                assert np.isnan(value), f"{time}: lag {hours}h must be missing, {earlier} has no row (got {value})"
    for days in params["features"]["rolling_same_hour_days"]:
        for time, value in features[f"bikers_mean_same_hour_{days}d"].items():
            earlier = [by_time[t] for t in (time - pd.Timedelta(days=d) for d in range(1, days + 1)) if t in by_time.index]
            assert (np.isnan(value) and not earlier) or value == pytest.approx(np.mean(earlier)), time


@settings(max_examples=30, deadline=None)
@given(dc=st.lists(st.integers(0, HOURS - 1), max_size=40), arlington=st.lists(st.integers(0, HOURS - 1), max_size=40),
       seed=st.integers(0, 2**16))
def test_lags_are_each_regions_own_earlier_hours_whatever_the_row_order(dc, arlington, seed):
    "Two regions with their own gaps, rows shuffled: each lag is the same region's target h hours earlier (a merge as the reference)."
    params = load_config()["data"]
    rides = pd.concat([rides_frame(with_gaps(dc), "dc"), rides_frame(with_gaps(arlington), "arlington", scale=1000)], ignore_index=True)
    features = build_features(rides.sample(frac=1, random_state=seed), params)
    assert list(features[["region", "event_timestamp"]].itertuples(index=False)) == sorted(rides[["region", "timestamp"]].itertuples(index=False))
    for hours in params["features"]["lags_hours"]:
        earlier = rides[["region", "timestamp", "bikers"]].assign(timestamp=rides["timestamp"] + pd.Timedelta(hours=hours))
        expected = features[["region", "event_timestamp"]].merge(
            earlier.rename(columns={"timestamp": "event_timestamp"}), on=["region", "event_timestamp"], how="left")["bikers"]
        np.testing.assert_array_equal(features[f"bikers_lag_{hours}h"].to_numpy(), expected.astype("float64").to_numpy())


def test_features_never_depend_on_later_targets(two_regions):
    params = load_config()["data"]
    cut = START + pd.Timedelta(days=6)
    features = build_features(two_regions, params)
    changed = two_regions.copy()
    changed.loc[changed["timestamp"] >= cut, "bikers"] = -1
    earlier = features["event_timestamp"] < cut
    pd.testing.assert_frame_equal(build_features(changed, params)[earlier], features[earlier])


# --- Feast: point-in-time joins ----------------------------------------------------------------


def as_of(features: pd.DataFrame, events: pd.DataFrame, columns: list[str], ttl: pd.Timedelta) -> pd.DataFrame:
    "The reference point-in-time join: per event, the latest feature row of its region at or before its time, within ttl."
    ordered_events = events.reset_index().sort_values("event_timestamp")
    joined = pd.merge_asof(
        ordered_events, features[["region", "event_timestamp", *columns]].sort_values("event_timestamp"),
        on="event_timestamp", by="region", direction="backward", allow_exact_matches=True, tolerance=ttl,
    )
    return joined.sort_values("index").set_index("index").rename_axis(None)[columns]


@pytest.mark.parametrize("engine", ["pandas", "feast"])
def test_a_feature_row_stamped_after_an_event_is_never_joined_to_it(project, params, two_regions, engine):
    features = build_features(two_regions, params)
    # sentinel rows 30 minutes after chosen events, with values that appear nowhere else
    chosen = features[features["event_timestamp"].isin(START + pd.to_timedelta([50, 120, 250], unit="h"))]
    sentinels = chosen.assign(event_timestamp=chosen["event_timestamp"] + pd.Timedelta(minutes=30))
    sentinels[["temp", "bikers_lag_24h", "bikers_mean_same_hour_7d"]] = -999.0
    sentinels["bikers"] = -999
    materialize_features(pd.concat([features, sentinels], ignore_index=True), params, root=project)

    # every stored hour, the chosen events, events between an event and its sentinel, and off-grid times
    offsets = pd.to_timedelta(np.r_[np.arange(HOURS), 50 + 0.25, 120 + 0.4, 250 + 0.49, 250.5, 250.75], unit="h")
    events = pd.concat([pd.DataFrame({"region": region, "event_timestamp": START + offsets}) for region in ("dc", "arlington")],
                       ignore_index=True)
    columns = ["temp", "bikers_lag_24h", "bikers_mean_same_hour_7d"]
    joined = training_set(events, params, features=[*columns, "bikers"], root=project, engine=engine)

    before_sentinel = np.ones(len(events), dtype=bool)
    for _, sentinel in sentinels.iterrows():
        same_region = events["region"] == sentinel["region"]
        before_sentinel &= ~(same_region & (events["event_timestamp"] >= sentinel["event_timestamp"]) &
                             (events["event_timestamp"] < sentinel["event_timestamp"] + pd.Timedelta(minutes=30)))
        leaked = joined[same_region & (events["event_timestamp"] < sentinel["event_timestamp"])]
        assert not (leaked[columns] == -999.0).any().any(), f"a value stamped {sentinel['event_timestamp']} leaked into an earlier event"
    assert (joined.loc[~before_sentinel, "temp"] == -999.0).all(), "events at or after a sentinel (in its half hour) see it"

    ttl = pd.Timedelta(days=params["features"]["ttl_days"])
    reference = as_of(pd.concat([features, sentinels]), events, columns, ttl)
    pd.testing.assert_frame_equal(joined[columns], reference, check_dtype=False)


@pytest.mark.parametrize("engine", ["pandas", "feast"])
def test_the_label_is_never_taken_from_another_hour(project, params, two_regions, engine):
    features = build_features(two_regions, params)
    materialize_features(features, params, root=project)
    gap = START + pd.Timedelta(hours=30)  # hours 30 and 31 are missing for dc; 29 exists
    events = pd.DataFrame({"region": "dc", "event_timestamp": [gap, gap + pd.Timedelta(minutes=59), gap - pd.Timedelta(minutes=30)]})
    joined = training_set(events, params, root=project, engine=engine)
    assert joined["bikers"].isna().tolist() == [True, True, False], joined
    assert joined.loc[2, "bikers"] == 29, "29:30 gets the label of its own hour, 29:00"
    assert joined.loc[0, "hr"] == 5, "serving features may come from the latest earlier row (within ttl)"


@pytest.mark.parametrize("engine", ["pandas", "feast"])
def test_historical_retrieval_agrees_with_build_features(project, params, two_regions, engine):
    features = build_features(two_regions, params)
    materialize_features(features, params, root=project)
    shuffled = features.sample(frac=1.0, random_state=7).reset_index(drop=True)
    events = pd.concat([shuffled[["region", "event_timestamp"]], shuffled[["region", "event_timestamp"]].iloc[:5]], ignore_index=True)
    retrieved = training_set(events, params, root=project, engine=engine)
    assert list(retrieved.columns) == list(features.columns)
    expected = pd.concat([shuffled, shuffled.iloc[:5]], ignore_index=True)  # a repeated event is answered every time
    pd.testing.assert_frame_equal(retrieved, expected, check_dtype=False)


# --- Feast: the online store -------------------------------------------------------------------


def test_online_lookup_serves_the_latest_values_and_nulls_for_an_unknown_entity(project, params, two_regions):
    features = build_features(two_regions, params)
    first_week = features[features["event_timestamp"] < START + pd.Timedelta(days=7)]
    materialize_features(first_week, params, root=project)
    serving = [c for c in features.columns if c not in ("region", "event_timestamp", "bikers")]

    def latest(frame: pd.DataFrame, region: str) -> pd.Series:
        return frame[frame["region"] == region].sort_values("event_timestamp").iloc[-1]

    online = online_features(["arlington", "atlantis", "dc"], params, root=project)
    assert online["region"].tolist() == ["arlington", "atlantis", "dc"]
    assert "bikers" not in online.columns, "the label is not a serving feature"
    for row, region in ((0, "arlington"), (2, "dc")):
        expected = latest(first_week, region)
        assert online.loc[row, "event_timestamp"] == expected["event_timestamp"]
        pd.testing.assert_series_equal(online.loc[row, serving], expected[serving], check_dtype=False, check_names=False)
    assert online.loc[1, serving].isna().all() and pd.isna(online.loc[1, "event_timestamp"]), online.loc[1]

    # the next run brings later hours: the online store follows
    materialize_features(features, params, root=project)
    online = online_features(["dc"], params, features=["temp", "bikers_lag_24h"], root=project)
    expected = latest(features, "dc")
    assert online.loc[0, "event_timestamp"] == expected["event_timestamp"]
    assert online.loc[0, "temp"] == expected["temp"] and online.loc[0, "bikers_lag_24h"] == expected["bikers_lag_24h"]
    with pytest.raises(ValueError, match="is the label"):
        online_features(["dc"], params, features=["bikers"], root=project)


# --- where the store lives, and no network -----------------------------------------------------


def test_the_store_is_self_contained_in_the_project_copy(project, params, two_regions, tmp_path_factory):
    features = build_features(two_regions, params)
    report = materialize_features(features, params, root=project)
    store = project / params["feature_store_path"]
    for path in (report["source_path"], report["registry_path"], report["online_store_path"]):
        assert Path(path).is_file() and Path(path).is_relative_to(project), path
    effective = (store / "feature_store.yaml").read_text()
    assert str(project) not in effective.split("\n", 1)[1], "the effective config names no absolute path"

    # a copy of conf/ and data/ elsewhere reads the same store
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(project / "pyproject.toml", elsewhere)
    shutil.copytree(project / "conf", elsewhere / "conf")
    shutil.copytree(project / "data", elsewhere / "data")
    shutil.rmtree(store)
    events = features[["region", "event_timestamp"]].iloc[::17]
    retrieved = training_set(events, params, features=["bikers_lag_168h", "bikers"], root=elsewhere)
    expected = features.iloc[::17][["bikers_lag_168h", "bikers"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(retrieved[["bikers_lag_168h", "bikers"]], expected, check_dtype=False)
    assert online_features(["dc"], params, root=elsewhere)["event_timestamp"].notna().all()


def test_the_committed_repository_points_at_the_default_store(root):
    "`feast -c conf/feature_repo ...` from a fresh clone reads the store the pipeline writes."
    from feast.repo_config import load_repo_config

    params = load_config(root=root)["data"]
    repo = root / params["features"]["repo_path"]
    config = load_repo_config(repo, repo / "feature_store.yaml")
    default_store = (root / params["feature_store_path"]).resolve()
    assert (repo / config.registry.path).resolve() == default_store / store_config(params, root)["registry"]["path"]
    assert (repo / config.online_store.path).resolve() == default_store / store_config(params, root)["online_store"]["path"]
    assert config.project == params["features"]["project"]
    assert feature_store_paths(params, root).source.parent == default_store


def test_feast_makes_no_network_calls(project, params, two_regions, monkeypatch):
    attempts = []
    connect = socket.socket.connect

    def local_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: network call to {address} refused")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    features = build_features(two_regions, params)
    materialize_features(features, params, root=project)
    training_set(features[["region", "event_timestamp"]].head(50), params, root=project)
    online_features(["dc"], params, root=project)
    assert attempts == [], f"Feast tried to reach {attempts}"


def test_reading_a_store_that_was_never_materialised_says_what_to_do(project, params):
    events = pd.DataFrame({"region": ["dc"], "event_timestamp": [START]})
    with pytest.raises(FileNotFoundError, match="run materialize_features first"):
        training_set(events, params, root=project)
    with pytest.raises(FileNotFoundError, match="run materialize_features first"):
        online_features(["dc"], params, root=project)
