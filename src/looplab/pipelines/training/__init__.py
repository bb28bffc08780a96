"""The training layer: training → evaluation → model registry."""

from kedro.pipeline import Node, Pipeline

from looplab.evaluation import evaluate_model
from looplab.pipelines import with_settings
from looplab.registry import register_model
from looplab.training import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                with_settings(train_model, "root", "env"),
                ["features", "data_versions", "params:data", "params:training", "settings"],
                ["model", "training_run", "train_set", "evaluation_set"],
                name="train_model_node",
            ),
            Node(
                with_settings(evaluate_model, "root", "env"),
                [
                    "model", "evaluation_set", "training_run",
                    "params:data", "params:training", "params:evaluation", "settings",
                ],
                "evaluation",
                name="evaluate_model_node",
            ),
            Node(
                with_settings(register_model, "root", "env"),
                ["model", "evaluation", "evaluation_set", "training_run", "params:data", "params:training", "settings"],
                "registration",
                name="register_model_node",
            ),
        ]
    )
