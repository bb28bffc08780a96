"""The training layer: training → evaluation → model registry."""

from kedro.pipeline import Node, Pipeline

from looplab.evaluation import evaluate_model
from looplab.registry import register_model
from looplab.training import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                ["features", "data_versions", "params:data", "params:training"],
                ["model", "training_run", "train_set", "evaluation_set"],
                name="train_model_node",
            ),
            Node(
                evaluate_model,
                [
                    "model", "evaluation_set", "training_run",
                    "params:data", "params:training", "params:evaluation",
                ],
                "evaluation",
                name="evaluate_model_node",
            ),
            Node(
                register_model,
                ["model", "evaluation", "evaluation_set", "training_run", "params:data", "params:training"],
                "registration",
                name="register_model_node",
            ),
        ]
    )
