"""The deployment step: the served alias loads through the registry and is left in the serving cache."""

from kedro.pipeline import Node, Pipeline

from looplab.deployment import deploy_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([Node(deploy_model, "registration", "deployment", name="deploy_model_node")])
