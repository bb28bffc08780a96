"""Drift detection (looplab.drift): both backends on the real bike data — agreement, false alarms, power, bad
windows, saving, the reference of a registered model version — and the papermill notebook notebooks/runs/drift.ipynb."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp

from looplab.core import load_config
from looplab.drift import (
    PREDICTION,
    DriftError,
    categorical_features,
    load_detector,
    load_reference,
    log_model_reference,
    log_reference,
    make_detector,
    prediction_window,
    save_detector,
)

from conftest import copy_project, project_with_models

BACKENDS = ["alibi", "scipy"]
# A monitoring window is one week of hourly requests (monitoring.window_days: 7) for the one region.
WINDOW_ROWS = 168
WINDOWS = 200
ALPHA = 0.05


@pytest.fixture(scope="module")
def bike(root) -> pd.DataFrame:
    "The real bike features of 2011 (data/01_raw/Bikeshare.csv through the data layer's feature code)."
    from looplab.features import build_features
    from looplab.sources import demo_rides

    data_params = load_config("parameters", root=root)["data"]
    rides = demo_rides(data_params, root=root).assign(region="dc", _source="demo", _batch_id="demo")
    return build_features(rides, data_params)


@pytest.fixture(scope="module")
def training_params(root) -> dict:
    return load_config("parameters", root=root)["training"]


@pytest.fixture(scope="module")
def reference(bike) -> pd.DataFrame:
    "January–February 2011, the demo model's training window, with a stand-in prediction (the same-hour mean of the week)."
    rows = bike[bike["event_timestamp"] < "2011-03-01"].reset_index(drop=True)
    return rows.assign(**{PREDICTION: rows["bikers_mean_same_hour_7d"].fillna(rows["bikers"]).astype(float)})


@pytest.fixture(scope="module")
def features(training_params) -> list[str]:
    return [*training_params["features"], PREDICTION]


@pytest.fixture(scope="module")
def categorical(reference, features, training_params) -> list[str]:
    return categorical_features(reference, features, training_params["categorical"], max_categories=24)


@pytest.fixture(scope="module")
def conf_min_effect(root) -> float:
    "The effect size (PSI) conf asks a significant feature to reach (monitoring.drift.min_effect)."
    return float(load_config("parameters", root=root)["monitoring"]["drift"]["min_effect"])


# Both backends with the p-value alone, and the effect-size gate of conf on top (the gate is the same code for both).
@pytest.fixture(scope="module", params=[("alibi", False), ("scipy", False), ("scipy", True)], ids=["alibi", "scipy", "scipy-gated"])
def detector(request, reference, features, categorical, conf_min_effect):
    backend, gated = request.param
    assert not gated or conf_min_effect > 0, "conf has no effect-size gate to test"
    return make_detector(reference, features, categorical, backend=backend, p_value=ALPHA, correction="fdr",
                         min_effect=conf_min_effect if gated else 0.0)


def resampled_windows(reference: pd.DataFrame, seed: int) -> list[pd.DataFrame]:
    "WINDOWS no-drift windows of WINDOW_ROWS rows, drawn with replacement from the reference."
    rows = np.random.default_rng(seed).integers(0, len(reference), size=(WINDOWS, WINDOW_ROWS))
    return [reference.iloc[index] for index in rows]


def test_categorical_choice(categorical, training_params):
    # training.categorical plus the integer columns with few values; the measurements stay numeric
    assert categorical == ["hr", "weekday", "workingday", "holiday", "season", "weathersit"]
    assert set(training_params["categorical"]) <= set(categorical)


def windows_for_agreement(bike, reference) -> dict[str, pd.DataFrame]:
    march = bike[(bike["event_timestamp"] >= "2011-03-14") & (bike["event_timestamp"] < "2011-03-28")]
    march = march.assign(**{PREDICTION: march["bikers_mean_same_hour_7d"].astype(float) * 1.3})
    same = reference.sample(WINDOW_ROWS, random_state=3)
    return {
        "no drift": same,
        "real March, new season": march,
        "shifted temperature": same.assign(temp=same["temp"] + 0.5 * reference["temp"].std()),
        "one weather category": same.assign(weathersit="clear"),
        "unseen weather": same.assign(weathersit=np.where(np.arange(len(same)) % 3 == 0, "snow storm", same["weathersit"])),
        "gaps": same.assign(hum=np.where(np.arange(len(same)) % 2 == 0, np.nan, same["hum"]), bikers_lag_168h=np.nan),
    }


def test_backends_agree_and_match_scipy(bike, reference, features, categorical):
    alibi = make_detector(reference, features, categorical, backend="alibi")
    scipy = make_detector(reference, features, categorical, backend="scipy")
    for name, window in windows_for_agreement(bike, reference).items():
        a, s = alibi.check(window).features, scipy.check(window).features
        # alibi-detect keeps p-values and statistics as float32: agreement to its precision
        np.testing.assert_allclose(a["p_value"], s["p_value"], rtol=2e-6, atol=1e-30, err_msg=name)
        np.testing.assert_allclose(a["distance"], s["distance"], rtol=2e-6, err_msg=name)
        assert a["drift"].tolist() == s["drift"].tolist(), name
        assert a["threshold"].tolist() == pytest.approx(s["threshold"].tolist()), name
        assert a["test"].tolist() == s["test"].tolist() == ["chi2" if f in categorical else "ks" for f in features]
    # and both are the textbook tests, computed here independently
    window = windows_for_agreement(bike, reference)["real March, new season"]
    result = scipy.check(window).features.set_index("feature")
    expected = ks_2samp(reference["temp"], window["temp"], method="asymp")
    assert result.loc["temp", "p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert result.loc["temp", "distance"] == pytest.approx(expected.statistic)
    counts = pd.crosstab(pd.concat([reference["season"], window["season"]]),
                         np.r_[np.zeros(len(reference)), np.ones(len(window))])
    statistic, p_value, _, _ = chi2_contingency(counts.to_numpy().T)
    assert result.loc["season", "p_value"] == pytest.approx(p_value, rel=1e-9)
    assert result.loc["season", "distance"] == pytest.approx(statistic)
    assert result.loc["season", "drift"] and result.loc["temp", "drift"]


@pytest.mark.parametrize("correction", ["fdr", "bonferroni"])
def test_false_alarm_rate_on_no_drift_windows(detector, correction):
    checked = detector.with_settings(correction=correction)
    alarms = np.array([checked.check(window).drift for window in resampled_windows(checked.reference, seed=11)])
    rate = alarms.mean()
    assert rate <= ALPHA + 0.02, f"{checked.backend}/{correction}: {rate:.3f} of {WINDOWS} no-drift windows raised drift"


@pytest.mark.parametrize("feature", ["temp", "windspeed", "bikers_lag_24h", PREDICTION])
def test_half_sd_shift_in_one_feature_is_detected(detector, feature):
    shift = 0.5 * detector.reference[feature].std()
    detected = found = 0
    for window in resampled_windows(detector.reference, seed=23):
        result = detector.check(window.assign(**{feature: window[feature] + shift}))
        detected += result.drift
        found += feature in result.drifted
    assert detected / WINDOWS >= 0.95, f"{detector.backend}: a 0.5 sd shift of {feature} found in {detected} of {WINDOWS} windows"
    assert found / WINDOWS >= 0.95, f"{detector.backend}: {feature} itself flagged in {found} of {WINDOWS} windows"


@pytest.mark.parametrize("backend, gated", [("alibi", False), ("scipy", False), ("scipy", True)])
def test_half_sd_shift_of_a_continuous_feature_is_detected(backend, gated, reference, features, categorical, conf_min_effect):
    "The bike measurements are rounded (temperature has 33 distinct values); a continuous Gaussian feature, no ties, is the harder case."
    gaussian = reference.assign(temp=np.random.default_rng(5).normal(size=len(reference)))
    detector = make_detector(gaussian, features, categorical, backend=backend, min_effect=conf_min_effect if gated else 0.0)
    results = [detector.check(window.assign(temp=window["temp"] + 0.5)) for window in resampled_windows(gaussian, seed=29)]
    assert np.mean([result.drift for result in results]) >= 0.95
    assert np.mean(["temp" in result.drifted for result in results]) >= 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_and_odd_windows(backend, reference, features, categorical):
    detector = make_detector(reference, features, categorical, backend=backend)
    window = reference.sample(WINDOW_ROWS, random_state=5)
    with pytest.raises(DriftError, match="the window has no rows"):
        detector.check(window.iloc[:0])
    with pytest.raises(DriftError, match=r"the window lacks the feature\(s\) weathersit, hum"):
        detector.check(window.drop(columns=["hum", "weathersit"]))
    with pytest.raises(DriftError, match="feature 'temp' is numeric, the window has the value 'warm'"):
        detector.check(window.assign(temp=["warm"] * len(window)))
    with pytest.raises(DriftError, match="feature 'season': categories are numbers in the reference, the window has 'spring'"):
        detector.check(window.assign(season="spring"))
    with pytest.raises(DriftError, match="the window must be a DataFrame"):
        detector.check(window.to_dict("records"))

    # a whole feature missing in the window: no test for it, the others still tested
    gaps = detector.check(window.assign(hum=np.nan)).features.set_index("feature")
    assert gaps.loc["hum", "window_rows"] == 0 and math.isnan(gaps.loc["hum", "p_value"]) and not gaps.loc["hum", "drift"]
    assert gaps["p_value"].drop("hum").notna().all()
    # some values missing: they are left out, the rest tested
    half = detector.check(window.assign(hum=window["hum"].where(np.arange(len(window)) % 2 == 0))).features.set_index("feature")
    assert half.loc["hum", "window_rows"] == (len(window) + 1) // 2 and half.loc["hum", "p_value"] > 0
    # one category only: a defined chi-squared test, and drift (clear sky only is not the winter's weather)
    clear = detector.check(window.assign(weathersit="clear")).features.set_index("feature")
    assert clear.loc["weathersit", "test"] == "chi2" and clear.loc["weathersit", "drift"]
    # a category the reference never had is drift in that feature
    unseen = detector.check(window.assign(season=3)).features.set_index("feature")
    assert unseen.loc["season", "drift"] and unseen.loc["season", "p_value"] < 1e-10
    # a constant feature: the same constant is no drift (p = 1), another constant is
    constant = reference.assign(windspeed=0.25, holiday=0)
    fixed = make_detector(constant, features, categorical, backend=backend)
    same = fixed.check(constant.sample(WINDOW_ROWS, random_state=6)).features.set_index("feature")
    assert same.loc["windspeed", "p_value"] == pytest.approx(1.0) and same.loc["holiday", "p_value"] == pytest.approx(1.0)
    moved = fixed.check(constant.sample(WINDOW_ROWS, random_state=6).assign(windspeed=0.5, holiday=1)).features.set_index("feature")
    assert moved.loc["windspeed", "drift"] and moved.loc["holiday", "drift"]


def test_bad_detectors_are_refused_by_name(reference, features, categorical):
    with pytest.raises(DriftError, match="monitoring.drift.backend must be one of alibi, scipy, got 'torch'"):
        make_detector(reference, features, categorical, backend="torch")
    with pytest.raises(DriftError, match=r"monitoring.drift.p_value must be in \(0, 1\)"):
        make_detector(reference, features, categorical, p_value=0)
    with pytest.raises(DriftError, match="monitoring.drift.correction"):
        make_detector(reference, features, categorical, correction="holm")
    with pytest.raises(DriftError, match=r"the drift reference lacks the feature\(s\) rain"):
        make_detector(reference, [*features, "rain"], categorical)
    with pytest.raises(DriftError, match="has no value for the feature"):
        make_detector(reference.assign(hum=np.nan), features, categorical)
    with pytest.raises(DriftError, match="the drift reference has no rows"):
        make_detector(reference.iloc[:0], features, categorical)
    with pytest.raises(DriftError, match="are not among the features"):
        make_detector(reference, ["temp"], ["weathersit"])


def test_alibi_detect_is_imported_lazily_and_without_deep_learning():
    code = ("import sys, looplab.drift as d; assert 'alibi_detect' not in sys.modules; "
            "d.import_alibi_detect(); print(sorted(m for m in ('tensorflow', 'torch', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "None of PyTorch" not in done.stderr, "the transformers notice is kept out of the output"


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_and_load_round_trip(backend, tmp_path, bike, reference, features, categorical):
    detector = make_detector(reference, features, categorical, backend=backend, p_value=0.01, correction="bonferroni")
    loaded = load_detector(save_detector(detector, tmp_path / "detector"))
    assert loaded.config == detector.config
    assert sorted(p.name for p in (tmp_path / "detector").iterdir()) == ["detector.json", "reference.parquet"]
    for window in windows_for_agreement(bike, reference).values():
        pd.testing.assert_frame_equal(loaded.check(window).features, detector.check(window).features)
    (tmp_path / "detector" / "detector.json").write_text("{not json")
    with pytest.raises(DriftError, match="is not valid JSON"):
        load_detector(tmp_path / "detector")
    with pytest.raises(DriftError, match="no saved drift detector in .*nothing-here: detector.json is missing"):
        load_detector(tmp_path / "nothing-here")


def test_result_to_dict_is_json(detector, bike, reference):
    window = windows_for_agreement(bike, reference)["gaps"]
    result = detector.check(window)
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["backend"] == detector.backend and back["window_rows"] == len(window)
    assert {row["feature"] for row in back["features"]} == set(detector.features)
    assert next(row for row in back["features"] if row["feature"] == "bikers_lag_168h")["p_value"] is None


@pytest.fixture()
def store(tmp_path):
    "A real MLflow store (SQLite) in a temporary folder, made current for the test."
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("drift-test", artifact_location=str(tmp_path / "artifacts"))
    yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), experiment
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def test_log_and_load_reference_with_mlflow(store, bike, training_params, root):
    from looplab.training import fit_model

    client, experiment = store
    data_params = load_config("parameters", root=root)["data"]
    settings = {**load_config("parameters", root=root)["monitoring"]["drift"], "reference_rows": 500}
    linear = {**training_params, "model": {**training_params["model"], "family": "linear"}}
    train_set = bike[bike["event_timestamp"] < "2011-03-01"].dropna(subset=["bikers"]).reset_index(drop=True)
    model = fit_model(train_set, data_params, linear)

    with pytest.raises(DriftError, match="needs an active MLflow run"):
        log_model_reference(model, train_set, linear, settings)
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = log_model_reference(model, train_set, linear, settings)
        with pytest.raises(DriftError, match="monitoring.drift.features: the reference rows lack rain"):
            log_reference(train_set, np.zeros(len(train_set)), linear["features"], [], {**settings, "features": ["rain"]})
        with pytest.raises(DriftError, match="3 predictions for"):
            log_reference(train_set, np.zeros(3), linear["features"], [], settings)
    with mlflow.start_run(experiment_id=experiment) as bare:  # a run without a reference
        mlflow.set_tag("what", "no reference")
    with mlflow.start_run(experiment_id=experiment):  # a feature without any value in the sample is left out, not fatal
        sparse = log_reference(train_set.assign(hum=np.nan), np.zeros(len(train_set)), linear["features"], [], settings)
    assert "hum" not in sparse["features"] and "temp" in sparse["features"]
    assert logged["rows"] == 500 and logged["features"] == [*linear["features"], PREDICTION]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} == {"drift/reference.parquet", "drift/config.json", "drift/detector"}

    client.create_registered_model("drift-model")
    client.create_model_version("drift-model", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.create_model_version("drift-model", source=f"runs:/{bare.info.run_id}/model", run_id=bare.info.run_id)
    client.set_registered_model_alias("drift-model", "champion", "1")

    stored, detector = load_reference("drift-model", "champion", client=client)
    assert len(stored) == 500 and list(stored.columns) == [*linear["features"], PREDICTION]
    assert detector.backend == settings["backend"] and detector.p_value == settings["p_value"]
    assert detector.features == [*linear["features"], PREDICTION]
    assert detector.categorical == ["hr", "weekday", "workingday", "holiday", "season", "weathersit"]
    # the stored predictions are the model's own on the stored rows
    np.testing.assert_allclose(stored[PREDICTION], model.predict(stored[linear["features"]]), rtol=1e-9)
    # by version number, with another backend and level than the stored ones
    again, scipy_detector = load_reference("drift-model", "1", client=client, backend="scipy", p_value=0.01)
    pd.testing.assert_frame_equal(again, stored)
    assert scipy_detector.backend == "scipy" and scipy_detector.p_value == 0.01
    march = bike[(bike["event_timestamp"] >= "2011-03-21") & (bike["event_timestamp"] < "2011-03-28")]
    march = march.assign(**{PREDICTION: model.predict(march[linear["features"]])})
    assert detector.check(march).drift

    with pytest.raises(DriftError, match="has no drift reference"):
        load_reference("drift-model", "2", client=client)
    with pytest.raises(Exception, match="no alias 'challenger'"):
        load_reference("drift-model", "challenger", client=client)


def test_window_drift_against_the_training_data_the_last_weeks_and_the_previous_cycle(store, bike, training_params, root):
    "Seasonal data: a July week drifts from a January–February model's training data, not from the same week a year before."
    from looplab.monitoring import window_drift
    from looplab.training import fit_model

    client, experiment = store
    parameters = load_config("parameters", root=root)
    settings = {**parameters["monitoring"]["drift"], "reference_rows": 500}
    linear = {**training_params, "model": {**training_params["model"], "family": "linear"}}
    features = linear["features"]
    train_set = bike[bike["event_timestamp"] < "2011-03-01"].dropna(subset=["bikers"]).reset_index(drop=True)
    model = fit_model(train_set, parameters["data"], linear)
    with mlflow.start_run(experiment_id=experiment) as run:
        log_model_reference(model, train_set, linear, settings)
    client.create_registered_model("seasonal")
    client.create_model_version("seasonal", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    # what serving logged over two years: 2011, and the same rows again 364 days later (the same weekdays)
    year = bike.dropna(subset=features[:1]).assign(**{PREDICTION: model.predict(bike[features])})[[*features, PREDICTION, "event_timestamp"]]
    history = pd.concat([year, year.assign(event_timestamp=year["event_timestamp"] + pd.Timedelta(days=364))])
    history = history.rename(columns={"event_timestamp": "event_time"}).reset_index(drop=True)
    start, end = pd.Timestamp("2012-07-09"), pd.Timestamp("2012-07-16")
    window = history[(history["event_time"] >= start) & (history["event_time"] < end)]

    def check(reference: str, when=(start, end), rows=window, **more):
        return window_drift(rows, "seasonal", "1", {**settings, "reference": reference, **more}, history=history, window=when)

    trained, trained_rows = check("training")
    assert trained["drift"] and trained["drift_reference"] == "training data of version 1"
    assert trained_rows.set_index("feature").loc["temp", "effect"] > 1  # summer against winter: a large effect
    cycle, cycle_rows = check("previous_cycle")
    assert cycle["drift_reference"] == "previous cycle 2011-07-11–2011-07-18 (168 served rows)"
    assert not cycle["drift"] and (cycle_rows["p_value"].dropna() > 0.99).all()  # the same week a year before
    rolling, rolling_rows = check("rolling", rolling_days=14)
    assert rolling["drift_reference"] == "rolling 2012-06-25–2012-07-09 (336 served rows)"
    assert (rolling_rows["reference_rows"] <= 336).all()
    # no cycle before the first year: the training data again, and the reason
    early = history[(history["event_time"] >= "2011-07-11") & (history["event_time"] < "2011-07-18")]
    fallback, _ = check("previous_cycle", (pd.Timestamp("2011-07-11"), pd.Timestamp("2011-07-18")), early)
    assert fallback["drift_reference"] == ("training data of version 1 (the previous cycle 2010-07-12–2010-07-19 holds 0 served rows, "
                                           "fewer than 100)")
    # the effect-size gate: a significant feature with a small effect does not drift
    gated = check("training", min_effect=5.0)[1]
    assert (gated["significant"] & (gated["effect"] < 5.0)).any() and not (gated["drift"] & (gated["effect"] < 5.0)).any()


def test_looplab_drift_calibrate_reads_the_store_and_prints_the_conf_line(root, tmp_path, tool, quiet_env):
    "A year of weekly windows in a store: ten degraded with large effects, a dozen small significant shifts that cost nothing."
    project = copy_project(root, tmp_path / "project")
    store = tmp_path / "store"
    store.mkdir()
    starts = pd.date_range("2011-01-03", periods=52, freq="7D")
    effects = np.r_[np.linspace(1.0, 3.0, 10), np.linspace(0.12, 0.4, 12), np.full(30, 0.02)]
    pd.DataFrame({"window_start": starts, "window_end": starts + pd.Timedelta(days=7), "status": "scored",
                  "degradation": np.r_[np.full(10, 0.6), np.full(42, 0.02)]}).to_parquet(store / "windows.parquet")
    pd.DataFrame({"window_start": np.repeat(starts, 2), "window_end": np.repeat(starts + pd.Timedelta(days=7), 2),
                  "feature": ["temp", "hum"] * 52, "effect": np.repeat(effects, 2),
                  "significant": np.repeat(effects > 0.05, 2), "drift": np.repeat(effects > 0.05, 2)}).to_parquet(store / "drift.parquet")
    (project / "conf" / "test" / "parameters_monitoring.yml").write_text(f"monitoring:\n  store_path: {store}\n")

    def calibrate(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([tool("looplab"), "drift", "calibrate", "--env", "test", *more], cwd=project, env=quiet_env,
                              capture_output=True, text=True, timeout=300)

    run = calibrate("--target", "0", "--plot", str(tmp_path / "calibration.png"))  # no false alarm allowed
    assert run.returncode == 0, run.stderr
    chosen = next(line for line in run.stdout.splitlines() if line.endswith("<- chosen"))
    value = float(chosen.split()[0])
    assert 0.4 < value <= 1.0, run.stdout  # above the small shifts, at or below the degraded windows' effects
    assert "10 of 10" in chosen and f"conf: monitoring.drift.min_effect: {value:g}" in run.stdout
    assert (tmp_path / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(calibrate("--target", "100", "--json").stdout)  # a generous target: no gate needed
    assert result["min_effect"] == 0.0 and result["windows"] == 52 and result["degraded"] == 10
    ungated = result["table"][0]
    assert (ungated["alarms"], ungated["false_alarms"]) == (22, 12)
    (store / "drift.parquet").unlink()
    pd.DataFrame({"window_start": starts, "feature": "temp", "p_value": 0.01, "drift": True}).to_parquet(store / "drift.parquet")
    old = calibrate()
    assert old.returncode == 1 and "written before drift effect sizes were kept" in old.stderr and "Traceback" not in old.stderr


def log_entries(rows: pd.DataFrame, predictions, features, version: str, request_id: str, event_times=None) -> list[dict]:
    "Prediction log entries in the serving layer's format."
    stamp = datetime.now(UTC).isoformat()
    times = rows["event_timestamp"] if event_times is None else event_times
    return [{"request_id": request_id, "row": index, "time": stamp, "model_name": "bike-demand", "model_version": version,
             "entity": "dc", "event_time": None if pd.isna(time) else pd.Timestamp(time).isoformat(), "latency_ms": 3.5,
             "inputs": {feature: (None if pd.isna(value) else value) for feature, value in record.items()},
             "prediction": float(prediction)}
            for index, (record, prediction, time) in enumerate(zip(rows[features].to_dict("records"), predictions, times, strict=True))]


def test_prediction_window_from_the_log(tmp_path, bike, training_params):
    from looplab.prediction_log import PredictionLog

    features = training_params["features"]
    week = bike[(bike["event_timestamp"] >= "2011-03-01") & (bike["event_timestamp"] < "2011-03-09")].reset_index(drop=True)
    log = PredictionLog(tmp_path / "log")
    log.append(log_entries(week, np.arange(len(week)), features, "1", "first"))
    log.append(log_entries(week.iloc[:10], np.arange(10), features, "1", "first"))          # logged twice
    log.append(log_entries(week.iloc[:5], np.arange(5), features, "1", "late", [None] * 5))  # no event time
    other = log_entries(week.iloc[:4], np.arange(4), features, "1", "other")
    log.append([{**entry, "model_name": "another-model"} for entry in other])
    log.close()
    window = prediction_window(tmp_path / "log", "2011-03-01", "2011-03-08", model_name="bike-demand")
    inside = week[week["event_timestamp"] < "2011-03-08"]
    assert len(window) == len(inside) > 160  # the data has a few hours without riders (no row)
    assert window["event_time"].min() == pd.Timestamp("2011-03-01") and window["event_time"].max() < pd.Timestamp("2011-03-08")
    pd.testing.assert_frame_equal(window[features].reset_index(drop=True), inside[features].reset_index(drop=True), check_dtype=False)
    assert window[PREDICTION].tolist() == list(range(len(inside)))
    assert len(prediction_window(tmp_path / "log", "2011-03-01", "2011-03-08")) == len(inside) + 4
    assert prediction_window(tmp_path / "empty", "2011-03-01", "2011-03-08").empty
    with pytest.raises(DriftError, match="must be before its end"):
        prediction_window(tmp_path / "log", "2011-03-08", "2011-03-01")


@pytest.fixture(scope="module")
def project(root, tmp_path_factory, tool, quiet_env):
    "A project copy with bike-demand version 1 as champion, trained (test environment) by `kedro run -p training`."
    return project_with_models(root, tmp_path_factory.mktemp("drift") / "project", tool, quiet_env)


def run_drift_notebook(root, tool, env, project, output, *parameters: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("papermill"), str(root / "notebooks" / "runs" / "drift.ipynb"), str(output), "-k", "looplab", "-p", "env", "test", *parameters],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )


def test_papermill_drift_notebook(root, project, tool, quiet_env, bike, training_params):
    from looplab.core import mlflow_settings
    from looplab.prediction_log import PredictionLog
    from looplab.registry import load_model, registry_client

    settings = mlflow_settings("test", project)
    client = registry_client(settings)
    # the training run stored the champion's reference: the registered version carries it
    stored, _ = load_reference("bike-demand", "champion", client=client)
    assert list(stored.columns) == [*training_params["features"], PREDICTION]

    features = training_params["features"]
    model = load_model("bike-demand", "champion", client=client)
    week = bike[(bike["event_timestamp"] >= "2011-03-01") & (bike["event_timestamp"] < "2011-03-08")].reset_index(drop=True)
    parameters = load_config("parameters", env="test", root=project)
    log = PredictionLog(project / parameters["monitoring"]["prediction_log"])
    log.append(log_entries(week, model.predict(week[features]), features, "1", "week"))
    log.close()

    reporting = project / "data" / "08_reporting"
    output = reporting / "drift-2011-03-01.ipynb"
    done = run_drift_notebook(root, tool, quiet_env, project, output, "-p", "window_start", "2011-03-01",
                              "-p", "window_end", "2011-03-08", "-p", "result_path", str(reporting / "drift.json"))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((reporting / "drift.json").read_text())
    assert result["status"] == "checked" and result["window_rows"] == len(week)
    assert result["model_version"] == "1" and result["versions_seen"] == ["1"] and result["backend"] == "alibi"
    # trained on 1–19 January, a week of March is warmer and busier
    assert result["drift"] and "temp" in result["drifted"] and PREDICTION in {row["feature"] for row in result["features"]}

    run = client.get_run(result["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "looplab-monitoring"
    assert run.data.params["window_start"] == "2011-03-01T00:00:00" and run.data.params["model_version"] == "1"
    assert run.data.metrics["drift"] == 1 and run.data.metrics["window_rows"] == len(week)
    assert 0 <= run.data.metrics["p_value.temp"] < 0.05
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notebook")] == ["notebook/drift-2011-03-01.ipynb"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} == {"drift/result.json", "drift/p_values.png"}

    # a window nobody was served in: recorded as empty, not an error; the scipy backend from the parameter
    empty = run_drift_notebook(root, tool, quiet_env, project, reporting / "drift-empty.ipynb", "-p", "window_start", "2011-06-01",
                               "-p", "window_end", "2011-06-08", "-p", "backend", "scipy", "-p", "result_path", "data/08_reporting/empty.json")
    assert empty.returncode == 0, empty.stderr[-4000:]
    nothing = json.loads((reporting / "empty.json").read_text())
    assert nothing["status"] == "empty" and nothing["window_rows"] == 0 and nothing["drift"] is None and nothing["backend"] == "scipy"


def test_the_drift_notebook_checks_against_the_version_that_served_the_window(root, project, tool, quiet_env, bike, training_params):
    "A week served by another version than the champion is checked against that version's reference, with a warning; "
    "a version without a usable reference falls back to the champion's, and says why."
    from looplab.core import mlflow_settings
    from looplab.prediction_log import PredictionLog
    from looplab.registry import load_model, registry_client

    store = mlflow_settings("test", project)
    client = registry_client(store)
    first = client.get_model_version("bike-demand", "1")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store["tracking_uri"])  # where MLflow resolves the version's models:/ source
    try:  # a second version of the same run (so the same reference); no alias moves
        served_by = str(client.create_model_version("bike-demand", source=first.source, run_id=first.run_id, model_id=first.model_id).version)
    finally:
        mlflow.set_tracking_uri(previous)
    features = training_params["features"]
    model = load_model("bike-demand", "1", client=client)
    parameters = load_config("parameters", env="test", root=project)
    weeks = {}
    log = PredictionLog(project / parameters["monitoring"]["prediction_log"])
    for start, version in (("2011-04-01", served_by), ("2011-04-08", "99")):  # 99: a version the registry does not have
        weeks[start] = bike[(bike["event_timestamp"] >= start) & (bike["event_timestamp"] < pd.Timestamp(start) + pd.Timedelta(days=7))]
        log.append(log_entries(weeks[start], model.predict(weeks[start][features]), features, version, f"week-{start}"))
    log.close()
    reporting = project / "data" / "08_reporting"

    output = reporting / "drift-served.ipynb"
    done = run_drift_notebook(root, tool, quiet_env, project, output, "-p", "window_start", "2011-04-01",
                              "-p", "window_end", "2011-04-08", "-p", "result_path", str(reporting / "drift-served.json"))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((reporting / "drift-served.json").read_text())
    note = (f"the window was served by version {served_by} ({len(weeks['2011-04-01'])} rows), not by version 1 (champion): "
            f"checked against the training data of version {served_by}, the model that served it")
    assert (result["model_version"], result["requested_version"], result["reference_note"]) == (served_by, "1", note)
    assert f"drift check of bike-demand: {note}" in output.read_text(), "the warning is in the executed notebook"
    run = client.get_run(result["run_id"])
    assert run.data.params["model_version"] == served_by and run.data.tags["looplab.reference_note"] == note
    assert str(client.get_registered_model("bike-demand").aliases["champion"]) == "1", "the check moves no alias"

    done = run_drift_notebook(root, tool, quiet_env, project, reporting / "drift-unknown.ipynb", "-p", "window_start", "2011-04-08",
                              "-p", "window_end", "2011-04-15", "-p", "result_path", str(reporting / "drift-unknown.json"))
    assert done.returncode == 0, done.stderr[-4000:]
    fallback = json.loads((reporting / "drift-unknown.json").read_text())
    assert fallback["model_version"] == "1" and fallback["status"] == "checked"
    assert fallback["reference_note"].startswith("the window was served by version 99 (") and (
        "; but version 99 has no usable reference (bike-demand has no version 99" in fallback["reference_note"]
    ) and fallback["reference_note"].endswith("so version 1 (champion) is used instead"), fallback["reference_note"]


def test_bench_monitoring_smoke(root, tmp_path, quiet_env):
    "The monitoring benchmark at a small window without replay: a well-formed result (no timing assertions)."
    out = tmp_path / "monitoring.json"
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "monitoring" / "run.py"), "--rows", "5000", "-r", "1", "--no-replay",
         "--out", str(out), "--workdir", str(tmp_path)],
        cwd=root, env=quiet_env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("monitoring: drift check of 5k rows x 14 features: alibi "), done.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == "monitoring" and result["summary"] == lines[0]
    assert set(result["drift"]["backends"]) == {"alibi", "scipy"} and result["replay"]["status"] == "skipped"
    for figures in result["drift"]["backends"].values():
        assert figures["median_s"] > 0 and figures["ratio_to_anchor"] > 0 and figures["same_as_first"]
        assert figures["drift"], "a window drawn from the whole year drifts from January–February"
    assert {"cores", "python", "packages"} <= set(result["machine"])
    assert not list(tmp_path.glob("looplab-bench-monitoring-*")), "temporary files are removed"
