"""The Voila monitoring dashboard (notebooks/apps/monitoring.ipynb) in a real browser: headless Debian Chromium driven by Playwright.

The monitoring store is written here in exactly the format of the monitoring layer (windows.parquet,
drift.parquet, decisions.jsonl); the registry is a real MLflow store in the project copy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, copy_project, free_port, project_with_models, running_server

MODEL = "bike-demand"
FEATURES = ["hr", "weekday", "workingday", "holiday", "season", "weathersit", "temp", "atemp", "hum", "windspeed",
            "bikers_lag_24h", "bikers_lag_168h", "bikers_mean_same_hour_7d", "prediction"]
RENDER_TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


# --- the monitoring store, as the monitoring layer writes it ------------------------------------
def monitoring_windows(count: int = 8, start: str = "2011-03-01", promoted_after: int = 4, seed: int = 3) -> pd.DataFrame:
    "`count` weekly windows: version 1 degrades and drifts, is retrained after window `promoted_after`, version 2 serves the rest."
    generator = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        window_start = pd.Timestamp(start) + pd.Timedelta(days=7 * index)
        version = "1" if index <= promoted_after else "2"
        evaluation_mae = 31.25 if version == "1" else 28.5
        drifting = version == "1" and index >= promoted_after - 1
        mae = evaluation_mae * (1.45 if drifting else 1.0 + generator.uniform(-0.05, 0.12))
        labelled = 168 if index < count - 1 else 120
        drift_features = 3 if drifting else int(index == 1)
        rows.append({
            "window_start": window_start, "window_end": window_start + pd.Timedelta(days=7),
            "model_name": MODEL, "model_version": version,
            "predictions": 168 + int(generator.integers(0, 30)), "labelled": labelled, "missing_labels": 168 - labelled,
            "mae": mae, "rmse": mae * 1.38, "bias": float(generator.normal(0, 4)),
            "baseline_mae": 58.0 + float(generator.normal(0, 3)), "evaluation_mae": evaluation_mae,
            "degradation": mae / evaluation_mae - 1,
            "prediction_mean": 160 + float(generator.normal(0, 10)), "prediction_std": 120 + float(generator.normal(0, 5)),
            "drift": drift_features > 0, "drift_features": drift_features, "drift_backend": "scipy",
            "latency_p50_ms": 2.5 + float(generator.uniform(0, 1)), "latency_p99_ms": 11 + float(generator.uniform(0, 6)),
            "monitored_at": (window_start + pd.Timedelta(days=9)).tz_localize("UTC").isoformat(),
        })
    frame = pd.DataFrame(rows)
    for column in ("predictions", "labelled", "missing_labels", "drift_features"):
        frame[column] = frame[column].astype("int64")
    return frame


def drift_rows(windows: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    "One row per feature and window; the drifted features get small p-values, as many as each window says."
    generator = np.random.default_rng(seed)
    rows = []
    for window in windows.itertuples(index=False):
        drifted = ["temp", "atemp", "prediction"][: window.drift_features] if window.drift_features != 1 else ["hum"]
        for feature in FEATURES:
            p_value = float(10 ** generator.uniform(-9, -4)) if feature in drifted else float(generator.uniform(0.08, 1.0))
            rows.append({
                "window_start": window.window_start, "window_end": window.window_end, "feature": feature,
                "test": "chi2" if feature == "weathersit" else "ks", "p_value": p_value,
                "distance": float(generator.uniform(0.2, 0.5) if feature in drifted else generator.uniform(0.0, 0.08)),
                "drift": feature in drifted, "model_version": window.model_version,
            })
    return pd.DataFrame(rows)


def decision_records(windows: pd.DataFrame, fired_after: int = 4) -> list[dict]:
    "One decision per window: not fired (no signal, or cooldown after the retraining), fired once; its outcome comes in a later line with the same id."
    records = []
    for index, window in enumerate(windows.itertuples(index=False)):
        fired = index == fired_after
        champion = "1" if index <= fired_after else "2"
        blocked = [] if fired else (["cooldown"] if index == fired_after + 1 else ["no_signal"])
        records.append({
            "id": f"decision-{index}", "time": (window.window_end + pd.Timedelta(hours=49)).tz_localize("UTC").isoformat(),
            "window_end": str(window.window_end), "fired": fired,
            "reasons": ["drift on 3 features: atemp, prediction, temp", "mae 45.3 > evaluation 31.25 by 45% in 2 windows"] if fired else [],
            "blocked_by": blocked, "source": "monitoring", "outcome": "running" if fired else None,
            "champion_before": champion, "champion_after": champion, "run_id": None,
        })
        if fired:
            records.append({"id": f"decision-{index}", "outcome": "promoted", "champion_after": "2",
                            "run_id": "4f1c2b7e9a0d4c55b1e2f3a4b5c6d7e8"})
    return records


def write_store(folder: Path, windows: pd.DataFrame, drift: pd.DataFrame, decisions: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    windows.to_parquet(folder / "windows.parquet", index=False)
    drift.to_parquet(folder / "drift.parquet", index=False)
    (folder / "decisions.jsonl").write_text("".join(json.dumps(record) + "\n" for record in decisions))
    return folder


def set_conf(project: Path, store: Path, tracking_uri: str = "sqlite:///mlflow.db") -> None:
    "Point the copy's `test` environment at `store` and at an MLflow store; the app reads conf on every page load."
    (project / "conf" / "test" / "parameters_monitoring.yml").write_text(
        f"monitoring:\n  store_path: {store.relative_to(project) if store.is_relative_to(project) else store}\n")
    (project / "conf" / "test" / "mlflow.yml").write_text(f"mlflow:\n  tracking_uri: {tracking_uri}\n")


def register_versions(project: Path) -> dict[str, float]:
    "Versions 1-3 of the model in the copy's MLflow store (runs with their evaluation metrics); champion 2, challenger 3."
    from mlflow import MlflowClient

    store = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(store, registry_uri=store)  # not the registry an earlier test in this process set
    experiment = client.create_experiment("looplab-training", artifact_location=str(project / "mlartifacts"))
    client.create_registered_model(MODEL)
    maes = {}
    for version, mae in (("1", 31.25), ("2", 28.5), ("3", 27.75)):
        run = client.create_run(experiment).info.run_id
        client.log_metric(run, "mae", mae)
        client.log_metric(run, "baseline_mae", 58.4)
        client.set_terminated(run)
        created = client.create_model_version(MODEL, source=str(project / "mlartifacts" / run / "model"), run_id=run,
                                              tags={"gate.reason": f"version {version} registered by the test"})
        assert str(created.version) == version
        maes[version] = mae
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.set_registered_model_alias(MODEL, "challenger", "3")
    return maes


# --- the app --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(root, tmp_path_factory):
    "A project copy with the app notebook, a monitoring store and a registry (champion 2, challenger 3)."
    project = copy_project(root, tmp_path_factory.mktemp("monitoring-app") / "project")
    (project / "notebooks" / "apps").mkdir(parents=True)
    shutil.copy(root / "notebooks" / "apps" / "monitoring.ipynb", project / "notebooks" / "apps")
    register_versions(project)
    # Playwright closes a page without the browser's unload, so Voila keeps its kernel until it is culled: no cap on the
    # many pages of this module (the cap has tests of its own, below, in environments of their own)
    (project / "conf" / "test" / "serving.yml").write_text("serving:\n  apps: {max_kernels: 0}\n")
    windows = monitoring_windows()
    write_store(project / "data" / "08_reporting" / "monitoring", windows, drift_rows(windows), decision_records(windows))
    return project


@contextmanager
def running_app(project: Path, tool, quiet_env: dict, log_path: Path, env: str = "test") -> Iterator[str]:
    "`looplab apps monitoring` (Voila) on a free 127.0.0.1 port, from `project`; its URL once it answers. Always stopped."
    port = free_port()
    child_env = {**quiet_env, "KEDRO_ENV": env, "LOOPLAB_PROJECT_ROOT": str(project)}
    url = f"http://127.0.0.1:{port}/"
    with running_server([tool("looplab"), "apps", "monitoring", "--host", "127.0.0.1", "--port", str(port), "--env", env], project,
                        child_env, url + "api/status", log_path, timeout=60, ready=lambda status: status < 500):
        yield url


@pytest.fixture(scope="module")
def app_url(project, tool, quiet_env, tmp_path_factory):
    "The app on the project copy; stopped after the module."
    with running_app(project, tool, quiet_env, tmp_path_factory.mktemp("voila") / "voila.log") as url:
        yield url


def open_dashboard(browser, url: str, ready: str):
    "A new page on the app, once `ready` (a CSS selector) is there; the caller closes it."
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    page.goto(url)
    page.locator(f"{ready}, .looplab-error").first.wait_for()
    errors = page.locator(".looplab-error")
    assert errors.count() == 0, errors.first.inner_text()
    return page


def shown(page, field: str) -> tuple[str, str]:
    "(text shown, stored value) of the latest-window cell `field`."
    element = page.locator(f"#looplab-latest td[data-field='{field}']")
    return element.inner_text().strip(), element.get_attribute("data-value")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png_colours(data: bytes, limit: int = 64) -> int:
    "How many distinct pixel values the PNG's first rows hold (8-bit RGB/RGBA, unfiltered enough to tell blank from drawn)."
    chunks, position = [], 8
    while position < len(data):
        length = struct.unpack(">I", data[position:position + 4])[0]
        kind = data[position + 4:position + 8]
        if kind == b"IDAT":
            chunks.append(data[position + 8:position + 8 + length])
        position += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    return len(set(raw[: 200_000])) if raw else 0


def test_the_dashboard_shows_the_stored_numbers_and_its_plots(browser, app_url, project, tmp_path):
    store = project / "data" / "08_reporting" / "monitoring"
    set_conf(project, store)
    windows = pd.read_parquet(store / "windows.parquet")
    drift = pd.read_parquet(store / "drift.parquet")
    latest = windows.sort_values("window_start").iloc[-1]
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        # the plot is a real image of a real size, drawn (not blank)
        image = page.locator("img#looplab-timeline")
        image.wait_for()
        page.wait_for_function("() => { const i = document.querySelector('#looplab-timeline'); return i.complete && i.naturalWidth > 0; }")
        box = image.bounding_box()
        assert box["width"] > 600 and box["height"] > 400, box
        png = base64.b64decode(image.get_attribute("src").split(",", 1)[1])
        width, height = png_size(png)
        assert width >= 1000 and height >= 800, (width, height)
        assert png_colours(png) > 20, "the timeline image is blank"

        # the numbers of the latest window are the stored ones
        for field in ("mae", "baseline_mae", "evaluation_mae", "latency_p50_ms", "latency_p99_ms", "degradation"):
            text, value = shown(page, field)
            assert float(value) == pytest.approx(float(latest[field]), rel=1e-12), field
            if field in ("mae", "baseline_mae", "evaluation_mae"):
                assert text == format(float(latest[field]), ".4g"), (field, text)
        for field in ("predictions", "labelled", "drift_features"):
            text, value = shown(page, field)
            assert int(value) == int(latest[field]) and text.replace(",", "") == str(int(latest[field])), field
        assert shown(page, "model_version") == (f"v{latest['model_version']}", str(latest["model_version"]))
        in_latest = drift[(drift["window_start"] == latest["window_start"]) & drift["drift"]]
        assert shown(page, "drifted")[1] == ",".join(sorted(in_latest["feature"]))
        assert pd.Timestamp(shown(page, "window_end")[1]) == latest["window_end"]

        # champion and challenger come from the registry
        assert shown(page, "champion") == ("v2", "2") and shown(page, "challenger") == ("v3", "3")
        assert page.locator("#looplab-registry").get_attribute("data-source") == "registry"
        assert page.locator("tr.looplab-champion").get_attribute("data-version") == "2"
        assert "28.5" in page.locator("tr.looplab-champion").inner_text()

        # the decisions: all there, the fired one with its outcome
        decisions = {json.loads(line)["id"] for line in (store / "decisions.jsonl").read_text().splitlines()}
        rows = page.locator("#looplab-decisions tr[data-fired]")
        assert rows.count() == len(decisions)  # one row per decision: its outcome line updates it
        fired = page.locator("#looplab-decisions tr[data-fired='true']")
        assert fired.count() == 1 and fired.get_attribute("data-outcome") == "promoted"
        assert "drift on 3 features" in fired.inner_text()
        assert "Traceback" not in page.content()

        screenshot = tmp_path / "monitoring-dashboard.png"
        # Voila's page scrolls inside a container, so a full-page shot needs a viewport as tall as the content
        height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
        page.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 6000)})
        page.screenshot(path=str(screenshot), full_page=True)
        data = screenshot.read_bytes()
        width, height = png_size(data)
        assert width >= 1000 and height >= 1000 and len(data) > 50_000
        assert png_colours(data) > 20, "the screenshot is blank"
    finally:
        page.close()


def test_refresh_shows_a_new_window(browser, app_url, project, tmp_path):
    "A window the monitoring layer adds while the page is open appears on Refresh."
    first = monitoring_windows(count=5)
    store = write_store(tmp_path / "store", first, drift_rows(first), decision_records(first))
    set_conf(project, store)
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        before = pd.read_parquet(store / "windows.parquet")
        assert float(shown(page, "mae")[1]) == pytest.approx(float(before["mae"].iloc[-1]), rel=1e-12)
        grown = monitoring_windows(count=6)
        grown.loc[5, "mae"] = 77.125
        write_store(store, grown, drift_rows(grown), decision_records(grown))
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_function("() => document.querySelector(\"#looplab-latest td[data-field='mae']\")?.dataset.value === '77.125'")
        assert shown(page, "mae") == ("77.12", "77.125") or shown(page, "mae") == ("77.13", "77.125")
        assert pd.Timestamp(shown(page, "window_start")[1]) == grown["window_start"].iloc[-1]
    finally:
        page.close()


def test_the_policies_tab_shows_the_latest_backtest(browser, app_url, project, tmp_path):
    "The second tab is `looplab backtest`'s table (backtest/ beside the store): best policy first and bold, the oracle last."
    store = tmp_path / "reporting" / "monitoring"
    windows = monitoring_windows()
    write_store(store, windows, drift_rows(windows), decision_records(windows))
    set_conf(project, store)
    result = {"start": "2011-03-15", "end": "2011-12-31", "task": "regression", "metric": "mae", "best": "drift",
              "policies": [{"name": "static", "mae": 40.0, "retrains": 0, "promotions": 0, "train_seconds": 0.0},
                           {"name": "drift", "mae": 30.0, "retrains": 3, "promotions": 2, "train_seconds": 41.5}],
              "oracle": {"name": "oracle", "mae": 27.5, "retrains": 9, "promotions": 9, "train_seconds": 120.0}}
    (store.parent / "backtest").mkdir()
    (store.parent / "backtest" / "backtest.json").write_text(json.dumps(result))
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        assert not page.locator("#looplab-policies").is_visible()  # the monitoring tab is the first one shown
        page.get_by_role("tab", name="Retraining policies").click()
        page.locator("#looplab-policies").wait_for(state="visible")
        rows = page.locator("#looplab-policies tr[data-policy]")
        assert [rows.nth(index).get_attribute("data-policy") for index in range(rows.count())] == ["drift", "static", "oracle (hindsight)"]
        assert "-25.0%" in rows.nth(0).inner_text() and rows.nth(0).evaluate("row => getComputedStyle(row).fontWeight") in ("700", "bold")
        assert not page.locator("#looplab-latest").is_visible()
    finally:
        page.close()


def test_an_unreachable_registry_is_said_and_the_store_names_the_champion(browser, app_url, project, tmp_path):
    store = project / "data" / "08_reporting" / "monitoring"
    set_conf(project, store, tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        note = page.locator("#looplab-registry-note")
        assert note.get_attribute("data-source") == "store"
        assert "registry unreachable" in note.inner_text()
        # the store's last champion: the promoted decision's champion_after
        assert shown(page, "champion") == ("v2", "2")
        assert shown(page, "challenger")[1] == "nan"
        assert page.locator("img#looplab-timeline").count() == 1
    finally:
        page.close()


def test_an_empty_store_says_how_to_fill_it(browser, app_url, project, tmp_path):
    empty = tmp_path / "no-store-yet"
    set_conf(project, empty)
    page = open_dashboard(browser, app_url, "#looplab-empty")
    try:
        message = page.locator("#looplab-empty").inner_text()
        assert "No monitoring data yet" in message
        assert "kedro run -p monitoring" in message and "looplab replay" in message
        assert str(empty) in message
        assert page.locator("img#looplab-timeline").count() == 0
        assert "Traceback" not in page.content() and "Error" not in page.locator(".looplab-dashboard").inner_text()
    finally:
        page.close()


def test_a_corrupt_store_file_is_named_not_a_traceback(browser, app_url, project, tmp_path):
    store = tmp_path / "broken"
    store.mkdir()
    (store / "windows.parquet").write_bytes(b"this is not parquet")
    set_conf(project, store)
    page = browser.new_page()
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    try:
        page.goto(app_url)
        error = page.locator(".looplab-error")
        error.first.wait_for()
        assert "windows.parquet" in error.first.inner_text()
        assert "Traceback" not in page.content()
    finally:
        page.close()
    # the app's kernel logged it into the environment's log folder, once
    lines = (project / "data" / "08_reporting" / "logs" / "voila-monitoring.jsonl").read_text().splitlines()
    logged = [record for record in map(json.loads, lines) if "windows.parquet" in record["message"]]
    assert len(logged) == 1, logged
    assert (logged[0]["component"], logged[0]["env"], logged[0]["level"], logged[0]["logger"]) == \
        ("voila-monitoring", "test", "WARNING", "looplab.dashboard"), logged
    assert "cannot show the monitoring data" in logged[0]["message"]
    started = [record for record in map(json.loads, lines) if record["pid"] == logged[0]["pid"] and "kernel started" in record["message"]]
    assert len(started) == 1 and started[0]["notebook"] == "notebooks/apps/monitoring.ipynb", started


def test_a_latest_window_without_labels_shows_dashes(browser, app_url, project, tmp_path):
    "Labels not arrived yet: no MAE (NaN in the store) shows as a dash, and the plot still renders."
    windows = monitoring_windows(count=4)
    for column in ("mae", "rmse", "bias", "baseline_mae", "degradation"):
        windows.loc[3, column] = float("nan")
    windows.loc[3, ["labelled", "missing_labels"]] = [0, 168]
    store = write_store(tmp_path / "store", windows, drift_rows(windows), decision_records(windows))
    set_conf(project, store)
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        assert shown(page, "mae") == ("—", "nan") and shown(page, "degradation") == ("—", "nan")
        assert shown(page, "labelled") == ("0", "0")
        assert "no labels yet" in page.locator("#looplab-latest").inner_text()
        assert page.locator("img#looplab-timeline").count() == 1
    finally:
        page.close()


def test_a_p99_above_its_slo_is_highlighted_and_reasons_are_whole(browser, app_url, project, tmp_path):
    "A p99 over the service level in conf is highlighted in the latest window and in every older window; reasons are never cut."
    from mlflow import MlflowClient

    from looplab.core import load_config

    slo = float(load_config("parameters", env="test", root=project)["monitoring"]["slo"]["p99_latency_ms"])
    windows = monitoring_windows(count=6)
    windows.loc[5, "latency_p99_ms"] = slo * 1.5 + 0.125
    windows.loc[2, "latency_p99_ms"] = slo * 1.25  # an older window missed it too
    decisions = decision_records(windows)
    long_reason = ("mae 45.3125 > evaluation 31.25 by 45.0% in 2 windows (threshold 20%); drift on 3 features: atemp, prediction, temp; "
                   "168 labelled rows of 168, the champion v1 trained until 2011-03-01")
    decisions[4]["reasons"] = [long_reason]
    store = write_store(tmp_path / "store", windows, drift_rows(windows), decisions)
    set_conf(project, store)
    gate = ("mae 27.75 < the champion's 28.5 and the baseline's 58.4 on the 2011-03-28 – 2011-04-04 window; "
            "rmse 38.2 < 39.1; r2 0.8123 > 0.8044: registered as version 3 of bike-demand")
    client = MlflowClient(f"sqlite:///{project}/mlflow.db", registry_uri=f"sqlite:///{project}/mlflow.db")
    client.set_model_version_tag(MODEL, "3", "gate.reason", gate)
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        breach = page.locator("#looplab-latest tr.looplab-breach")
        assert breach.count() == 1 and breach.get_attribute("data-breach") == "true"
        assert breach.locator("th").inner_text().strip() == "latency p99 (ms)"
        assert float(shown(page, "latency_p99_ms")[1]) == pytest.approx(slo * 1.5 + 0.125, rel=1e-12)
        assert f"above the SLO of {slo:g} ms" in breach.inner_text()
        colour = breach.evaluate("row => getComputedStyle(row).backgroundColor")
        assert colour not in ("rgba(0, 0, 0, 0)", "transparent", "rgb(255, 255, 255)"), colour  # visibly highlighted
        assert page.locator("#looplab-latest tr.looplab-breach").count() == 1  # only the p99 row
        fired = page.locator("#looplab-decisions tr[data-fired='true']")
        assert long_reason in fired.inner_text()
        assert page.locator("tr.looplab-challenger .looplab-reason").inner_text().strip() == gate
        assert_breaches_marked(page, windows, slo)
    finally:
        page.close()
    within = monitoring_windows(count=6)
    within.loc[5, "latency_p99_ms"] = slo * 0.5
    within.loc[1, "latency_p99_ms"] = slo * 2  # only an older window missed it: the latest table is calm, the history is not
    set_conf(project, write_store(tmp_path / "within", within, drift_rows(within), decision_records(within)))
    page = open_dashboard(browser, app_url, "#looplab-latest")
    try:
        assert page.locator("#looplab-latest tr.looplab-breach").count() == 0
        assert f"SLO {slo:g} ms" in page.locator("#looplab-latest").inner_text()
        assert_breaches_marked(page, within, slo)
    finally:
        page.close()


def assert_breaches_marked(page, windows: pd.DataFrame, slo: float) -> None:
    "Every window whose p99 is over `slo` — older ones too — is a highlighted row of the windows table and named under the timeline."
    expected = windows.loc[windows["latency_p99_ms"] > slo, "window_start"]
    assert len(expected) and expected.iloc[0] < windows["window_start"].iloc[-1], "the store needs an older breached window"
    table = page.locator("#looplab-windows")
    table.wait_for(state="visible")  # unfolded by itself: there are breaches to see
    assert f"{len(expected)} over the p99 SLO of {slo:g} ms" in page.locator("details:has(#looplab-windows) summary").inner_text()
    rows = table.locator("tbody tr")
    assert rows.count() == len(windows)
    marked = [rows.nth(index).locator("td").first.inner_text().strip() for index in range(rows.count())
              if rows.nth(index).get_attribute("data-breach") == "true"]
    assert marked == [f"{start:%Y-%m-%d}" for start in expected.iloc[::-1]]  # newest first, as the table is
    breached = table.locator("tr.looplab-breach").first
    colour = breached.evaluate("row => getComputedStyle(row).backgroundColor")
    assert colour not in ("rgba(0, 0, 0, 0)", "transparent", "rgb(255, 255, 255)"), colour
    calm = table.locator("tbody tr:not(.looplab-breach)").first.evaluate("row => getComputedStyle(row).backgroundColor")
    assert calm != colour
    described = page.locator("img#looplab-timeline").get_attribute("alt")
    assert f"p99 latency above the SLO of {slo:g} ms" in described
    assert all(f"{start:%Y-%m-%d}" in described for start in expected), described


# --- Voila's kernels: culled when idle, capped in number ------------------------------------------
def test_make_apps_starts_voila_through_looplab_apps(repository):
    "`make apps` runs `looplab apps`, which adds the kernel limits, instead of calling Voila bare."
    dry = subprocess.run(["make", "-n", "apps", "APP=monitoring", "APPS_PORT=8999", "HOST=127.0.0.1"], cwd=repository,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    lines = [line for line in dry.stdout.splitlines() if "voila" in line or "looplab apps" in line]
    assert lines and all("bin/looplab apps monitoring --host 127.0.0.1 --port 8999" in line for line in lines), lines


def kernels_of(pid: int) -> list:
    "The kernel processes a Voila server started (one ending while they are listed is not one)."
    import psutil

    kernels = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                kernels.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return kernels


def voila_started(url: str):
    "The Voila process listening at `url` (the looplab apps process: it becomes Voila)."
    import psutil

    port = url.rstrip("/").rsplit(":", 1)[1]
    [voila] = [process for process in psutil.process_iter(["cmdline"])
               if process.info["cmdline"] and f"--port={port}" in process.info["cmdline"] and "--no-browser" in process.info["cmdline"]]
    return voila


def apps_env(project: Path, name: str, apps: str) -> str:
    "A config environment `name` in the copy whose serving.apps is `apps` (YAML flow mapping)."
    folder = project / "conf" / name
    folder.mkdir(exist_ok=True)
    (folder / "serving.yml").write_text(f"serving:\n  apps: {apps}\n")
    (folder / "mlflow.yml").write_text("mlflow:\n  tracking_uri: sqlite:///mlflow.db\n")
    return name


def test_voila_caps_its_kernels(browser, project, tool, quiet_env, tmp_path):
    "serving.apps.max_kernels: 1 — a page keeps its kernel (no culling here), so the next page is refused, saying why."
    import requests

    env = apps_env(project, "capped", "{cull_idle_seconds: 0, cull_disconnected_seconds: 0, max_kernels: 1}")
    with running_app(project, tool, quiet_env, tmp_path / "voila.log", env=env) as url:
        voila = voila_started(url)
        command = voila.info["cmdline"]
        for option in ("--MappingKernelManager.cull_idle_timeout=0", "--MappingKernelManager.cull_connected=True",
                       "--CappedKernelManager.max_kernels=1", "--CappedKernelManager.cull_disconnected_timeout=0",
                       "--VoilaConfiguration.multi_kernel_manager_class=looplab.serving_app.CappedKernelManager"):
            assert option in command, (option, command)
        assert kernels_of(voila.pid) == []
        first = requests.get(url, timeout=120)
        assert first.status_code == 200 and "Bike demand: monitoring" in first.text
        assert len(kernels_of(voila.pid)) == 1  # the page's kernel, kept: nothing culls it here
        page = browser.new_page()
        page.set_default_timeout(RENDER_TIMEOUT_MS)
        try:
            answer = page.goto(url)
            assert answer.status == 503
            assert "too many open pages (1)" in page.locator("h1").inner_text()
        finally:
            page.close()
        assert len(kernels_of(voila.pid)) == 1


def test_voila_culls_idle_kernels(project, tool, quiet_env, tmp_path):
    "serving.apps.cull_idle_seconds: a kernel nobody uses is shut down, which makes room under the cap again."
    import requests

    from conftest import wait_until

    env = apps_env(project, "culling", "{cull_idle_seconds: 2, cull_disconnected_seconds: 0, cull_interval_seconds: 1, max_kernels: 1}")
    with running_app(project, tool, quiet_env, tmp_path / "voila.log", env=env) as url:
        voila = voila_started(url)
        for option in ("--MappingKernelManager.cull_idle_timeout=2", "--MappingKernelManager.cull_interval=1"):
            assert option in voila.info["cmdline"], option
        first = requests.get(url, timeout=120)  # a page that never comes back: its kernel idles from here
        assert first.status_code == 200, first.status_code
        wait_until(lambda: not kernels_of(voila.pid), 120, "the idle kernel to be culled")
        def served_again():  # with the cap of 1, served only once the manager has let go of the culled kernel
            answer = requests.get(url, timeout=120)
            return answer if answer.status_code == 200 else None

        second = wait_until(served_again, 120, "a page served again under the cap of 1")
        assert "Bike demand: monitoring" in second.text



DISCONNECTED_SECONDS = 3


def kill_a_browser_with_an_open_page(browser, url: str, voila) -> int:
    "Open the dashboard in a Chromium of its own (its widgets connect to the kernel), then kill that browser: no unload, no word to Voila. The kernel's pid."
    import signal
    import uuid

    import psutil
    import requests

    marker = f"--looplab-test-browser={uuid.uuid4().hex}"  # Chromium ignores a switch it does not know: it only names the process
    doomed = browser.browser_type.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, marker])
    try:
        page = doomed.new_page()
        page.set_default_timeout(RENDER_TIMEOUT_MS)
        page.goto(url)
        page.locator("#looplab-latest, .looplab-error").first.wait_for()  # drawn by a widget: the page is connected to its kernel
        assert page.locator(".looplab-error").count() == 0, page.locator(".looplab-error").first.inner_text()
        [kernel] = kernels_of(voila.pid)
        # a connected page keeps its kernel however long it sits there: well past the disconnected limit, the cap still
        # answers 503 (the full cap first looks for kernels to let go of, and finds none)
        time.sleep(3 * DISCONNECTED_SECONDS + 2)
        assert [process.pid for process in kernels_of(voila.pid)] == [kernel.pid]
        refused = requests.get(url, timeout=120)
        assert refused.status_code == 503 and "too many open pages (1)" in refused.text, refused.status_code
        [main] = [process for process in psutil.process_iter(["cmdline"])
                  if marker in (process.info["cmdline"] or []) and not any(arg.startswith("--type=") for arg in process.info["cmdline"])]
        for process in [*main.children(recursive=True), main]:  # the whole browser at once, as a crash or kill -9 would
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs([main], timeout=30)
        return kernel.pid
    finally:
        with contextlib.suppress(Exception):  # it is gone; Playwright only lets go of it
            doomed.close()


def test_voila_culls_the_kernel_of_a_page_gone_without_a_word(browser, project, tool, quiet_env, tmp_path):
    "serving.apps.cull_disconnected_seconds: a killed browser's kernel is shut down by the culler (idle culling off), so a new page is served."
    import psutil
    import requests

    from conftest import wait_until

    env = apps_env(project, "disconnected",
                   f"{{cull_idle_seconds: 0, cull_disconnected_seconds: {DISCONNECTED_SECONDS}, cull_interval_seconds: 1, max_kernels: 1}}")
    with running_app(project, tool, quiet_env, tmp_path / "voila.log", env=env) as url:
        voila = voila_started(url)
        assert f"--CappedKernelManager.cull_disconnected_timeout={DISCONNECTED_SECONDS}" in voila.info["cmdline"]
        killed = kill_a_browser_with_an_open_page(browser, url, voila)
        # nobody asks for a page meanwhile: only the periodic culler can end the kernel
        wait_until(lambda: not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE, 120,
                   "the killed browser's kernel to be culled")
        assert "no page connected to it" in (tmp_path / "voila.log").read_text()

        def served_again():
            answer = requests.get(url, timeout=120)
            return answer if answer.status_code == 200 else None

        assert "Bike demand: monitoring" in wait_until(served_again, 120, "a page served again under the cap of 1").text


def test_a_full_cap_first_lets_go_of_a_page_gone_without_a_word(browser, project, tool, quiet_env, tmp_path):
    "With the cap reached, a new visitor's request shuts down a kernel disconnected for cull_disconnected_seconds instead of a 503."
    import requests

    from conftest import wait_until

    env = apps_env(project, "full-cap",  # the periodic culler would look only once an hour: the request itself makes room
                   f"{{cull_idle_seconds: 0, cull_disconnected_seconds: {DISCONNECTED_SECONDS}, cull_interval_seconds: 3600, max_kernels: 1}}")
    with running_app(project, tool, quiet_env, tmp_path / "voila.log", env=env) as url:
        voila = voila_started(url)
        killed = kill_a_browser_with_an_open_page(browser, url, voila)

        def served():  # 503 until the killed browser's kernel has been disconnected for the limit
            answer = requests.get(url, timeout=120)
            assert answer.status_code in (200, 503), answer.status_code
            return answer if answer.status_code == 200 else None

        assert "Bike demand: monitoring" in wait_until(served, 120, "the full cap to let go of the killed browser's kernel", poll=1).text
        assert killed not in [process.pid for process in kernels_of(voila.pid)]
        assert len(kernels_of(voila.pid)) == 1  # the new page's
        assert "no page connected to it" in (tmp_path / "voila.log").read_text()

# --- a store written by the real loop ---------------------------------------------------------------
REPLAY_START, REPLAY_END = "2011-01-21", "2011-02-03"  # inside the test data; two weekly windows get their labels


@pytest.fixture(scope="module")
def replayed_project(root, tmp_path_factory, tool, quiet_env):
    "A project copy with a champion, after `looplab replay` over two weeks: its monitoring store is the real thing."
    pytest.importorskip("looplab.replay", reason="looplab replay (notebooks/44_replay.ipynb) is not built yet")
    project = project_with_models(root, tmp_path_factory.mktemp("monitoring-replay") / "project", tool, quiet_env)
    (project / "notebooks" / "apps").mkdir(parents=True)
    shutil.copy(root / "notebooks" / "apps" / "monitoring.ipynb", project / "notebooks" / "apps")
    result = subprocess.run(
        [tool("looplab"), "replay", "--start", REPLAY_START, "--end", REPLAY_END, "--env", "test"],
        cwd=project, env={**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project), "KEDRO_ENV": "test"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"looplab replay failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return project


def test_the_dashboard_agrees_with_a_store_written_by_replay(browser, replayed_project, tool, quiet_env, tmp_path):
    from looplab import registry
    from looplab.monitoring import load_store

    store = load_store(root=replayed_project, env="test", estimated=True)  # the windows still waiting for labels too
    assert len(store["windows"]), "the replay monitored no window"
    latest = store["windows"].sort_values("window_start").iloc[-1]
    # the replay's last week is served but its labels are not due by the replay's end: estimated, with its band
    assert latest["status"] == "estimated" and latest["estimated_mae_low"] <= latest["estimated_mae"] <= latest["estimated_mae_high"]
    champion = registry.alias_version(MODEL, "champion", client=registry.registry_client(f"sqlite:///{replayed_project}/mlflow.db"))
    with running_app(replayed_project, tool, quiet_env, tmp_path / "voila.log") as url:
        page = open_dashboard(browser, url, "#looplab-latest")
        try:
            page.locator("img#looplab-timeline").wait_for()
            for field in ("mae", "baseline_mae", "evaluation_mae", "latency_p99_ms", "estimated_mae"):
                stored = float(latest[field]) if latest[field] is not None else float("nan")
                value = float(shown(page, field)[1])
                assert value == pytest.approx(stored, rel=1e-12, nan_ok=True), field
            for field in ("predictions", "labelled", "drift_features"):
                assert int(shown(page, field)[1]) == int(latest[field]), field
            assert shown(page, "model_version")[1] == str(latest["model_version"])
            assert shown(page, "champion")[1] == str(champion)
            assert page.locator("#looplab-registry").get_attribute("data-source") == "registry"
            assert page.locator("#looplab-decisions tr[data-fired]").count() == len(store["decisions"])
            page.screenshot(path=str(tmp_path / "monitoring-dashboard-replay.png"), full_page=True)
        finally:
            page.close()
