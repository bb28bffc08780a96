"""The deployment step: the served alias loads through the registry and is left in the serving cache."""

from kedro.pipeline import Node, Pipeline

from looplab.deployment import deploy_model
from looplab.pipelines import with_settings


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([Node(with_settings(deploy_model, "root", "env"), ["registration", "settings"], "deployment", name="deploy_model_node")],
                    tags="deployment")  # the layer: kedro-viz's tag filter, `kedro run --tags deployment`
