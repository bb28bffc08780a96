"""The Kedro project: pipelines are found, `kedro run -c kedro.yml` and `kedro viz build` work, and the CLI answers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.project import configure_project, pipelines
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from looplab.core import load_config
from looplab.sources import bikeshare_to_rides
from looplab.versioning import load_version

from conftest import copy_project


@pytest.fixture(scope="module")
def project_copy(root, tmp_path_factory) -> Path:
    "A copy of the project to run Kedro in, so runs write into a temporary data folder."
    return copy_project(root, tmp_path_factory.mktemp("project"))


def kedro(tool, env, project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([tool("kedro"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"kedro {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_default_pipeline_is_the_loop_so_far():
    configure_project("looplab")
    assert "data" in pipelines
    default = pipelines["__default__"]
    assert default.nodes, "the default pipeline must have nodes, or `kedro run` fails"
    for layer in ("data", "training", "deployment"):
        assert {node.name for node in pipelines[layer].nodes} <= {node.name for node in default.nodes}, layer


def test_data_pipeline_slice_on_an_in_memory_catalog(root):
    "The validation step of the data pipeline alone, on an in-memory catalog."
    configure_project("looplab")
    raw = pd.read_csv(root / "data" / "01_raw" / "Bikeshare.csv")
    parameters = load_config("parameters", env="test")["data"]
    batch = bikeshare_to_rides(raw, parameters["demo"]["year_start"]).head(48)
    batch.insert(1, "region", "dc")
    batch["_source"], batch["_batch_id"] = "history", "b1"
    batch.loc[5, "hr"] = 27  # one bad row: quarantined, not lost
    pending = {"batch_id": "b1", "sources": {"history": {"kind": "sql", "rows": 48, "rejected": []}}}
    catalog = DataCatalog({"ingested_batch": MemoryDataset(batch), "params:data": MemoryDataset(parameters),
                           "pending_watermarks": MemoryDataset(pending)})
    pipeline = pipelines["data"].from_nodes("validate_batch_node").to_nodes("validate_batch_node")
    assert [node.name for node in pipeline.nodes] == ["validate_batch_node"]
    SequentialRunner().run(pipeline, catalog)
    validated, quarantine = catalog["validated_batch"].load(), catalog["rides_quarantine"].load()
    assert len(validated) == 47 and len(quarantine) == 1
    assert "27" in quarantine["_reason"].iloc[0]
    assert catalog["validation_report"].load()["rows_read"] == 48


def test_kedro_run_with_the_run_config(tool, quiet_env, project_copy):
    "The default full run on the embedded defaults: history, landing days, features, versions."
    result = kedro(tool, quiet_env, project_copy, "run", "-c", "kedro.yml")
    assert "Pipeline execution completed successfully" in result.stdout + result.stderr
    parameters = load_config("parameters", root=project_copy)["data"]
    validated = load_version(project_copy / parameters["validated_path"])
    expected_end = pd.Timestamp(parameters["demo"]["history_end"]) + pd.Timedelta(days=parameters["demo"]["landing_days"])
    assert validated["timestamp"].min() == pd.Timestamp(parameters["demo"]["year_start"])
    assert validated["timestamp"].max() == expected_end - pd.Timedelta(hours=1)
    assert validated["timestamp"].is_unique
    # The loop goes on past the data: a registered champion, deployed into the serving cache.
    deployment = json.loads((project_copy / "data" / "08_reporting" / "deployment.json").read_text())
    assert (deployment["model_name"], deployment["version"], deployment["source"]) == ("bike-demand", "1", "registry")
    assert any(Path(deployment["cache_dir"]).rglob("model.skops"))


def test_kedro_viz_build_draws_the_pipelines(tool, quiet_env, project_copy):
    kedro(tool, quiet_env, project_copy, "viz", "build")
    build = project_copy / "build"
    assert (build / "index.html").is_file()
    data = json.loads((build / "api" / "pipelines" / "data").read_text())
    names = {node["name"] for node in data["nodes"]}
    assert {"ingest_sources_node", "validate_batch_node", "materialize_features_node"} <= names, names
    # the whole loop, grouped by layer: four bands in order, every node and stored dataset in one of them
    loop = json.loads((build / "api" / "main").read_text())
    layers = ["data", "training", "deployment", "monitoring"]
    assert loop["layers"] == layers and sorted(tag["id"] for tag in loop["tags"]) == sorted(layers)
    tasks = {node["name"]: node["tags"] for node in loop["nodes"] if node["type"] == "task"}
    assert all(len(tags) == 1 and tags[0] in layers for tags in tasks.values()), tasks
    assert (tasks["validate_batch_node"], tasks["train_evaluate_register_node"], tasks["deploy_model_node"],
            tasks["retraining_trigger_node"]) == (["data"], ["training"], ["deployment"], ["monitoring"])
    stored = {node["name"]: node["layer"] for node in loop["nodes"] if node["type"] == "data" and node["name"] not in ("settings", "demo_sources")}
    assert (stored["features"], stored["registration"], stored["deployment"], stored["retraining_decision"]) == tuple(layers), stored
    assert None not in stored.values(), stored


def test_each_layer_runs_by_tag_with_its_node_names_unchanged():
    "The layer tags select the same nodes as the layer's pipeline; node names carry no layer prefix."
    configure_project("looplab")
    for layer in ("data", "training", "deployment", "monitoring"):
        by_pipeline = {node.name for node in pipelines[layer].nodes}
        assert {node.name for node in pipelines["__default__"].only_nodes_with_tags(layer).nodes} == by_pipeline, layer
        assert all("." not in name for name in by_pipeline), by_pipeline


def test_cli_help_and_info(tool, quiet_env, root):
    help_text = subprocess.run([tool("looplab"), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: looplab" in help_text and "info" in help_text
    result = subprocess.run(
        [tool("looplab"), "info", "--json"], cwd=root, env=quiet_env, capture_output=True, text=True, check=True
    )
    facts = json.loads(result.stdout)
    assert facts["project_root"] == str(root)
    assert {"base", "test"} <= set(facts["config_environments"]) and "feature_repo" not in facts["config_environments"]
    assert "Bikeshare.csv" in facts["data_layers"]["01_raw"]


def test_cli_names_a_wrong_environment(tool, quiet_env, root):
    result = subprocess.run(
        [tool("looplab"), "info", "--env", "staging"], cwd=root, env=quiet_env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "unknown config environment 'staging'" in result.stderr
    assert "Traceback" not in result.stderr
