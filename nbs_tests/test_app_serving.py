"""The Voila serving app (notebooks/apps/serving.ipynb) in a real browser: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import CHROMIUM, free_port, project_with_models, running_server

MODEL = "bike-demand"

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def project(root, tmp_path_factory, tool, quiet_env):
    "A project copy with a registered champion (bike-demand version 1) and the app notebook."
    project = project_with_models(root, tmp_path_factory.mktemp("app") / "project", tool, quiet_env)
    (project / "notebooks" / "apps").mkdir(parents=True)
    shutil.copy(root / "notebooks" / "apps" / "serving.ipynb", project / "notebooks" / "apps")
    return project


@pytest.fixture(scope="module")
def api_url(project, tool, quiet_env, tmp_path_factory):
    "A live serving worker (`looplab serve --workers 1`) on a free port of the project copy; stopped after the module."
    port = free_port()
    log_path = tmp_path_factory.mktemp("api") / "serve.log"
    env = {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}
    url = f"http://127.0.0.1:{port}"
    with running_server([tool("looplab"), "serve", "--workers", "1", "--port", str(port), "--env", "test"], project, env,
                        url + "/ready", log_path):
        yield url


@pytest.fixture(scope="module")
def app_url(project, api_url, tool, quiet_env, tmp_path_factory):
    "`looplab apps` (Voila) serving the app on a free 127.0.0.1 port, from the project copy, asking the live API; stopped after the module."
    port = free_port()
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    env = {**quiet_env, "KEDRO_ENV": "test", "LOOPLAB_PROJECT_ROOT": str(project), "LOOPLAB_SERVING_URL": api_url}
    url = f"http://127.0.0.1:{port}/"
    with running_server([tool("looplab"), "apps", "serving", "--host", "127.0.0.1", "--port", str(port), "--env", "test"], project, env,
                        url + "api/status", log_path, timeout=60, ready=lambda status: status < 500):
        yield url


@pytest.fixture(scope="module")
def page(browser, app_url):
    "The app's page, rendered: the first prediction is shown."
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(app_url)
    page.locator(".looplab-value").wait_for()
    yield page
    page.close()


def registry_client(project: Path):
    from looplab import registry

    return registry.registry_client(f"sqlite:///{project}/mlflow.db")


def expected_predictions(project: Path, frame: pd.DataFrame) -> list[float]:
    "What the champion predicts for `frame` outside the app: the registry's model, loaded the one allowed way."
    from looplab import registry

    model = registry.load_model(MODEL, "champion", client=registry_client(project))
    return [float(value) for value in model.predict(frame)]


def api_predictions(api_url: str, frame: pd.DataFrame) -> list[float]:
    "The live serving API's answer for `frame`: a POST to the worker's /v1/models/bike-demand/predict."
    records = json.loads(frame.to_json(orient="records"))
    response = requests.post(f"{api_url}/v1/models/{MODEL}/predict", json={"records": records}, timeout=30)
    assert response.status_code == 200, response.text
    return [float(value) for value in response.json()["predictions"]]


def shown_record(page) -> dict:
    return json.loads(page.locator(".looplab-record-json").inner_text())


def shown_prediction(page) -> float:
    "The prediction the page shows: its unrounded value (`data-value`), after checking the text is it, rounded for people."
    from looplab.serving_app import rounded

    element = page.locator(".looplab-value")
    value, text = float(element.get_attribute("data-value")), element.inner_text().strip()
    assert text == rounded(value, 3), (text, value)  # bikers: `display.digits: 3` in conf
    return value


def displays(project: Path) -> dict:
    "How the app shows each column: the schema's display settings in the copy's conf (test environment)."
    from looplab.core import load_config
    from looplab.serving_app import display_settings

    return display_settings(load_config("parameters", env="test", root=project)["data"])


def control(page, name: str):
    "The control of model input `name` (the app marks each with class looplab-input-<name>)."
    return page.locator(f".looplab-input-{name}")


def readout(page, name: str) -> float:
    "The number slider `name` shows (its read-out writes a minus as U+2212)."
    return float(control(page, name).locator(".widget-readout").inner_text().replace("\u2212", "-"))


def set_slider(page, name: str, value: float) -> None:
    "Type `value` into the editable read-out of slider `name`, as a user can."
    readout = control(page, name).locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def upload_file(page, path: Path) -> None:
    "Choose `path` with the app's upload button (ipywidgets makes its file input only when clicked)."
    with page.expect_file_chooser() as chooser:
        page.locator("button.widget-upload, .widget-upload").first.click()
    chooser.value.set_files(str(path))


def test_the_app_shows_the_champion_and_its_metrics(page, project):
    from looplab import registry

    client = registry_client(project)
    version = registry.model_version(MODEL, "champion", client=client)
    assert page.locator(".looplab-version").inner_text() == str(version.version) == "1"
    assert MODEL in page.locator(".looplab-model").inner_text()
    metrics = client.get_run(version.run_id).data.metrics
    table = page.locator(".looplab-metrics").inner_text()
    for name in ("mae", "rmse", "r2"):
        assert re.search(rf"^{name}\s+{re.escape(f'{metrics[name]:.4g}')}$", table, flags=re.M), table


def test_the_apps_kernel_logs_json_lines(page, project):
    "The app's kernel writes its JSON lines into the environment's log folder, with the version it shows and its run."
    from looplab import registry

    version = registry.model_version(MODEL, "champion", client=registry_client(project))
    lines = (project / "data" / "08_reporting" / "logs" / "voila-serving.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {(record["component"], record["env"]) for record in records} == {("voila-serving", "test")}, records
    started = [record for record in records if record["message"] == "voila-serving kernel started (environment test)"]
    assert started and started[0]["notebook"] == "notebooks/apps/serving.ipynb", records
    shown = [record for record in records if record["message"].startswith("the app shows bike-demand champion")]
    assert shown and (shown[0]["model_version"], shown[0]["run_id"]) == ("1", version.run_id), shown


def test_the_controls_speak_the_users_language(page, project):
    "Labels and units from the schema in conf: °C, named weekdays and seasons, yes/no boxes; the prediction rounded, with its unit."
    shown, record = displays(project), shown_record(page)
    assert control(page, "temp").locator("label").inner_text().strip() == "temperature (°C)" == shown["temp"].caption
    assert control(page, "hr").locator("label").inner_text().strip() == "hour of the day"
    celsius = readout(page, "temp")
    assert celsius == pytest.approx(shown["temp"].to_shown(record["temp"]), abs=0.051)  # in °C, to the slider's 0.1 step
    assert -8 <= celsius <= 39  # the bike data's temperatures, not a share of their range
    humidity = readout(page, "hum")
    assert humidity == pytest.approx(record["hum"] * 100, abs=0.51) and control(page, "hum").locator("label").inner_text().strip() == "relative humidity (%)"
    weekdays = control(page, "weekday").locator("select option").all_inner_texts()
    assert weekdays == ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"], weekdays
    chosen = control(page, "weekday").locator("select").evaluate("select => select.options[select.selectedIndex].text")
    assert chosen == shown["weekday"].names[str(record["weekday"])]
    assert set(control(page, "season").locator("select option").all_inner_texts()) <= {"winter", "spring", "summer", "autumn"}
    for name in ("holiday", "workingday"):
        box = control(page, name).locator("input[type=checkbox]")
        assert box.count() == 1 and control(page, name).locator(".widget-slider").count() == 0, name
        assert box.is_checked() == bool(record[name]), name
    prediction = page.locator(".looplab-prediction").inner_text()
    assert re.search(r"Predicted bike rentals: \d[\d,]*(\.\d+)? per hour", prediction), prediction
    shown_prediction(page)  # the text is the value to 3 significant digits
    assert page.locator(".looplab-interval").count() == 0  # the model gives no interval: none is made up


def test_changed_controls_predict_on_the_values_converted_back(page, project):
    "Set the temperature in °C, pick a weekday by name, tick a box: the model gets stored units, the page shows its prediction."
    shown = displays(project)
    handle = control(page, "temp").locator(".noUi-handle")
    low, high = float(handle.get_attribute("aria-valuemin")), float(handle.get_attribute("aria-valuemax"))
    current = readout(page, "temp")
    target = round(low + (high - low) / 4, 1) if abs(round((low + high) / 2, 1) - current) < 0.5 else round((low + high) / 2, 1)
    set_slider(page, "temp", target)
    stored = shown["temp"].to_stored(target)
    page.wait_for_function("stored => Math.abs(JSON.parse(document.querySelector('.looplab-record-json').innerText).temp - stored) < 1e-9",
                           arg=stored)
    assert readout(page, "temp") == pytest.approx(target)
    day = 1 if shown_record(page)["weekday"] != 1 else 3
    control(page, "weekday").locator("select").select_option(label=shown["weekday"].names[str(day)])
    page.wait_for_function("day => JSON.parse(document.querySelector('.looplab-record-json').innerText).weekday === day", arg=day)
    working = shown_record(page)["workingday"]
    control(page, "workingday").locator("input[type=checkbox]").click()
    page.wait_for_function("value => JSON.parse(document.querySelector('.looplab-record-json').innerText).workingday === value",
                           arg=1 - working)
    record = shown_record(page)
    assert record["temp"] == pytest.approx(stored, abs=1e-12) and record["weekday"] == day and record["workingday"] == 1 - working
    expected = expected_predictions(project, pd.DataFrame([record]))[0]
    page.wait_for_function(
        "expected => Math.abs(parseFloat(document.querySelector('.looplab-value').dataset.value) - expected) < 6e-4", arg=expected)
    assert shown_prediction(page) == pytest.approx(expected, abs=6e-4)


def test_moving_the_hour_changes_the_prediction_to_the_models(page, project, tmp_path):
    first = shown_prediction(page)
    record = shown_record(page)
    assert first == pytest.approx(expected_predictions(project, pd.DataFrame([record]))[0], abs=6e-4)
    hour = 8 if record["hr"] != 8 else 17
    set_slider(page, "hr", hour)
    page.wait_for_function(
        "hour => JSON.parse(document.querySelector('.looplab-record-json').innerText).hr === hour", arg=hour
    )
    record = shown_record(page)
    assert record["hr"] == hour
    expected = expected_predictions(project, pd.DataFrame([record]))[0]
    page.wait_for_function(
        "expected => Math.abs(parseFloat(document.querySelector('.looplab-value').dataset.value) - expected) < 6e-4",
        arg=expected,
    )
    assert shown_prediction(page) == pytest.approx(expected, abs=6e-4)
    assert shown_prediction(page) != pytest.approx(first, abs=1e-9), "an hour of 8 against 23 must change the demand"
    page.screenshot(path=str(tmp_path / "serving-app.png"), full_page=True)
    assert (tmp_path / "serving-app.png").stat().st_size > 10_000


def test_a_csv_upload_comes_back_with_predictions(page, project, tmp_path):
    from looplab import registry

    features = registry.model_version(MODEL, "champion", client=registry_client(project))
    evaluation_set = sorted((project / "data" / "05_model_input" / "evaluation_set.parquet").glob("*/evaluation_set.parquet"))[-1]
    columns = json.loads(registry_client(project).get_run(features.run_id).data.params["training.features"])
    rows = pd.read_parquet(evaluation_set)[columns].dropna().head(20).reset_index(drop=True)
    upload = tmp_path / "hours.csv"
    rows.to_csv(upload, index=False)
    upload_file(page, upload)
    link = page.locator("a.looplab-download")
    link.wait_for()
    assert link.get_attribute("download") == "hours-predictions.csv"
    returned = pd.read_csv(io.BytesIO(base64.b64decode(link.get_attribute("href").split(",", 1)[1])))
    assert list(returned.columns) == [*columns, "prediction"] and len(returned) == len(rows)
    assert returned["prediction"].tolist() == pytest.approx(expected_predictions(project, rows), rel=1e-9)


def test_a_csv_without_a_feature_is_refused_by_name(page, tmp_path):
    upload = tmp_path / "broken.csv"
    upload.write_text("hr,weekday\n8,1\n")
    upload_file(page, upload)
    message = page.locator(".looplab-upload")
    message.get_by_text("missing column(s)").wait_for()
    assert "temp" in message.inner_text() and "Traceback" not in message.inner_text()


def test_the_app_agrees_with_the_live_serving_api(page, api_url):
    "Change a widget: the prediction the page shows is the live API's answer for the record the page shows."
    record = shown_record(page)
    hour = 17 if record["hr"] != 17 else 6
    set_slider(page, "hr", hour)
    page.wait_for_function("hour => JSON.parse(document.querySelector('.looplab-record-json').innerText).hr === hour", arg=hour)
    record = shown_record(page)
    expected = api_predictions(api_url, pd.DataFrame([record]))[0]
    page.wait_for_function(
        "expected => Math.abs(parseFloat(document.querySelector('.looplab-value').dataset.value) - expected) < 6e-4", arg=expected,
    )
    assert shown_prediction(page) == pytest.approx(expected, abs=6e-4)
    source = page.locator(".looplab-source").inner_text()
    assert f"answered by the serving API at {api_url}" in source, source


def test_the_api_docs_render_with_no_network_but_the_worker(browser, api_url):
    "The worker's /docs (Swagger UI) and /redoc (ReDoc) list its operations in a browser that can reach nothing but 127.0.0.1."
    from urllib.parse import urlsplit

    summary = "Predict for records (or columns) of model inputs, or entity keys"  # the predict operation's, in the OpenAPI schema
    outside, failed = [], []

    def only_this_machine(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.route("**/*", only_this_machine)
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("requestfailed", lambda request: failed.append((request.url, request.failure)))
        page.goto(api_url + "/docs")
        page.locator(".opblock-summary-description", has_text=summary).wait_for()
        operations = page.locator(".opblock-summary-description").all_inner_texts()
        assert {summary, "The process is alive", "Prometheus metrics"} <= set(operations), operations
        assert page.locator('[data-path="/v1/models/{name}/predict"]').count() >= 1
        page.goto(api_url + "/redoc")
        page.locator("h2", has_text=summary).wait_for()
        assert page.locator("h2", has_text="The process is alive").count() == 1
    finally:
        context.close()
    assert outside == [], outside  # nothing was asked of another machine: every script, style and image came from the worker
    # and all of it arrived; the one outside image ReDoc names (Redocly's logo) the page's policy blocks before any request
    assert all(urlsplit(url).hostname != "127.0.0.1" and "csp" in (failure or "").lower() for url, failure in failed), failed
