"""The training layer: training → evaluation → model registry, as one node (`train_evaluate_register`).

The same function trains in the retraining trigger's in-process runner and in `notebooks/runs/train.ipynb`,
so a pipeline run, a retraining and a papermill run differ only in their parameters.
"""

from kedro.pipeline import Node, Pipeline

from looplab.pipelines import with_settings
from looplab.training import train_evaluate_register

# What `train_evaluate_register` returns → the catalog's datasets.
OUTPUTS = {
    "model": "model", "run_info": "training_run", "train_set": "train_set", "evaluation_set": "evaluation_set",
    "evaluation": "evaluation", "registration": "registration",
}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                with_settings(train_evaluate_register, "root", "env"),
                ["features", "data_versions", "params:data", "params:training", "params:evaluation", "settings"],
                OUTPUTS,
                name="train_evaluate_register_node",
            ),
        ],
        tags="training",  # the layer: kedro-viz's tag filter, `kedro run --tags training`
    )
