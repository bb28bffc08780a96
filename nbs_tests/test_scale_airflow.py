"""Airflow DAGs from kedro-airflow (`make airflow-dags`): Airflow's own DagBag, in its separate environment, loads every DAG, and the tasks and their order are the Kedro pipelines'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

AIRFLOW_PYTHON = Path(__file__).resolve().parents[1] / ".venv-airflow" / "bin" / "python"
PIPELINES = ("data", "training", "deployment", "monitoring")  # those that exist get a DAG

pytestmark = pytest.mark.skipif(not AIRFLOW_PYTHON.is_file(), reason="no .venv-airflow: run make setup-airflow")

# Runs in .venv-airflow: every DAG of the folder, its tasks, their upstream tasks and the Kedro nodes each runs.
DAGBAG = """
import ast, inspect, json, sys, textwrap
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for task in dag.tasks:
        source = textwrap.dedent(inspect.getsource(task.python_callable))
        call = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_run_kedro_node")
        nodes = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "node_names"))
        tasks[task.task_id] = {"nodes": nodes, "upstream": sorted(task.upstream_task_ids)}
    dags[dag_id] = {"tasks": tasks, "schedule": str(getattr(dag, "schedule", None)), "file": dag.fileloc.rsplit("/", 1)[-1]}
print(json.dumps({"import_errors": {k.rsplit("/", 1)[-1]: v for k, v in bag.import_errors.items()}, "dags": dags}))
"""


@pytest.fixture(scope="module")
def generated(root, tmp_path_factory, quiet_env):
    "The DAGs `make airflow-dags` writes, loaded by Airflow's DagBag."
    folder = tmp_path_factory.mktemp("dags")
    made = subprocess.run(["make", "-s", "airflow-dags", f"AIRFLOW_DAGS={folder}", f"VENV={sys.prefix}"], cwd=root, env=quiet_env,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**quiet_env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(folder), "LOOPLAB_PROJECT_ROOT": str(root)}
    loaded = subprocess.run([str(AIRFLOW_PYTHON), "-c", DAGBAG, str(folder)], env=env, capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    return folder, json.loads(loaded.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kedro_pipelines(root):
    from kedro.framework.project import configure_project, pipelines

    configure_project("looplab")
    return {name: pipelines[name] for name in PIPELINES if name in pipelines}


def test_every_existing_pipeline_has_a_dag_that_airflow_loads(generated, kedro_pipelines):
    folder, result = generated
    assert result["import_errors"] == {}
    assert sorted(result["dags"]) == sorted(f"looplab-prod-{name}" for name in kedro_pipelines)
    assert {"data", "training"} <= set(kedro_pipelines)
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(f"looplab_prod_{name}_dag.py" for name in kedro_pipelines)
    assert result["dags"]["looplab-prod-data"]["schedule"] == "@hourly"  # conf/prod/airflow.yml


def test_tasks_and_order_match_the_kedro_pipelines(generated, kedro_pipelines, root):
    "Every node in exactly one task; a task runs after the tasks whose nodes produce its inputs, and after nothing else."
    from looplab.core import load_config

    _, result = generated
    catalog = load_config("catalog", env="prod", root=root)
    for name, pipeline in kedro_pipelines.items():
        tasks = result["dags"][f"looplab-prod-{name}"]["tasks"]
        task_of = {node: task for task, entry in tasks.items() for node in entry["nodes"]}
        assert sorted(task_of) == sorted(node.name for node in pipeline.nodes), name
        assert sum(len(entry["nodes"]) for entry in tasks.values()) == len(pipeline.nodes), f"{name}: a node in two tasks"
        producer = {output: node.name for node in pipeline.nodes for output in node.outputs}
        expected = {task: set() for task in tasks}
        for node in pipeline.nodes:
            for dataset in node.inputs:
                if dataset in producer and task_of[producer[dataset]] != task_of[node.name]:
                    expected[task_of[node.name]].add(task_of[producer[dataset]])
                    # only stored data crosses tasks: each task runs in its own process
                    assert dataset in catalog and catalog[dataset]["type"] != "MemoryDataset", f"{name}: {dataset} crosses tasks in memory"
        assert {task: sorted(upstream) for task, upstream in expected.items()} == {task: entry["upstream"] for task, entry in tasks.items()}, name
    data = result["dags"]["looplab-prod-data"]["tasks"]
    assert data["validate-batch-node"]["upstream"] == ["ingest-sources-node"]
    assert len(result["dags"]["looplab-prod-training"]["tasks"]) == 1  # the model stays in memory: one task


def test_the_airflow_environment_is_separate():
    "Airflow is not importable from the main environment: its pins would clash there."
    found = subprocess.run([sys.executable, "-c", "import airflow"], capture_output=True, text=True, timeout=120)
    assert found.returncode != 0 and "No module named 'airflow'" in found.stderr
