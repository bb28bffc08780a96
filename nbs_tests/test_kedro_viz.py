"""kedro-viz draws the loop in layer bands: `kedro viz run` on a project copy, read through its API and in headless Chromium.

The layers expected are the ones the project declares: each catalog dataset's `metadata: kedro-viz: layer`
(conf) and each pipeline's node tags (the pipelines), in the loop's order.
"""

from __future__ import annotations

import pytest
import requests

from conftest import CHROMIUM, copy_project, running_server, wait_until

RENDER_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def project(root, tmp_path_factory):
    "A project copy for kedro-viz to read (it writes nothing, but never reads what a user's runs left)."
    return copy_project(root, tmp_path_factory.mktemp("kedro-viz") / "project")


@pytest.fixture(scope="module")
def declared(project) -> dict:
    "What the project declares: the layers in loop order, each catalog dataset's layer, each node's layer tag."
    from kedro.framework.project import configure_project, pipelines

    from looplab.core import load_config
    from looplab.pipeline_registry import LOOP_ORDER

    catalog = load_config("catalog", root=project)
    datasets = {name: entry["metadata"]["kedro-viz"]["layer"] for name, entry in catalog.items()
                if isinstance(entry, dict) and "kedro-viz" in (entry.get("metadata") or {})}
    configure_project("looplab")
    layers = [name for name in LOOP_ORDER if name in pipelines]
    tasks = {node.name: sorted(node.tags & set(layers)) for node in pipelines["__default__"].nodes}
    assert set(datasets.values()) <= set(layers), (datasets, layers)  # a dataset's layer is a layer of the loop
    assert tasks and all(len(tags) == 1 for tags in tasks.values()), tasks  # every node in exactly one layer
    return {"layers": layers, "datasets": datasets, "catalog": set(catalog), "tasks": {name: tags[0] for name, tags in tasks.items()}}


def viz_port() -> int:
    "A free 127.0.0.1 port that kedro-viz accepts: it refuses any above 49151 (the dynamic range free_port draws from)."
    import random
    import socket

    for candidate in random.sample(range(20000, 49000), 500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free port between 20000 and 49000")


@pytest.fixture(scope="module")
def viz_url(project, tool, quiet_env, tmp_path_factory):
    "`kedro viz run` on a free 127.0.0.1 port of the copy, once its API answers; stopped after the module."
    port = viz_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("kedro-viz-log") / "viz.log"
    command = [tool("kedro"), "viz", "run", "--host", "127.0.0.1", "--port", str(port), "--no-browser"]
    with running_server(command, project, quiet_env, f"{url}/api/main", log, timeout=240):
        yield url


def test_the_api_lists_the_layers_and_puts_each_dataset_in_its_own(viz_url, declared):
    loop = requests.get(f"{viz_url}/api/main", timeout=120).json()
    assert loop["layers"] == declared["layers"]
    assert sorted(tag["id"] for tag in loop["tags"]) == sorted(declared["layers"])
    data = {node["name"]: node["layer"] for node in loop["nodes"] if node["type"] == "data"}
    for name, layer in declared["datasets"].items():
        if name in data:  # conf may declare a dataset the default pipeline does not use
            assert data[name] == layer, name
    outside = {name for name, layer in data.items() if layer is None}
    assert not outside & declared["catalog"], outside  # every dataset of the catalog sits in a band; only code's own are outside
    assert len(outside) < len(data) / 4, outside
    tasks = {node["name"]: node["tags"] for node in loop["nodes"] if node["type"] == "task"}
    assert tasks.keys() == declared["tasks"].keys()
    assert all(tags == [declared["tasks"][name]] for name, tags in tasks.items()), tasks


def test_the_page_draws_one_band_per_layer_with_its_nodes_inside(browser, viz_url, declared, tmp_path):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    try:
        page.goto(viz_url + "/")
        page.locator("g.pipeline-node").first.wait_for()
        # the layout settles after the first nodes appear: wait (bounded by the page timeout) for every band and name
        page.wait_for_function(
            "count => document.querySelectorAll('rect.pipeline-layer').length === count"
            " && document.querySelectorAll('.pipeline-layer-name').length === count",
            arg=len(declared["layers"]),
        )
        names = [text.strip() for text in page.locator(".pipeline-layer-name").all_inner_texts()]
        assert names == declared["layers"]
        assert page.locator(".pipeline-flowchart__layer-names--visible").count() == 1

        def geometry():
            return page.evaluate("""() => ({
                bands: Array.from(document.querySelectorAll('rect.pipeline-layer'), rect => {
                    const box = rect.getBoundingClientRect(); return [box.top, box.bottom]; }),
                nodes: Array.from(document.querySelectorAll('g.pipeline-node'), node => {
                    const box = node.getBoundingClientRect();
                    return [node.dataset.nodeFullname, node.dataset.nodeType, (box.top + box.bottom) / 2]; }),
            })""")

        def settled():  # two readings a moment apart agree: the layout's transition is over
            first = geometry()
            page.wait_for_timeout(500)
            second = geometry()
            return second if first == second and second["nodes"] else None

        drawn = wait_until(settled, 120, "kedro-viz's layout to settle", poll=0.5)
        bands = drawn["bands"]
        assert all(top < bottom for top, bottom in bands), bands
        assert all(bands[index][1] <= bands[index + 1][0] + 1 for index in range(len(bands) - 1)), bands  # stacked in order

        def band_of(y: float) -> str | None:
            return next((declared["layers"][index] for index, (top, bottom) in enumerate(bands) if top <= y <= bottom), None)

        expected = {**declared["tasks"], **declared["datasets"]}
        placed = {name: (band_of(y), expected[name]) for name, kind, y in drawn["nodes"] if name in expected}
        assert {name for name, kind, y in drawn["nodes"] if kind == "task"} == declared["tasks"].keys()
        misplaced = {name: where for name, where in placed.items() if where[0] != where[1]}
        assert not misplaced, misplaced  # (band drawn in, layer declared)
        for layer in declared["layers"]:
            assert any(expected_layer == layer for _, expected_layer in placed.values()), layer  # no empty band
        page.screenshot(path=str(tmp_path / "kedro-viz-layers.png"))
    finally:
        page.close()
