"""The Kedro project: pipelines are found, `kedro run -c kedro.yml` and `kedro viz build` work, and the CLI answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.project import configure_project, pipelines
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from looplab.core import load_config


@pytest.fixture(scope="module")
def project_copy(root, tmp_path_factory) -> Path:
    "A copy of the project to run Kedro in, so runs write into a temporary data folder."
    copy = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "kedro.yml", ".telemetry"):
        shutil.copy(root / name, copy)
    shutil.copytree(root / "conf", copy / "conf")
    shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(root / "data", copy / "data", ignore=shutil.ignore_patterns("*.parquet", "*.db"))
    return copy


def kedro(tool, env, project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([tool("kedro"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"kedro {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_default_pipeline_is_the_loop_so_far():
    configure_project("looplab")
    assert "data" in pipelines
    default = pipelines["__default__"]
    assert default.nodes, "the default pipeline must have nodes, or `kedro run` fails"
    assert {node.name for node in pipelines["data"].nodes} <= {node.name for node in default.nodes}


def test_data_pipeline_slice_on_an_in_memory_catalog(root):
    configure_project("looplab")
    raw = pd.read_csv(root / "data" / "01_raw" / "Bikeshare.csv")
    parameters = load_config("parameters", env="test")["data"]["bikeshare"]
    catalog = DataCatalog({"bikeshare_raw": MemoryDataset(raw), "params:data.bikeshare": MemoryDataset(parameters)})
    pipeline = pipelines["data"].to_nodes("prepare_rides_node")
    outputs = SequentialRunner().run(pipeline, catalog)
    rides = outputs["rides"].load() if hasattr(outputs["rides"], "load") else outputs["rides"]
    assert parameters["days"] == 14
    assert rides["timestamp"].min() == pd.Timestamp("2011-01-01")
    assert rides["timestamp"].max() < pd.Timestamp("2011-01-15")
    assert len(rides) == (raw["day"] <= 14).sum()


def test_kedro_run_with_the_run_config(tool, quiet_env, project_copy):
    kedro(tool, quiet_env, project_copy, "run", "-c", "kedro.yml")
    rides = pd.read_parquet(project_copy / "data" / "02_intermediate" / "rides.parquet")
    assert len(rides) == 8645
    assert rides["timestamp"].is_unique


def test_kedro_run_test_environment_writes_nothing(tool, quiet_env, project_copy):
    output = project_copy / "data" / "02_intermediate" / "rides.parquet"
    output.unlink(missing_ok=True)
    result = kedro(tool, quiet_env, project_copy, "run", "-c", "kedro.yml", "--env", "test")
    assert "Pipeline execution completed successfully" in result.stdout + result.stderr
    assert not output.exists()


def test_kedro_viz_build_draws_the_pipelines(tool, quiet_env, project_copy):
    kedro(tool, quiet_env, project_copy, "viz", "build")
    build = project_copy / "build"
    assert (build / "index.html").is_file()
    data = json.loads((build / "api" / "pipelines" / "data").read_text())
    assert any(node["name"] == "prepare_rides_node" for node in data["nodes"]), data["nodes"]


def test_cli_help_and_info(tool, quiet_env, root):
    help_text = subprocess.run([tool("looplab"), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: looplab" in help_text and "info" in help_text
    result = subprocess.run(
        [tool("looplab"), "info", "--json"], cwd=root, env=quiet_env, capture_output=True, text=True, check=True
    )
    facts = json.loads(result.stdout)
    assert facts["project_root"] == str(root)
    assert {"base", "test"} <= set(facts["config_environments"])
    assert "Bikeshare.csv" in facts["data_layers"]["01_raw"]


def test_cli_names_a_wrong_environment(tool, quiet_env, root):
    result = subprocess.run(
        [tool("looplab"), "info", "--env", "staging"], cwd=root, env=quiet_env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "unknown config environment 'staging'" in result.stderr
    assert "Traceback" not in result.stderr
